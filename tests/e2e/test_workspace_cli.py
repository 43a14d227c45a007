"""``leapcore remote workspace`` as real processes, through a real hub to a real
``leapcore-worker`` process (classic mode), on a local bare repository (``file://``): two
clients creating the same workspace at once get one checkout, list shows head and state,
``exec``/``session spawn --workspace`` run in it, remove is refused while a session runs
in it, and bad input exits with a clear error leaving nothing on the worker."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gitkit import origin_with_branches
from support.procs import Env, script

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Path]]:
    """A hub, logged in, and a classic worker ``box`` keeping its workspaces in the
    directory ``--workspace-root`` names (returned with the setup)."""
    env = Env(tmp_path_factory.mktemp("ws"))
    root = env.tmp / "workspace-root"
    try:
        env.start_hub()
        env.login()
        flags = ["--encryption-mode", "classic", "--workspace-root", str(root)]
        env.start_worker("box", env.reg_key(), flags=flags)
        env.wait_online("box")
        yield env, root
    finally:
        env.cleanup()


def remote(env: Env, *args: str) -> subprocess.Popen[str]:
    """``leapcore remote ARGS`` for the worker ``box`` (the flags go before any ``--``)."""
    words = list(args)
    at = words.index("--") if "--" in words else len(words)
    words[at:at] = [*env.client_flags(), "--worker", "box"]
    return subprocess.Popen(
        [script("leapcore"), "remote", *words],
        env={**env.env, "LEAPCORE_HUB": env.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def run(env: Env, *args: str) -> tuple[int, str, str]:
    return finish(remote(env, *args))


def test_create_list_exec_remove(box: tuple[Env, Path], tmp_path: Path) -> None:
    env, root = box
    origin, heads = origin_with_branches(tmp_path)
    racers = [remote(env, "workspace", "create", "--json", origin.url, "feature") for _ in "ab"]
    results = [finish(p) for p in racers]
    assert all(code == 0 for code, _, _ in results), results
    made = [json.loads(out) for _, out, _ in results]
    assert made[0]["id"] == made[1]["id"] and made[0]["path"] == made[1]["path"]
    assert sorted(m["new"] for m in made) == [False, True]
    assert made[0]["head"] == heads["feature"]
    assert set(made[0]) == {"id", "repo", "branch", "path", "head", "dirty", "created", "new"}
    ws_id, path = made[0]["id"], made[0]["path"]
    assert Path(path).parent == root / "trees"
    assert [p.name for p in (root / "trees").iterdir()] == [ws_id]

    code, out, err = run(env, "workspace", "create", origin.url, "feature")
    assert code == 0, err
    assert out.startswith(f"exists {ws_id} {path} (feature @ {heads['feature'][:12]})")

    code, out, err = run(env, "exec", "--workspace", ws_id, "--", "cat", "feature.txt")
    assert (code, out) == (0, "new\n"), err

    (Path(path) / "untracked.txt").write_text("x\n")
    code, out, err = run(env, "workspace", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [(w["id"], w["branch"], w["dirty"]) for w in listed["workspaces"]] == [
        (ws_id, "feature", True)
    ]
    code, out, err = run(env, "workspace", "list")
    assert code == 0 and out.split("\n")[0].split() == ["ID", "BRANCH", "HEAD", "STATE", "PATH"]
    assert out.split("\n")[1].split() == [ws_id, "feature", heads["feature"][:12], "dirty", path]

    code, _, err = run(env, "workspace", "remove", ws_id)
    assert code == 8 and "workspace_dirty" in err
    (Path(path) / "untracked.txt").unlink()

    code, out, err = run(
        env, "session", "spawn", "--json", "--workspace", ws_id, "--", "sleep", "60"
    )
    assert code == 0, err
    session = json.loads(out)["id"]
    code, _, err = run(env, "workspace", "remove", ws_id)
    assert code == 8 and "workspace_busy" in err
    assert run(env, "session", "kill", session)[0] == 0

    code, out, err = run(env, "workspace", "remove", "--json", ws_id)
    assert code == 0, err
    assert json.loads(out)["removed"]["id"] == ws_id
    assert not Path(path).exists()
    code, _, err = run(env, "workspace", "remove", ws_id)
    assert code == 3 and "workspace_not_found" in err


def test_bad_input(box: tuple[Env, Path], tmp_path: Path) -> None:
    env, root = box
    before = sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []
    missing = (tmp_path / "no-such-repo.git").as_uri()
    code, _, err = run(env, "workspace", "create", missing, "main")
    assert code == 3 and "repo_not_found" in err and "no-such-repo" in err
    code, out, _ = run(env, "workspace", "create", "--json", missing, "main")
    assert code == 3 and json.loads(out)["error"]["reason"] == "repo_not_found"
    code, _, err = run(env, "workspace", "create", "ext::sh -c id", "main")
    assert code == 2 and "transport::address" in err
    code, _, err = run(env, "workspace", "create", "file:///r.git", "bad..name")
    assert code == 2 and ".." in err
    code, _, err = run(env, "workspace", "remove", "../etc")
    assert code == 2 and "workspace id" in err
    code, _, err = run(env, "exec", "--workspace", "nope-1", "--", "true")
    assert code == 255 and "workspace_not_found" in err
    after = sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []
    assert after == before
