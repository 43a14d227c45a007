"""``leapcore.sync``, the blocking API, against a real ``leapcore-hub`` and a real classic-mode
``leapcore-worker`` (processes): a plain script and an asyncio program (each a real
subprocess) connect, list workers, run a command and talk through a tunnel to a local echo
server; in this process, errors arrive as their own classes, a closed hub, channel or stream
refuses use with ``SyncClosed``, several threads share one channel, the sign-in timeout holds,
and an interrupted script (SIGINT) leaves neither its loop thread nor its remote process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.gitkit import origin_with_branches
from support.procs import TIMEOUT, Env, Proc, wait_for, worker_box
from support.threadecho import echo_port_fixture  # noqa: F401 (the echo_port fixture)

import leapcore
from leapcore import sync
from leapcore.errors import (
    CommandNotFound,
    DeadlineExceeded,
    NotFound,
    RemoteCallError,
    SyncClosed,
    Unauthenticated,
    WorkspaceError,
)
from leapcore.store.pinstore import PinStore

#: The loop thread's name (``start_blocking_portal(name=...)``).
LOOP_THREAD = "leapcore-sync"


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Proc]]:
    """One hub and one worker ``box`` for the module."""
    with worker_box(tmp_path_factory.mktemp("sync")) as box:
        yield box


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def connect(env: Env, tmp_path: Path) -> sync.SyncHub:
    return sync.connect(env.url, token=env.token, pins=PinStore(tmp_path / "pins.json"))


def run_program(env: Env, tmp_path: Path, source: str, echo_port: int) -> dict[str, Any]:
    """Run ``source`` as a Python program in its own process; its last stdout line is JSON."""
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(source))
    extra = {
        "SYNC_HUB": env.url,
        "SYNC_TOKEN": env.token,
        "SYNC_PINS": str(tmp_path / "pins.json"),
        "SYNC_ECHO_PORT": str(echo_port),
    }
    done = subprocess.run(
        [sys.executable, str(path)],
        env={**env.env, **extra},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


SCRIPT = """
    import json, os, threading
    import leapcore
    from leapcore.store.pinstore import PinStore

    port = int(os.environ["SYNC_ECHO_PORT"])
    payload = bytes(range(256)) * 1000
    with leapcore.sync.connect(os.environ["SYNC_HUB"], token=os.environ["SYNC_TOKEN"],
                               pins=PinStore(os.environ["SYNC_PINS"])) as hub:
        names = [w["name"] for w in hub.list_workers()]
        with hub.open_channel("box") as ch:
            ch.ping()
            result = ch.run(["echo", "hi"])
            with ch.open_tcp("127.0.0.1", port) as conn:
                conn.send_all(payload)
                conn.send_eof()
                echoed = b""
                while data := conn.recv():
                    echoed += data
            info = json.loads(ch.call("info"))
    print(json.dumps({
        "names": names,
        "stdout": result.stdout.decode(),
        "exit_status": result.exit_status,
        "echoed": echoed == payload,
        "echoed_bytes": len(echoed),
        "worker_name": info.get("name"),
        "threads": [t.name for t in threading.enumerate()],
    }))
"""


def test_a_plain_script(box: tuple[Env, Proc], tmp_path: Path, echo_port: int) -> None:
    env, _ = box
    out = run_program(env, tmp_path, SCRIPT, echo_port)
    assert out["names"] == ["box"]
    assert (out["stdout"], out["exit_status"]) == ("hi\n", 0)
    assert out["echoed"], out["echoed_bytes"]
    assert out["worker_name"] == "box"
    assert out["threads"] == ["MainThread"], "the loop thread outlived the with block"
    assert (tmp_path / "pins.json").exists(), "the worker's keys were not pinned"


ASYNCIO_PROGRAM = """
    import asyncio, json, os, threading
    from leapcore import sync
    from leapcore.store.pinstore import PinStore

    async def main():
        port = int(os.environ["SYNC_ECHO_PORT"])
        hub = await asyncio.to_thread(
            sync.connect, os.environ["SYNC_HUB"], token=os.environ["SYNC_TOKEN"],
            pins=PinStore(os.environ["SYNC_PINS"]))
        try:
            workers = await asyncio.to_thread(hub.list_workers)
            ch = await asyncio.to_thread(hub.open_channel, workers[0])
            results = await asyncio.gather(
                *(asyncio.to_thread(ch.run, ["echo", str(i)]) for i in range(3)))
            conn = await asyncio.to_thread(ch.open_tcp, "127.0.0.1", port)
            await asyncio.to_thread(conn.send_all, b"from asyncio")
            first = await asyncio.to_thread(conn.recv)
            await asyncio.to_thread(conn.close)
            await asyncio.to_thread(ch.close)
        finally:
            await asyncio.to_thread(hub.close)
        return {
            "names": [w["name"] for w in workers],
            "stdout": [r.stdout.decode() for r in results],
            "first": first.decode(),
            "threads": [t.name for t in threading.enumerate()],
        }

    print(json.dumps(asyncio.run(main())))
"""


def test_an_asyncio_program(box: tuple[Env, Proc], tmp_path: Path, echo_port: int) -> None:
    env, _ = box
    out = run_program(env, tmp_path, ASYNCIO_PROGRAM, echo_port)
    assert out["names"] == ["box"]
    assert out["stdout"] == ["0\n", "1\n", "2\n"]
    # One recv returns what has arrived: the echo may come in pieces, but starts so.
    assert out["first"] and "from asyncio".startswith(out["first"])
    assert LOOP_THREAD not in out["threads"]


def test_put_and_get(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """``cp`` in the blocking API: a tree up and back, bytes and modes equal."""
    env, _ = box
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    (tree / "sub" / "b.bin").chmod(0o640)
    remote = str(tmp_path / "on-worker")  # the worker runs on this machine
    back = tmp_path / "back"
    with connect(env, tmp_path) as hub, hub.open_channel("box") as ch:
        up = ch.put(tree, remote, recursive=True)
        down = ch.get(remote, back, recursive=True)
    assert (up.files, up.bytes) == (2, 6 + 256_000) == (down.files, down.bytes)
    assert (back / "a.txt").read_bytes() == b"alpha\n"
    assert (back / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 1000
    assert (back / "sub" / "b.bin").stat().st_mode & 0o777 == 0o640


def test_workspaces(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """Workspaces in the blocking API: create, run in it, list, remove."""
    env, _ = box
    origin, heads = origin_with_branches(tmp_path)
    with connect(env, tmp_path) as hub, hub.open_channel("box") as ch:
        ws = ch.workspace(origin.url, "main")
        assert ws.new and ws.head == heads["main"]
        assert ch.run(["cat", "README"], workspace=ws.id).stdout == b"hello\n"
        assert [w.id for w in ch.workspaces()] == [ws.id]
        with pytest.raises(WorkspaceError) as missing:
            ch.workspace(origin.url, "no-such-branch")
        assert missing.value.reason == "branch_not_found"
        assert ch.remove_workspace(ws.id).id == ws.id
        assert ch.workspaces() == []


def test_errors_arrive_as_their_own_classes(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    with connect(env, tmp_path) as hub:
        with pytest.raises(NotFound) as unknown:
            hub.open_channel("no-such-worker")
        assert type(unknown.value) is NotFound
        with pytest.raises(NotFound):  # an id straight to the hub, no resolving first
            hub.open_channel({"id": "0" * 48})
        with hub.open_channel("box") as ch:
            with pytest.raises(CommandNotFound) as missing:
                ch.run(["leapcore-no-such-command"])
            assert type(missing.value) is CommandNotFound
            assert missing.value.reason == "command_not_found"
            with pytest.raises(RemoteCallError) as unimplemented:
                ch.call("no.such.method", b"")
            assert unimplemented.value.remote_code == "unimplemented"
            assert ch.run(["true"]).ok  # the channel carries on after errors
    with pytest.raises(Unauthenticated):
        sync.connect(env.url, token="lc_not_a_token", pins=None)
    assert loop_threads() == []


def test_use_after_close_is_sync_closed(
    box: tuple[Env, Proc], tmp_path: Path, echo_port: int
) -> None:
    env, _ = box
    hub = connect(env, tmp_path)
    ch = hub.open_channel("box")
    kept = hub.open_channel("box")  # left open: the hub's close closes it
    conn = ch.open_tcp("127.0.0.1", echo_port)
    conn.send_all(b"x")
    assert conn.recv() == b"x"
    ch.close()
    assert ch.closed and conn.closed
    with pytest.raises(SyncClosed, match="channel is closed"):
        ch.run(["true"])
    with pytest.raises(SyncClosed, match="stream is closed"):
        conn.recv()
    ch.close()  # twice: harmless
    assert kept.run(["true"]).ok and hub.list_workers()
    hub.close()
    assert kept.closed
    for call in (hub.list_workers, kept.ping, lambda: hub.open_channel("box")):
        with pytest.raises(SyncClosed):
            call()
    hub.close()
    assert loop_threads() == []
    assert issubclass(SyncClosed, leapcore.LocalError)


def test_closing_under_waiting_calls(box: tuple[Env, Proc], tmp_path: Path, echo_port: int) -> None:
    """Calls waiting in other threads when their stream, channel or hub is closed end with
    ``SyncClosed`` (not whatever the async side raised for it), and promptly."""
    env, _ = box
    started = tmp_path / "started"
    outcomes: dict[str, BaseException | None] = {}

    def waiting(name: str, call: Any) -> threading.Thread:
        def work() -> None:
            try:
                call()
                outcomes[name] = None
            except BaseException as exc:
                outcomes[name] = exc

        thread = threading.Thread(target=work)
        thread.start()
        return thread

    hub = connect(env, tmp_path)
    ch, other = hub.open_channel("box"), hub.open_channel("box")
    conn = ch.open_tcp("127.0.0.1", echo_port)
    reader = waiting("recv", conn.recv)  # nothing was sent: it waits
    conn_ch = other.open_tcp("127.0.0.1", echo_port)
    channel_reader = waiting("channel", conn_ch.recv)
    sleeper = waiting("run", lambda: other.run(["sh", "-c", f"touch {started}; exec sleep 30"]))
    wait_for(started.exists, "the remote sleep to start")
    conn.close()
    reader.join(TIMEOUT)
    other.close()
    channel_reader.join(TIMEOUT)
    sleeper.join(TIMEOUT)
    run_waiting = waiting("hub", lambda: ch.run(["sleep", "30"]))
    hub.close()
    run_waiting.join(TIMEOUT)
    assert not any(t.is_alive() for t in (reader, channel_reader, sleeper, run_waiting))
    assert {name: type(exc) for name, exc in outcomes.items()} == dict.fromkeys(
        ("recv", "channel", "run", "hub"), SyncClosed
    ), outcomes
    assert loop_threads() == []


def test_threads_share_one_channel(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """Four threads run at once on one channel: each command waits until all four have
    started, so they pass only if the calls really run concurrently."""
    env, _ = box
    meet = tmp_path / "meet"
    meet.mkdir()
    count = 4
    wait_all = (
        f'touch {meet}/"$1"; while [ "$(ls {meet} | wc -l)" -lt {count} ]; do sleep 0.02; done; '
        'echo "$1"'
    )
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    with connect(env, tmp_path) as hub, hub.open_channel("box") as ch:

        def work(i: int) -> None:
            try:
                results[i] = ch.run(["sh", "-c", wait_all, "sh", str(i)], timeout=TIMEOUT)
                hub.list_workers()
                ch.ping()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 2)
        assert errors == []
        assert {i: r.stdout for i, r in results.items()} == {
            i: f"{i}\n".encode() for i in range(count)
        }
        assert all(r.ok and not r.timed_out for r in results.values())
    assert loop_threads() == []


def test_the_sign_in_timeout(tmp_path: Path) -> None:
    """A hub that accepts the connection and never answers: ``timeout`` bounds the wait."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DeadlineExceeded, match="sign in"):
            sync.connect(url, token="lc_whatever", pins=None, timeout=0.5)
    assert loop_threads() == []


INTERRUPTED = """
    import json, os, sys, threading
    from leapcore import sync
    from leapcore.store.pinstore import PinStore

    try:
        with sync.connect(os.environ["SYNC_HUB"], token=os.environ["SYNC_TOKEN"],
                          pins=PinStore(os.environ["SYNC_PINS"])) as hub:
            with hub.open_channel("box") as ch:
                ch.run(["sh", "-c", 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 60',
                        sys.argv[1]])
        print(json.dumps({"interrupted": False}))
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True,
                          "threads": [t.name for t in threading.enumerate()]}))
"""


def _alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True, check=False).stdout.strip()  # fmt: skip
    return bool(state) and not state.startswith("Z")


def test_ctrl_c_stops_the_call_and_the_thread(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """SIGINT while ``run`` waits: the script's with blocks close, its loop thread ends, and
    the remote process (whose pid it wrote) is killed by the worker."""
    env, _ = box
    program, marker = tmp_path / "interrupted.py", tmp_path / "remote.pid"
    program.write_text(textwrap.dedent(INTERRUPTED))
    extra = {"SYNC_HUB": env.url, "SYNC_TOKEN": env.token, "SYNC_PINS": str(tmp_path / "p.json")}
    proc = subprocess.Popen(
        [sys.executable, str(program), str(marker)],
        env={**env.env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(wait_for(lambda: marker.exists() and marker.read_text().strip(), "the pid"))
        assert _alive(pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["interrupted"] is True
    assert result["threads"] == ["MainThread"], "the loop thread outlived the interrupt"
    wait_for(lambda: not _alive(pid), "the remote sleep to be killed")
