"""``Channel.run_command`` / ``create_process`` against the worker's ``exec`` service, through
a real channel pair (real handshake and ciphers, classic mode) running real processes:
exit statuses and signals, stderr kept apart, stdin piped, flow control against a chatty
process, timeouts and channel loss killing whole process groups, owner-only, bad input."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import trio
from support.execkit import alive, read_pid_file, running_exec_pair, wait_until

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import (
    ChannelLost,
    CommandNotFound,
    ExecFailed,
    InvalidMessage,
    ProcessFailed,
    ProcessOutputTooLarge,
    ProcessTimedOut,
    RemoteCallError,
    StreamUsageError,
)
from leapcore.peer.process import ProcessResult, RemoteProcess
from leapcore.proto.exec_spec import EXEC_METHOD, RESIZE_METHOD, WAIT_METHOD, encode_process_ref
from leapcore.proto.limits import MAX_STREAM_WINDOW


@pytest.mark.parametrize("status", [0, 1, 42])
async def test_exit_statuses(generated_keypair: WorkerKeyPair, status: int) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(["sh", "-c", f"exit {status}"])
    assert isinstance(result, ProcessResult)
    assert (result.exit_status, result.exit_signal, result.returncode) == (status, None, status)
    assert result.ok is (status == 0)


async def test_a_signal_is_reported_as_such(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command("kill -USR1 $$")
    assert result.exit_status is None
    assert result.exit_signal == signal.SIGUSR1
    assert result.returncode == -signal.SIGUSR1


async def test_stdout_and_stderr_are_kept_apart(generated_keypair: WorkerKeyPair) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(script)
        merged = await pair.client.run_command(script, stderr="stdout")
        dropped = await pair.client.run_command(script, stderr="discard")
    assert result.stdout == b"out1\nout2\nout3\n"
    assert result.stderr == b"err1\nerr2\nerr3\n"
    assert sorted(merged.stdout.splitlines()) == sorted(
        result.stdout.splitlines() + result.stderr.splitlines()
    )
    assert merged.stderr == b""
    assert (dropped.stdout, dropped.stderr) == (result.stdout, b"")


async def test_argv_is_not_a_shell(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(["echo", "$HOME", "a  b", "*"])
    assert result.stdout == b"$HOME a  b *\n"


async def test_env_merge_and_replace_and_cwd(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        merged = await pair.client.run_command(
            'echo "$LEAPCORE_T1:${PATH:+has-path}"', env={"LEAPCORE_T1": "x y"}
        )
        replaced = await pair.client.run_command(
            ["/usr/bin/env"], env={"ONLY": "1"}, env_mode="replace"
        )
        where = await pair.client.run_command(["pwd"], cwd=str(tmp_path))
    assert merged.stdout == b"x y:has-path\n"
    assert replaced.stdout == b"ONLY=1\n"
    assert where.stdout.decode().strip() == str(tmp_path)


async def test_stdin_is_piped_through_cat(generated_keypair: WorkerKeyPair) -> None:
    payload = os.urandom(24 * 1024 * 1024)  # many windows each way
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(["cat"], stdin=payload)
    assert result.exit_status == 0
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()


async def test_stdin_from_a_receive_stream(generated_keypair: WorkerKeyPair) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()

    async def produce() -> None:
        for i in range(100):
            await send.send_all(b"line %d\n" % i)
        await send.aclose()

    async with running_exec_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        result = await pair.client.run_command(["wc", "-l"], stdin=receive)
    assert result.stdout.strip() == b"100"


async def test_a_process_that_does_not_read_stdin(generated_keypair: WorkerKeyPair) -> None:
    """The worker drops what the process no longer reads: the sender never blocks."""
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(["true"], stdin=b"x" * (8 * 1024 * 1024))
    assert result.exit_status == 0


async def test_check_raises_with_the_result(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        with pytest.raises(ProcessFailed, match="exited with status 3") as info:
            await pair.client.run_command("echo no >&2; exit 3", check=True)
        with pytest.raises(ProcessFailed, match="killed by SIGTERM"):
            await pair.client.run_command("kill $$", check=True)
        assert (await pair.client.run_command(["true"], check=True)).exit_status == 0
    result = info.value.result
    assert isinstance(result, ProcessResult)
    assert (result.exit_status, result.stderr) == (3, b"no\n")


async def test_streaming_process(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        async with pair.client.create_process(["tr", "a-z", "A-Z"]) as proc:
            assert isinstance(proc, RemoteProcess)
            await proc.stdin.send_all(b"hello ")
            await proc.stdin.send_all(b"world")
            await proc.stdin.send_eof()
            out = b""
            while data := await proc.stdout.receive_some():
                out += data
            assert await proc.stderr.receive_some() == b""
            result = await proc.wait()
            assert await proc.wait() == result  # waiting again is fine locally
        assert out == b"HELLO WORLD"
        assert result.exit_status == 0 and proc.returncode == 0


async def test_send_signal(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        proc = await pair.client.create_process("echo ready; exec sleep 60")
        async with proc:
            assert await proc.stdout.receive_some() == b"ready\n"
            await proc.send_signal(signal.SIGINT)
            result = await proc.wait()
            await proc.send_signal(signal.SIGTERM)  # exited: ignored, not an error
        assert result.exit_signal == signal.SIGINT


async def test_a_chatty_process_is_held_by_the_windows(generated_keypair: WorkerKeyPair) -> None:
    """``yes`` writes as fast as it can and nobody reads: the client holds at most the
    stream's window, the worker's channel queues little, and ``yes`` blocks in ``write``."""
    async with running_exec_pair(generated_keypair) as pair:
        async with pair.client.create_process(["yes"]) as proc:
            assert await proc.stdout.receive_some(1) == b"y"
            stream = proc._stream
            samples = []
            for _ in range(20):
                await trio.sleep(0.05)
                held = sum(len(chunk) for chunk in stream._buffer)
                samples.append((held, pair.worker.endpoint.outbound_bytes))
            # Still bounded after a second of not reading: nothing grew past the window.
            assert max(h for h, _ in samples) <= MAX_STREAM_WINDOW
            assert max(q for _, q in samples) <= 1024 * 1024
            assert samples[-1][0] == samples[-5][0]  # stalled: the window is spent
            total = 0
            while total < 32 * 1024 * 1024:  # reading lets it go on
                total += len(await proc.stdout.receive_some())
        await wait_until(lambda: pair.service.running(5) == 0, "yes to be killed")


async def test_run_bounds_what_it_keeps(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        with pytest.raises(ProcessOutputTooLarge, match="more than 100000 bytes") as info:
            await pair.client.run_command(["yes"], max_output=100_000)
        await wait_until(lambda: pair.service.running(5) == 0, "yes to be killed")
    result = info.value.result
    assert isinstance(result, ProcessResult)
    assert result.stdout == b"y\n" * 50_000
    assert result.exit_status is None


async def test_timeout_kills_the_whole_group(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo started; wait"
    async with running_exec_pair(generated_keypair) as pair:
        with pytest.raises(ProcessTimedOut, match=r"timed out after 0\.5s") as info:
            await pair.client.run_command(script, timeout=0.5)
        grandchild = await read_pid_file(pids)
        await wait_until(lambda: not alive(grandchild), "the grandchild to die")
    result = info.value.result
    assert isinstance(result, ProcessResult)
    assert result.timed_out and result.stdout == b"started\n"
    assert result.exit_signal in (signal.SIGTERM, signal.SIGKILL)


async def test_a_group_ignoring_sigterm_gets_sigkill(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 300' & echo $! > {pids}; wait"
    async with running_exec_pair(generated_keypair, kill_grace=0.3) as pair:
        with pytest.raises(ProcessTimedOut) as info:
            await pair.client.run_command(script, timeout=0.3)
        grandchild = await read_pid_file(pids)
        await wait_until(lambda: not alive(grandchild), "the grandchild to die")
    assert info.value.result.exit_signal == signal.SIGKILL  # type: ignore[attr-defined]


async def test_channel_loss_kills_every_process_it_started(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    """A running command and the background child a finished command left behind both
    die when the channel ends."""
    running, left = tmp_path / "running", tmp_path / "left"
    async with running_exec_pair(generated_keypair, kill_grace=0.5) as pair:
        proc = await pair.client.create_process(f"sleep 300 & echo $! > {running}; wait")
        finished = await pair.client.run_command(f"sleep 300 >/dev/null 2>&1 & echo $! > {left}")
        assert finished.exit_status == 0
        pid1, pid2 = await read_pid_file(running), await read_pid_file(left)
        assert alive(pid1) and alive(pid2)
        assert pair.service.running(5) == 2  # the finished one's group is still watched
        pair.worker.hub_closed("link_lost", "the link went away")
        pair.client.hub_closed("link_lost", "the link went away")
        with pytest.raises(ChannelLost):
            await proc.wait()
        await wait_until(lambda: not alive(pid1) and not alive(pid2), "the processes to die")
        await wait_until(lambda: pair.service.running(5) == 0, "the table to empty")


async def test_leaving_the_block_without_waiting_kills_the_process(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    async with running_exec_pair(generated_keypair, kill_grace=0.5) as pair:
        async with pair.client.create_process(f"echo $$ > {pids}; exec sleep 300") as proc:
            pid = await read_pid_file(pids)
            assert alive(pid)
        await wait_until(lambda: not alive(pid), "the abandoned process to die")
        assert proc.returncode is None
        assert (await pair.client.run_command(["true"])).exit_status == 0  # channel fine


@pytest.mark.parametrize("pty", [None, (80, 24)])
async def test_abandoning_after_stdin_ended_still_kills_the_process(
    generated_keypair: WorkerKeyPair, tmp_path: Path, pty: tuple[int, int] | None
) -> None:
    """stdin's EOF does not stop the worker from noticing that the opener gave the
    process up: cancelling ``run_command`` (which ends stdin first) kills it."""
    pids = tmp_path / "pids"
    async with running_exec_pair(generated_keypair, kill_grace=0.5) as pair:
        async with pair.client.create_process(f"echo $$ > {pids}; exec sleep 300", pty=pty) as proc:
            await proc.stdin.send_eof()
            pid = await read_pid_file(pids)
        await wait_until(lambda: not alive(pid), "the abandoned process to die")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair.client.run_command, f"echo $$ > {pids}.2; exec sleep 300")
            pid2 = await read_pid_file(pids.with_suffix(".2"))
            nursery.cancel_scope.cancel()
        await wait_until(lambda: not alive(pid2), "the cancelled run's process to die")
        assert (await pair.client.run_command(["true"])).exit_status == 0  # channel fine


async def test_only_the_owner_may_exec(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair, user_id="u-other") as pair:
        with pytest.raises(RemoteCallError) as info:
            await pair.client.run_command(["true"])
        assert info.value.remote_code == "permission_denied"
        await pair.client.ping()


async def test_bad_input_gets_clear_errors_and_harms_nothing(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    async with running_exec_pair(generated_keypair) as pair:
        client = pair.client
        async with client.create_process("exec sleep 300") as bystander:
            with pytest.raises(CommandNotFound, match="no-such-command-xyz") as missing:
                await client.run_command(["no-such-command-xyz", "arg"])
            assert missing.value.reason == "command_not_found"
            with pytest.raises(ExecFailed, match="bad_cwd") as cwd:
                await client.run_command(["ls"], cwd=str(tmp_path / "nope"))
            assert cwd.value.reason == "bad_cwd"
            with pytest.raises(ExecFailed) as noexec:
                await client.run_command([str(plain)])
            assert noexec.value.reason == "not_executable"
            with pytest.raises(InvalidMessage, match="NUL"):  # checked before sending
                await client.run_command(["env"], env={"A": "b\0c"})
            with pytest.raises(InvalidMessage, match="contains '='"):
                await client.run_command(["env"], env={"A=B": "c"})
            # A peer that skips the local checks is refused by the worker.
            raw = b'{"argv": ["env"], "env": {"A": "b\\u0000c"}}'
            with pytest.raises(RemoteCallError) as refused:
                await client.open_byte_stream(EXEC_METHOD, raw)
            assert refused.value.remote_code == "invalid_argument"
            assert "NUL" in refused.value.remote_message
            with pytest.raises(RemoteCallError) as unknown:
                await client.call(WAIT_METHOD, encode_process_ref(999))
            assert unknown.value.remote_code == "not_found"
            # Nothing else on the channel was affected.
            await client.ping()
            assert (await client.run_command("echo ok")).stdout == b"ok\n"
            assert bystander.returncode is None
            await bystander.send_signal(signal.SIGTERM)
            assert (await bystander.wait()).exit_signal == signal.SIGTERM


async def test_a_shell_reports_a_missing_command_as_127(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command("no-such-command-xyz")
    assert result.exit_status == 127
    assert b"not found" in result.stderr


async def test_the_per_channel_limit(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair, max_processes=2) as pair:
        first = await pair.client.create_process("exec sleep 300")
        second = await pair.client.create_process("exec sleep 300")
        with pytest.raises(RemoteCallError) as info:
            await pair.client.create_process(["true"])
        assert info.value.remote_code == "resource_exhausted"
        assert "limit" in info.value.remote_message
        await first.kill()
        assert (await first.wait()).exit_signal == signal.SIGKILL
        await first.aclose()
        await wait_until(lambda: pair.service.running(5) == 1, "a slot to free")
        assert (await pair.client.run_command(["true"])).exit_status == 0
        await second.aclose()


async def test_waiting_twice_on_the_wire_is_not_found(generated_keypair: WorkerKeyPair) -> None:
    async with (
        running_exec_pair(generated_keypair) as pair,
        pair.client.create_process(["true"]) as proc,
    ):
        await proc.wait()
        with pytest.raises(RemoteCallError) as info:
            await pair.client.call(WAIT_METHOD, encode_process_ref(proc.id))
        assert info.value.remote_code == "not_found"


# -- on a terminal (pty=...) ---------------------------------------------------------------


async def test_a_process_on_a_terminal(generated_keypair: WorkerKeyPair) -> None:
    """It runs on a terminal of the size asked, with TERM set and stderr on the terminal
    (a terminal turns "\\n" into "\\r\\n")."""
    script = 'tty; stty size; echo "$TERM"; echo oops >&2; exit 3'
    async with running_exec_pair(generated_keypair) as pair:
        result = await pair.client.run_command(script, pty=(100, 30))
        named = await pair.client.run_command("echo $TERM", pty=(80, 24), env={"TERM": "vt100"})
    lines = result.stdout.decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:5] == ["30 100", "xterm-256color", "oops", ""]
    assert (result.exit_status, result.stderr) == (3, b"")
    assert named.stdout == b"vt100\r\n"


async def test_keys_in_resize_and_wait(generated_keypair: WorkerKeyPair) -> None:
    script = 'read line; echo "got $line"; stty size; read again; stty size; exit 7'
    seen = bytearray()
    async with (
        running_exec_pair(generated_keypair) as pair,
        pair.client.create_process(script, pty=(80, 24)) as proc,
    ):

        async def until(needle: bytes) -> None:
            while needle not in seen:
                data = await proc.stdout.receive_some()
                assert data, f"EOF before {needle!r}: {bytes(seen)!r}"
                seen.extend(data)

        await proc.stdin.send_all(b"hello\r")
        await until(b"24 80")
        assert b"got hello" in seen
        await proc.resize(132, 43)
        await proc.stdin.send_all(b"\r")
        await until(b"43 132")
        while await proc.stdout.receive_some():
            pass
        result = await proc.wait()
        await proc.resize(90, 30)  # after the end: nothing to do, no error
    assert result.exit_status == 7


async def test_stdin_eof_does_not_hang_the_terminal_up(generated_keypair: WorkerKeyPair) -> None:
    out = bytearray()
    async with (
        running_exec_pair(generated_keypair) as pair,
        pair.client.create_process("sleep 0.3; echo still-here", pty=(80, 24)) as proc,
    ):
        await proc.stdin.send_eof()
        while data := await proc.stdout.receive_some():
            out += data
        assert (await proc.wait()).exit_status == 0
    assert out == b"still-here\r\n"


async def test_a_terminal_process_dies_with_the_channel(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    async with running_exec_pair(generated_keypair, kill_grace=0.5) as pair:
        proc = await pair.client.create_process(
            f"trap '' HUP; echo $$ > {pids}; exec sleep 300", pty=(80, 24)
        )
        pid = await read_pid_file(pids)
        assert alive(pid)
        pair.worker.hub_closed("link_lost", "the link went away")
        pair.client.hub_closed("link_lost", "the link went away")
        with pytest.raises(ChannelLost):
            await proc.wait()
        await wait_until(lambda: not alive(pid), "the process to die")
        await wait_until(lambda: pair.service.running(5) == 0, "the table to empty")


async def test_terminal_misuse_is_refused(generated_keypair: WorkerKeyPair) -> None:
    async with running_exec_pair(generated_keypair) as pair:
        with pytest.raises(InvalidMessage, match=r"cols must be 1\.\.1000"):
            await pair.client.run_command(["true"], pty=(0, 0))
        with pytest.raises(InvalidMessage, match=r"cols must be 1\.\.1000"):
            await pair.client.run_command(["true"], pty=(100_000, 24))
        with pytest.raises(InvalidMessage, match="stderr must be 'stdout'"):
            await pair.client.run_command(["true"], pty=(80, 24), stderr="stream")
        async with pair.client.create_process(["cat"]) as piped:
            with pytest.raises(StreamUsageError, match="not started with a pty"):
                await piped.resize(80, 24)
        async with pair.client.create_process(["cat"], pty=(80, 24)) as proc:
            with pytest.raises(InvalidMessage, match=r"rows must be 1\.\.1000"):
                await proc.resize(80, 0)
            answer = pair.client.call(RESIZE_METHOD, b'{"process": 9999, "cols": 80, "rows": 24}')
            with pytest.raises(RemoteCallError) as info:
                await answer
            assert info.value.remote_code == "not_found"
        with pytest.raises(CommandNotFound):
            await pair.client.run_command(["no-such-command-here"], pty=(80, 24))
        assert (await pair.client.run_command(["true"], pty=(80, 24))).exit_status == 0
