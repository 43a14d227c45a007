"""Starting a solo hub (hub plus worker in one process) from the CLI tests."""

from __future__ import annotations

from support.procs import Env, env_fixture  # noqa: F401 (env_fixture: the fixture)

SOLO_LINE = "solo worker "


def start_solo(env: Env, name: str) -> tuple[str, str, str]:
    """Start ``leapcore-hub --solo``; (url, worker id, fingerprint) once the worker is up."""
    hub = env.start(name, "leapcore-hub", "--solo", "--listen", "127.0.0.1:0",
                    "--data-dir", str(env.hub_dir), "--solo-name", "box")  # fmt: skip
    env.hub = hub
    env.url = hub.line("leapcore-hub listening on ").split()[-1]
    words = hub.line(SOLO_LINE).split()
    # solo worker box (ID) online; fingerprint WORDS
    assert words[:3] == ["solo", "worker", "box"] and words[4:6] == ["online;", "fingerprint"]
    return env.url, words[3].strip("()"), words[6]
