"""Terminal sessions (``Channel.spawn_terminal`` and friends) against the worker's ``pty``
service, through real channel pairs (real handshake and ciphers, classic mode) running
real processes on real PTYs: keys in and the screen out, a full-screen program, resize,
sessions outliving their channel, attach (snapshot first), 20 sessions at once, bounded
history, kill, owner-only and bad input."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from support.execkit import alive, wait_until
from support.ptykit import PtyWorker, pty_worker, read_until, screen_until

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import (
    CommandNotFound,
    ExecFailed,
    InvalidMessage,
    RemoteCallError,
    TerminalNotFound,
)
from leapcore.proto.limits import PTY_ATTACH_BACKLOG
from leapcore.proto.pty_spec import (
    CAPTURE_METHOD,
    RESIZE_METHOD,
    SPAWN_METHOD,
    Capture,
    SessionInfo,
)

SH = ["sh"]


def shows(text: str) -> Callable[[Capture], bool]:
    """A screen condition: some row contains ``text``."""
    return lambda shot: any(text in line for line in shot.lines)


async def test_keys_in_screen_out(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(SH, cols=60, rows=10)
        assert isinstance(info, SessionInfo)
        assert (info.cols, info.rows, info.running, info.command) == (60, 10, True, "sh")
        await ch.send_keys(info.id, "echo hel''lo\n")  # the screen shows the output line
        shot = await screen_until(ch, info.id, shows("hello"), "hello")
        assert isinstance(shot, Capture)
        assert any("echo hel''lo" in line for line in shot.lines)  # the echo of the keys
        row = max(y for y, line in enumerate(shot.lines) if "hello" in line)
        assert shot.cursor[1] >= row
        assert len(shot.lines) == 10
        assert "hello" in shot.text


async def test_exit_status_and_bytes_keys(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(SH)
        await ch.send_keys(info.id, b"exit 42\n")
        done = await ch.wait_terminal(info.id, timeout=15)
        assert (done.running, done.exit_status, done.exit_signal) == (False, 42, None)
        listed = await ch.terminals()
        assert [(s.id, s.running, s.exit_status) for s in listed] == [(info.id, False, 42)]
        with pytest.raises(RemoteCallError) as caught:
            await ch.send_keys(info.id, "x")
        assert caught.value.remote_code == "failed_precondition"
        assert (await ch.capture(info.id)).info.exit_status == 42  # still capturable
        await ch.kill_terminal(info.id)  # forgets it
        assert await ch.terminals() == []


@pytest.mark.skipif(shutil.which("vi") is None, reason="no vi on this machine")
async def test_vi_screen(generated_keypair: WorkerKeyPair, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line\n")
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(["vi", str(path)], cols=70, rows=12)
        shot = await screen_until(
            ch, info.id, lambda s: s.lines[:2] == ("first line", "second line"), "vi's screen"
        )
        assert shot.lines[2].startswith("~")  # past the end of the file
        assert "notes.txt" in shot.lines[-1]  # vi's status line
        await ch.send_keys(info.id, "ggOadded by keys\x1b:wq\r")
        done = await ch.wait_terminal(info.id, timeout=15)
        assert done.exit_status == 0
    assert path.read_text() == "added by keys\nfirst line\nsecond line\n"


@pytest.mark.skipif(shutil.which("top") is None, reason="no top on this machine")
async def test_top_screen_follows_a_resize(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(["top", "-d", "0.3"], cols=100, rows=20)
        await screen_until(ch, info.id, lambda s: s.lines[0].startswith("top"), "top's header")
        await ch.resize(info.id, 120, 30)
        # top redraws for the new size: its process table then fills the 30 rows.
        shot = await screen_until(
            ch, info.id, lambda s: len(s.lines) == 30 and s.lines[29] != "", "top at 30 rows"
        )
        assert shot.info.cols == 120
        await ch.send_keys(info.id, "q")
        assert (await ch.wait_terminal(info.id, timeout=15)).exit_status == 0


async def test_resize_is_seen_by_stty(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(SH, cols=80, rows=24)
        await ch.send_keys(info.id, "stty size\n")
        await screen_until(ch, info.id, shows("24 80"), "stty size 24 80")
        await ch.resize(info.id, 132, 40)
        await ch.send_keys(info.id, "clear; stty size\n")
        shot = await screen_until(ch, info.id, shows("40 132"), "stty 40 132")
        assert len(shot.lines) == 40
        assert (shot.info.cols, shot.info.rows) == (132, 40)


async def test_session_outlives_its_channel_and_attach_gets_a_snapshot_first(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with pty_worker() as worker:
        async with worker.channel(generated_keypair) as first:
            info = await first.spawn_terminal(SH, cols=50, rows=8)
            await first.send_keys(info.id, "echo before''-close\n")
            await screen_until(first, info.id, shows("before-close"), "output")
        # The first channel is closed; the session runs on.
        assert alive(info.pid)
        async with worker.channel(generated_keypair) as second:
            [listed] = await second.terminals()
            assert (listed.id, listed.running) == (info.id, True)
            shot = await second.capture(info.id)
            assert any("before-close" in line for line in shot.lines)
            stream = await second.attach(info.id)
            first_bytes = await read_until(stream, b"before-close")
            # A snapshot: reset, clear, then the screen's rows at their places.
            assert first_bytes.startswith(b"\x1b[0m\x1b[r\x1b[H\x1b[2J")
            assert re.search(rb"\x1b\[[23];1H(# )?before-close", first_bytes)
            assert (await second.terminals())[0].attached == 1
            # Keys on the stream reach the shell; its output follows live.
            await stream.send_all(b"echo after''-attach\n")
            await read_until(stream, b"after-attach\r\n")
            await stream.aclose()  # detach
            await wait_until(lambda: not worker.service.sessions[info.id].attached, "detach")
            assert (await second.terminals())[0].running
            # Attach again, and end the session: the stream ends with it.
            again = await second.attach(info.id)
            await read_until(again, b"after-attach")
            await again.send_all(b"exit\n")
            with trio.fail_after(15):
                while await again.receive_some():
                    pass
            assert (await second.wait_terminal(info.id)).exit_status == 0


async def test_twenty_sessions_at_once(generated_keypair: WorkerKeyPair) -> None:
    count = 20
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        ids: dict[int, str] = {}

        async def one(n: int) -> None:
            info = await ch.spawn_terminal(SH, cols=40, rows=6)
            ids[n] = info.id
            await ch.send_keys(info.id, f"echo session-$((1000 + {n}))\n")
            await screen_until(ch, info.id, shows(f"session-{1000 + n}"), f"#{n}")

        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(one, n)
        listed = await ch.terminals()
        assert len(listed) == count and all(s.running for s in listed)
        assert len({s.pid for s in listed}) == count
        for n, session_id in ids.items():  # each screen holds its own output only
            text = (await ch.capture(session_id)).text
            assert [m for m in range(count) if f"session-{1000 + m}\n" in text + "\n"] == [n]


async def test_kill_hangs_up_and_forgets(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker(kill_grace=5.0) as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(["sleep", "1000"])
        assert alive(info.pid)
        last = await ch.kill_terminal(info.id)
        assert (last.running, last.exit_signal) == (False, signal.SIGHUP)
        assert not alive(info.pid)
        assert await ch.terminals() == []
        with pytest.raises(TerminalNotFound):
            await ch.capture(info.id)


async def test_kill_escalates_to_sigkill(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker(kill_grace=0.3) as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal("trap '' HUP TERM; echo ready; while :; do sleep 1; done")
        await screen_until(ch, info.id, lambda s: "ready" in s.lines, "the trap set")
        last = await ch.kill_terminal(info.id)
        assert last.exit_signal == signal.SIGKILL
        assert not alive(info.pid)


async def test_sessions_end_with_the_service(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        pids = [(await ch.spawn_terminal(["sleep", "1000"])).pid for _ in range(3)]
        assert all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)


async def test_history_is_bounded(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker(scrollback=100) as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal("seq 1 30000", cols=40, rows=10)
        assert (await ch.wait_terminal(info.id, timeout=30)).exit_status == 0
        screen = worker.service.sessions[info.id].screen
        assert screen.scrollback_lines == 100
        assert screen.scrollback_chars <= 100 * 40
        shot = await ch.capture(info.id, scrollback=100)
        assert len(shot.scrollback) == 100
        # The newest lines: the scrollback ends where the screen begins.
        assert shot.scrollback[-1] == str(int(shot.lines[0]) - 1)
        assert shot.lines[-2:] == ("30000", "")
        assert shot.scrollback[0] == str(int(shot.lines[0]) - 100)


async def test_a_slow_attached_reader_is_redrawn_not_buffered(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(SH, cols=40, rows=10)
        stream = await ch.attach(info.id)
        await read_until(stream, b"\x1b[2J")  # the snapshot; then this reader stops reading
        await ch.send_keys(info.id, "seq 1 150000; echo all''-done\n")
        await screen_until(ch, info.id, lambda s: "all-done" in s.lines, "the end", timeout=60)
        [attached] = worker.service.sessions[info.id].attached
        assert len(attached.pending) <= PTY_ATTACH_BACKLOG
        assert attached.redraw  # it fell behind: it gets a fresh snapshot, not the backlog
        # Reading again: the channel's window of old output, then a snapshot with the end.
        tail = await read_until(stream, b";1Hall-done", timeout=30)
        assert b"\x1b[2J" in tail
        await stream.aclose()


async def test_only_the_owner(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker() as worker:
        async with worker.channel(generated_keypair, user_id="u-someone-else") as ch:
            with pytest.raises(RemoteCallError) as caught:
                await ch.spawn_terminal(SH)
            assert caught.value.remote_code == "permission_denied"
            with pytest.raises(RemoteCallError):
                await ch.terminals()
        assert worker.service.sessions == {}


async def test_bad_input_leaves_everything_else_alone(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        good = await ch.spawn_terminal(SH, cols=80, rows=24)
        # An id that does not exist.
        for call in (
            ch.capture("99"),
            ch.send_keys("99", "x"),
            ch.resize("99", 80, 24),
            ch.kill_terminal("99"),
            ch.wait_terminal("99"),
            ch.attach("99"),
        ):
            with pytest.raises(TerminalNotFound, match="99"):
                await call
        # Sizes out of bounds: refused here, and by the worker if sent anyway.
        for cols, rows in ((0, 0), (100_000, 24), (80, 0), (1000, 1000)):
            with pytest.raises(InvalidMessage):
                await ch.resize(good.id, cols, rows)
            payload = f'{{"id":"{good.id}","cols":{cols},"rows":{rows}}}'.encode()
            with pytest.raises(RemoteCallError) as caught:
                await ch.call(RESIZE_METHOD, payload)
            assert caught.value.remote_code == "invalid_argument"
        with pytest.raises(InvalidMessage):
            await ch.spawn_terminal(SH, cols=100_000)
        # A command that does not exist; a cwd that does not exist.
        with pytest.raises(CommandNotFound, match="no-such-command-here"):
            await ch.spawn_terminal(["no-such-command-here"])
        with pytest.raises(ExecFailed) as failed:
            await ch.spawn_terminal(SH, cwd=str(tmp_path / "nope"))
        assert failed.value.reason == "bad_cwd"
        # NUL in the environment: refused here, and by the worker.
        with pytest.raises(InvalidMessage, match="NUL"):
            await ch.spawn_terminal(SH, env={"BAD": "a\0b"})
        with pytest.raises(RemoteCallError) as caught:
            await ch.call(SPAWN_METHOD, b'{"argv":["sh"],"env":{"BAD":"a\\u0000b"}}')
        assert caught.value.remote_code == "invalid_argument"
        for junk in (b"", b"[]", b'{"id":"1","scrollback":-1}', b'{"id":"../x"}'):
            with pytest.raises(RemoteCallError) as caught:
                await ch.call(CAPTURE_METHOD, junk)
            assert caught.value.remote_code == "invalid_argument"
        # Nothing else was touched: one session, still at its size, still working.
        [listed] = await ch.terminals()
        assert (listed.id, listed.cols, listed.rows, listed.running) == (good.id, 80, 24, True)
        await ch.send_keys(good.id, "echo still''-fine\n")
        await screen_until(ch, good.id, shows("still-fine"), "still-fine")


async def test_session_limit(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker(max_sessions=2) as worker, worker.channel(generated_keypair) as ch:
        first = await ch.spawn_terminal(SH)
        second = await ch.spawn_terminal(["sleep", "1000"])
        with pytest.raises(RemoteCallError) as caught:
            await ch.spawn_terminal(SH)
        assert caught.value.remote_code == "resource_exhausted"
        await ch.send_keys(first.id, "exit\n")
        await ch.wait_terminal(first.id, timeout=15)
        await wait_until(lambda: worker.service.sessions[first.id].finished.is_set(), "end")
        third = await ch.spawn_terminal(SH)  # the exited session makes room
        assert {s.id for s in await ch.terminals()} == {second.id, third.id}


async def test_environment_and_cwd(generated_keypair: WorkerKeyPair, tmp_path: Path) -> None:
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(
            'echo "[$TERM] [$GREETING] [$(pwd)]"; sleep 1000',
            env={"GREETING": "hi there"},
            cwd=str(tmp_path),
            cols=300,
            rows=5,
        )
        want = f"[xterm-256color] [hi there] [{os.path.realpath(tmp_path)}]"
        await screen_until(ch, info.id, shows(want), "the environment line")


async def test_concurrent_spawns_respect_the_limit(generated_keypair: WorkerKeyPair) -> None:
    async with pty_worker(max_sessions=3) as worker, worker.channel(generated_keypair) as ch:
        outcomes: list[str] = []

        async def spawn() -> None:
            try:
                await ch.spawn_terminal(["sleep", "1000"])
            except RemoteCallError as exc:
                outcomes.append(exc.remote_code)
            else:
                outcomes.append("ok")

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(spawn)
        assert sorted(outcomes) == ["ok"] * 3 + ["resource_exhausted"] * 3
        assert len(worker.service.sessions) == 3


async def test_sessions_run_without_an_explicit_nursery(generated_keypair: WorkerKeyPair) -> None:
    """The stock worker never calls ``PtyService.run``: the first spawn starts a system task
    for the sessions, which outlives the channel as well."""
    worker = PtyWorker()
    with trio.fail_after(30):
        async with worker.channel(generated_keypair) as ch:
            info = await ch.spawn_terminal(SH)
            await ch.send_keys(info.id, "echo sys''task\n")
            await screen_until(ch, info.id, shows("systask"), "systask")
        assert alive(info.pid)
        async with worker.channel(generated_keypair) as ch:
            assert [s.id for s in await ch.terminals()] == [info.id]
        await worker.service.aclose()
        assert not alive(info.pid)
        assert worker.service.sessions == {}
