"""The one signal watcher (:mod:`leapcore.net.signals`), driven by real signals to the process.

In-process tests send the signal to this process from inside the run (``os.kill(getpid())``)
with trio's mock clock, so the grace period is exact; the last ones run a child process and
signal it from outside, as a service manager or Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from functools import partial

import pytest
import trio

from leapcore.net.signals import DEFAULT_SIGNALS, run_until_signal
from leapcore.proto.limits import STOP_GRACE


def kill_self(signum: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), signum)


class Service:
    """A stand-in for a hub or worker: runs until stopped; stopping may hang."""

    def __init__(self, *, hang: bool = False) -> None:
        self.stopped = trio.Event()
        self.hang = hang
        self.stop_calls = 0

    def stop(self) -> None:
        self.stop_calls += 1
        if not self.hang:
            self.stopped.set()

    async def run(self, signals: list[int]) -> str:
        for signum in signals:
            kill_self(signum)
            await trio.sleep(1)
        await self.stopped.wait()
        return "stopped"


def test_the_defaults() -> None:
    assert DEFAULT_SIGNALS == (signal.SIGINT, signal.SIGTERM)
    assert STOP_GRACE == 10.0


async def test_a_run_that_ends_by_itself_returns_its_value() -> None:
    async def main() -> str:
        await trio.sleep(0)
        return "done"

    assert await run_until_signal(main, default="cancelled") == "done"


@pytest.mark.parametrize("signum", DEFAULT_SIGNALS)
async def test_the_first_signal_stops_gracefully(signum: int, autojump_clock: object) -> None:
    service = Service()
    start = trio.current_time()
    result = await run_until_signal(
        partial(service.run, [signum]), service.stop, default="cancelled"
    )
    assert (result, service.stop_calls) == ("stopped", 1)
    assert trio.current_time() - start == 1  # main's own sleep, nothing more


async def test_an_async_stop_runs_beside_main(autojump_clock: object) -> None:
    stopped = trio.Event()

    async def shutdown() -> None:
        await trio.sleep(3)  # e.g. go-away to every link, then close
        stopped.set()

    async def main() -> int:
        kill_self(signal.SIGINT)
        await stopped.wait()
        return 7

    start = trio.current_time()
    assert await run_until_signal(main, shutdown, default=0) == 7
    assert trio.current_time() - start == 3


async def test_a_stop_that_hangs_is_cancelled_after_the_grace(autojump_clock: object) -> None:
    service = Service(hang=True)
    start = trio.current_time()
    result = await run_until_signal(
        partial(service.run, [signal.SIGTERM]), service.stop, default="cancelled", grace=4
    )
    assert (result, service.stop_calls) == ("cancelled", 1)
    assert trio.current_time() - start == 4


async def test_a_second_signal_cancels_at_once(autojump_clock: object) -> None:
    service = Service(hang=True)
    start = trio.current_time()
    result = await run_until_signal(
        partial(service.run, [signal.SIGTERM, signal.SIGINT]), service.stop, default="cancelled"
    )
    assert (result, service.stop_calls) == ("cancelled", 1)
    assert trio.current_time() - start == 1  # the second signal, not the 10 s grace


async def test_without_a_stop_the_first_signal_cancels(autojump_clock: object) -> None:
    service = Service()
    start = trio.current_time()
    result = await run_until_signal(partial(service.run, [signal.SIGINT]), default="cancelled")
    assert result == "cancelled" and service.stop_calls == 0
    assert trio.current_time() - start == 0


async def test_only_the_given_signals_are_watched(autojump_clock: object) -> None:
    service = Service()
    result = await run_until_signal(
        partial(service.run, [signal.SIGUSR1]),
        service.stop,
        default="cancelled",
        signals=(signal.SIGUSR1,),
    )
    assert result == "stopped"


async def test_an_error_from_main_is_not_wrapped_in_a_group() -> None:
    async def main() -> None:
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        await run_until_signal(main, default=None)


async def test_the_process_handlers_are_restored_afterwards() -> None:
    before = {signum: signal.getsignal(signum) for signum in DEFAULT_SIGNALS}

    async def main() -> None:
        assert {signum: signal.getsignal(signum) for signum in DEFAULT_SIGNALS} != before
        await trio.sleep(0)

    await run_until_signal(main, default=None)
    assert {signum: signal.getsignal(signum) for signum in DEFAULT_SIGNALS} == before


CHILD = textwrap.dedent(
    """
    import sys, trio
    from leapcore.net.signals import run_until_signal

    hang = sys.argv[1] == "hang"
    stopped = trio.Event()

    def stop():
        print("stopping", flush=True)
        if not hang:
            stopped.set()

    async def main():
        print("ready", flush=True)
        await stopped.wait()
        return "stopped"

    print(trio.run(lambda: run_until_signal(main, stop, default="cancelled", grace=60)))
    """
)


def _child(mode: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


@pytest.mark.parametrize("signum", DEFAULT_SIGNALS)
def test_a_process_signalled_from_outside_stops_gracefully(signum: int) -> None:
    child = _child("stop")
    child.send_signal(signum)
    out, _ = child.communicate(timeout=30)
    assert (out, child.returncode) == ("stopping\nstopped\n", 0)


def test_a_second_signal_from_outside_cancels_a_stop_that_hangs() -> None:
    child = _child("hang")
    assert child.stdout is not None
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline() == "stopping\n"
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)  # long before the 60 s grace
    assert (out, child.returncode) == ("cancelled\n", 0)
