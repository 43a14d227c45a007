"""Three ``leapcore-hub`` processes on ONE PostgreSQL database act as one (real processes
on loopback, harness in ``support/procs.py``, the session's PostgreSQL server): each worker
links to one of them, a client signed in to
the first sees every worker online and pings one linked to the third (an end-to-end
channel through two hubs), and when a hub is killed with SIGKILL its worker shows offline
once its presence lease ends while the others stay online — unless it knows another hub
(several ``--hub`` URLs): then it is online there at once, the same worker, and channels
to it open again. Then the database is restarted while a command streams through two
hubs: the stream never notices, and afterwards every hub serves from the database again
(presence, channels, a new registration key) with nothing lost. Leases are shortened
(``--cluster-lease``) so the test waits seconds, not the default 15 s; every wait is a
bounded poll on a condition.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from support.hubpeer import now_ms
from support.pgserver import PgServer
from support.procs import Env, Proc, env_fixture, wait_for  # noqa: F401 (env_fixture)
from support.secretlog import record_secret
from support.threadecho import echo_port_fixture  # noqa: F401 (the echo_port fixture)

from leapcore import sync
from leapcore.store.hubstore import open_hub_store
from leapcore.store.pinstore import PinStore

LEASE = 2.0
RENEW = 0.25


def start_hubs(env: Env, count: int) -> list[tuple[Proc, str]]:
    secret = env.tmp / "cluster.secret"
    secret.write_text(record_secret("a secret all three hubs share") + "\n")  # never logged
    secret.chmod(0o600)
    flags = ["--cluster-listen", "127.0.0.1:0", "--cluster-secret-file", str(secret)]
    flags += ["--cluster-lease", str(LEASE), "--cluster-renew-interval", str(RENEW)]
    env.hub_flags = [*flags, "--node-name", "h1"]
    first = env.start_hub()
    env.login()
    more = [
        env.start(
            f"hub{i}",
            "leapcore-hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(env.hub_dir),
            *flags,
            "--node-name",
            f"h{i}",
        )
        for i in range(2, count + 1)
    ]
    out = [(first, env.url)]
    out += [(hub, hub.line("leapcore-hub listening on ").split()[-1]) for hub in more]
    return out


def mint_keys(pg_url: str, count: int) -> list[str]:
    store = open_hub_store(pg_url)  # keys minted at once, straight in the database
    try:
        alice = store.get_user("alice")
        return [
            record_secret(store.mint_registration_key(alice.id, now_ms())[1]) for _ in range(count)
        ]
    finally:
        store.close()


def test_three_hub_processes_share_one_database(
    env: Env, pg_server: PgServer, pg_url: str, echo_port: int
) -> None:
    env.env["LEAPCORE_HUB_STORE"] = pg_url  # every hub and admin command
    hubs = start_hubs(env, 3)
    urls = [url for _hub, url in hubs]
    keys = mint_keys(pg_url, 4)
    # w1, w2, w3 on h1, h2, h3; w3 also knows h1 (several --hub URLs: it moves on when its
    # hub fails); w4 knows only h3.
    placement = {"w1": [urls[0]], "w2": [urls[1]], "w3": [urls[2], urls[0]], "w4": [urls[2]]}
    for (name, where), key in zip(placement.items(), keys, strict=True):
        env.url = where[0]
        more = [flag for url in where[1:] for flag in ("--hub", url)]
        env.start_worker(name, key, flags=["--encryption-mode", "classic", *more])
    env.url = urls[0]  # the client stays on the first hub
    listed = env.wait_online(*placement)
    status = env.admin("cluster", "status")
    assert sorted((h["node_id"], h["workers"], h["live"]) for h in status["hubs"]) == [
        ("h1", 1, True),
        ("h2", 1, True),
        ("h3", 2, True),
    ]
    # A client on each hub opens a channel to every worker (two hubs on the way unless
    # they share one), checks it with a call, and moves 64 KiB through a tunnel on it both ways.
    pins = PinStore(env.tmp / "pins.json")
    payload = bytes(range(256)) * 256
    for url in urls:
        with sync.connect(url, token=env.token, pins=pins) as hub:
            assert {w["name"] for w in hub.list_workers() if w["online"]} == set(placement)
            for name in placement:
                with hub.open_channel(listed[name]["id"]) as ch:
                    ch.ping()
                    assert ch.call("info", b"") is not None
                    conn = ch.open_tcp("127.0.0.1", echo_port)
                    try:
                        conn.send_all(payload)
                        conn.send_eof()
                        got = bytearray()
                        while chunk := conn.recv():
                            got += chunk
                    finally:
                        conn.close()
                    assert got == payload, (url, name)
    # A channel opened at h1 to a worker linked to h3: end to end through two hubs.
    ping = env.json("worker", "ping", "--count", "3", "--worker-id", listed["w3"]["id"])
    assert ping["count"] == 3 and len(ping["rtt_ms"]) == 3

    hubs[2][0].signal(signal.SIGKILL)
    assert hubs[2][0].wait() == -signal.SIGKILL
    killed = time.monotonic()

    def moved_and_lost() -> dict[str, dict[str, object]] | None:
        now = env.workers()
        return now if now["w3"]["online"] and not now["w4"]["online"] else None

    after = wait_for(moved_and_lost, "w3 on h1 and w4 offline", timeout=15)
    print(f"w3 online at h1, w4 offline, {time.monotonic() - killed:.2f}s after h3 was killed")
    assert time.monotonic() - killed < LEASE + 3 * RENEW + 5  # the lease, a tick, slack
    assert after["w1"]["online"] and after["w2"]["online"]
    # The same worker, not registered again (still four workers); a channel to it opens again.
    assert after["w3"]["id"] == listed["w3"]["id"] and len(after) == 4
    ping = env.json("worker", "ping", "--count", "2", "--worker-id", listed["w3"]["id"])
    assert ping["count"] == 2
    status = env.admin("cluster", "status")
    assert sorted((h["node_id"], h["workers"], h["live"]) for h in status["hubs"]) == [
        ("h1", 2, True),
        ("h2", 1, True),
        ("h3", 0, False),
    ]
    assert status["workers_online"] == 3

    # The database restarts under load: a command streams from w2 (on h2) to the client
    # (on h1) meanwhile; relayed frames need no database, so it never notices.
    ticks = "for i in $(seq 20); do echo tick $i; sleep 0.1; done"
    stream = env.start(
        "stream",
        "leapcore",
        "remote",
        "exec",
        *env.client_flags(),
        "--worker-id",
        listed["w2"]["id"],
        "--",
        "sh",
        "-c",
        ticks,
        LEAPCORE_HUB=env.url,
    )

    def printed(tick: int) -> Callable[[], bool | None]:
        return lambda: f"tick {tick}\n" in stream.stdout() or None

    wait_for(printed(3), "the stream started")
    pg_server.stop()
    wait_for(printed(10), "ticks relayed while the database is down")
    pg_server.start()
    assert stream.wait() == 0, stream.stderr()
    assert "hub database error" in hubs[0][0].stderr()  # the hubs did lose the database
    assert stream.stdout().splitlines() == [f"tick {i}" for i in range(1, 21)]

    # Every hub serves from the database again, and nothing was lost.
    def three_online() -> dict[str, dict[str, object]] | None:
        now = env.workers()
        return now if sum(bool(w["online"]) for w in now.values()) == 3 else None

    again = wait_for(three_online, "three workers online after the restart", timeout=30)
    assert {name: w["id"] for name, w in again.items()} == {n: w["id"] for n, w in after.items()}
    ping = env.json("worker", "ping", "--count", "2", "--worker-id", listed["w2"]["id"])
    assert ping["count"] == 2
    # ... and writes through a hub work again (h2's pool made new connections).
    env.url = urls[1]
    created = env.json("worker", "reg-key", "create", "--no-wait", "--token", env.token)
    assert record_secret(created["registration_key"])


def test_bad_cluster_settings_are_usage_errors(env: Env) -> None:
    secret = env.tmp / "open.secret"
    secret.write_text(record_secret("a secret others may read, alas") + "\n")
    secret.chmod(0o644)
    serve = ["leapcore-hub", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(env.hub_dir)]
    done = env.run(*serve, "--cluster-listen", "127.0.0.1:0")
    assert done.returncode == 2 and "cluster_listen needs cluster_secret_file" in done.stderr
    done = env.run(*serve, "--cluster-secret-file", str(secret))
    assert done.returncode == 2 and "make it 0600" in done.stderr
    assert "alas" not in done.stderr
