"""A client operation through the hub never hangs on a lost frame: ``leapcore remote worker
ping`` against a real worker whose Ping answers are lost (``--services hostile_lossy:install``)
exits with the timeout code within its deadline.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Final

from hostile_arena import ATTACKER, HERE, Stage
from hostile_attacks import mint_key
from support.procs import script, wait_for

#: ``leapcore``'s exit code for an operation that got no answer within its deadline.
EXIT_TIMEOUT: Final = 7
#: The deadline asked for with ``--timeout``.
DEADLINE: Final = 3.0


def test_worker_ping_with_lost_answers_times_out(stage: Stage) -> None:
    arena = stage.arena
    token, _ = stage.new_user()
    key = mint_key(arena.address, ATTACKER, token)
    path = f"{HERE}:{arena.tests_path}"
    flags = ["--encryption-mode", "classic", "--services", "hostile_lossy:install"]
    arena.env.start_worker("lossy", key, flags=flags, PYTHONPATH=path)

    def online() -> str | None:
        proc = arena.remote_as(token, "worker", "list", "--json")
        assert proc.returncode == 0, proc.stderr
        listed = json.loads(proc.stdout)["workers"]
        return next((w["id"] for w in listed if w["name"] == "lossy" and w["online"]), None)

    worker_id = wait_for(online, "the lossy worker online")
    # The Ping round trip of a channel open is answered: the worker is lossy only after it.
    info = arena.remote_as(token, "worker", "info", "--worker-id", worker_id, "--json")
    assert info.returncode == 0, info.stderr
    env = {**arena.env.env, "LEAPCORE_HUB": arena.url, "LEAPCORE_TOKEN": token}
    command = [script("leapcore"), "remote", "worker", "ping", "--worker-id", worker_id]
    deadline = DEADLINE
    command += ["--timeout", str(DEADLINE)]
    with stage.attack():
        start = time.monotonic()
        try:
            pinged = subprocess.run(
                [*command, "--count", "2"],
                capture_output=True,
                text=True,
                env=env,
                timeout=deadline + 15,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker ping still running {deadline + 15:g}s after it started (deadline "
                f"{deadline:g}s): it hangs on a lost answer"
            ) from None
        took = time.monotonic() - start
    assert pinged.returncode == EXIT_TIMEOUT, (pinged.returncode, pinged.stdout, pinged.stderr)
    assert took <= deadline + 5, f"exited after {took:.1f}s (deadline {deadline:g}s)"
    stage.assert_survived()
