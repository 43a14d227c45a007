"""The person's terminal for interactive CLI tests: a PTY of the test, its master read and
typed into, its slave the CLI's stdin, stdout, stderr and controlling terminal."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from typing import Any

from support.procs import Env, script


def on_terminal(
    env: Env,
    verb: list[str],
    *args: str,
    cols: int = 100,
    rows: int = 30,
    extra_env: dict[str, str] | None = None,
) -> tuple[Any, int]:
    """Start ``leapcore remote VERB --worker box ARGS`` with a new PTY as its terminal (its
    controlling terminal too, so it gets SIGWINCH); returns the process and the PTY's
    master, which plays the person's terminal."""
    master, slave = os.openpty()
    set_size(master, cols, rows)

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [script("leapcore"), "remote", *verb, "--worker", "box", *env.client_flags(), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env.env, "LEAPCORE_HUB": env.url, **(extra_env or {})},
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    return proc, master


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def screen_read(master: int, needle: bytes, timeout: float = 20.0) -> bytes:
    """Read the terminal until ``needle`` was shown; returns what was read."""
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} never came; read {bytes(seen[-600:])!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            if not data:
                raise AssertionError(f"{needle!r} never came; read {bytes(seen[-600:])!r}")
            seen += data
    return bytes(seen)


def finish(proc: Any, master: int) -> int:
    try:
        code: int = proc.wait(timeout=20)
    finally:
        os.close(master)
    return code
