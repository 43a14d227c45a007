"""A worker given two hubs of one database, as real processes on loopback (harness in
``support/procs.py``): ``kill -9`` of the hub it is linked to, and it is online at the other
at once — no backoff wait, no new registration, its files naming the hub it moved to.

No fixed sleeps: every wait is a bounded poll on a condition, or a process exit.
"""

from __future__ import annotations

import json
import signal

from support.procs import Env, env_fixture, wait_for  # noqa: F401 (env_fixture)

from leapcore.store.workerstate import HUB_FILE, STATE_FILE


def test_kill_9_of_its_hub_moves_the_worker_to_the_other(env: Env) -> None:
    first = env.start_hub()
    env.login()
    # A second hub process on the same data directory: one database, one hub id.
    second = env.start(
        "hub-b", "leapcore-hub", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(env.hub_dir)
    )
    url_b = second.line("leapcore-hub listening on ").split()[-1]
    url_a = env.url
    worker = env.start_worker(
        "box",
        env.reg_key(),
        flags=["--hub", url_b, "--encryption-mode", "classic"],
    )
    env.wait_online("box")
    worker.logged(f"(owner alice) to {url_a}")  # connected to the first URL
    data = env.worker_dir("box")
    state = (data / STATE_FILE).read_bytes()
    record = json.loads((data / HUB_FILE).read_text())
    assert record["hub_url"] == url_a

    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    worker.logged(f"link to {url_a} ended; trying {url_b} now")
    worker.logged(f"(owner alice) to {url_b}")
    moved = wait_for(
        lambda: (r := json.loads((data / HUB_FILE).read_text()))["hub_url"] == url_b and r,
        "hub.json to name the second hub",
    )
    assert moved["hub_id"] == record["hub_id"]
    assert (data / STATE_FILE).read_bytes() == state  # the same worker id and token
    assert worker.delays() == []  # no backoff wait: the move was immediate
    env.url = url_b
    env.login()  # the same user, token and database, through the second hub
    listed = env.wait_online("box")
    assert listed["box"]["id"] == json.loads(state)["worker_id"]
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.stderr()
