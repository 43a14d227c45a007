"""``remote shell`` / ``session attach``'s interactive loop (``leapcore_cli.session.interact``)
against a real worker ``pty`` service through a real channel pair, with a PTY of this test
as the person's terminal: raw keys in, output out, SIGWINCH forwarded as a resize, ``~.``
detaching (the session runs on) and the session's end ending it."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios

import trio
from support.ptykit import pty_worker

from leapcore.crypto.keys import WorkerKeyPair
from leapcore_cli.localtty import raw_terminal
from leapcore_cli.session import interact


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def shown(terminal: trio.lowlevel.FdStream, needle: bytes) -> bytes:
    seen = bytearray()
    with trio.fail_after(20):
        while needle not in seen:
            seen += await terminal.receive_some()
    return bytes(seen)


async def test_keys_output_resize_detach_and_end(generated_keypair: WorkerKeyPair) -> None:
    master, slave = os.openpty()  # master: the person's side; slave: the client's terminal
    set_size(master, 100, 30)
    terminal = trio.lowlevel.FdStream(master)
    async with pty_worker() as worker, worker.channel(generated_keypair) as ch:
        info = await ch.spawn_terminal(["sh"], cols=80, rows=24)
        results: list[bool] = []

        async def client() -> None:
            with raw_terminal(slave):
                results.append(await interact(ch, info.id, fd_in=slave, fd_out=slave))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await shown(terminal, b"\x1b[2J")  # the snapshot
            await terminal.send_all(b"stty size; echo one''two\r")
            await shown(terminal, b"30 100")  # attached with the local size
            set_size(master, 120, 40)
            os.kill(os.getpid(), signal.SIGWINCH)
            with trio.fail_after(10):
                while worker.service.sessions[info.id].cols != 120:
                    await trio.sleep(0.02)
            await terminal.send_all(b"stty size\r")
            await shown(terminal, b"40 120")
            await terminal.send_all(b"\r~.")
        assert results == [True]  # detached
        assert (await ch.terminals())[0].running  # the session runs on

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await shown(terminal, b"onetwo")  # redrawn from the snapshot
            await terminal.send_all(b"exit 5\r")
        assert results == [True, False]  # ended with the session
        assert (await ch.wait_terminal(info.id)).exit_status == 5
    await terminal.aclose()
    os.close(slave)
