"""leapcore.worker.signpool: SLH-DSA signing in worker processes, off the event loop.

Every signature costs ~125-200 ms of CPU on this 2-core machine, so the tests sign as little
as they can and reuse the session keypair.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from leapcore.crypto.handshake import Initiator
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.primitives import SLHDSA_SIGNATURE_SIZE, slhdsa_sign, slhdsa_verify
from leapcore.errors import LocalError
from leapcore.peer.channel import Services
from leapcore.proto.link_codec import ChannelReject, ChannelRequest, LinkMessage
from leapcore.worker.channels import ChannelServer
from leapcore.worker.signpool import (
    InlineSigner,
    OnDemandSigner,
    Signer,
    SigningPool,
    SigningPoolBroken,
    SigningPoolClosed,
)

TICK = 0.005


def _crash(secret_key: bytes, message: bytes) -> bytes:
    """Replaces the child's signing function: the child dies mid-job."""
    os._exit(3)


async def ticks_while_signing(signer: Signer, key: bytes, n: int, out: dict[bytes, bytes]) -> int:
    """How many times a ``TICK`` periodic ticker ran while any of ``n`` concurrent
    signatures was in progress. A signer that blocks the loop lets it run at most once per
    signature (at the checkpoint before it blocks); one that keeps the loop free lets it run
    all along. A count, not a duration: a busy machine slows both, it does not flip them."""
    in_progress = 0
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(TICK)
            ticks += in_progress > 0

    async def one(i: int) -> None:
        nonlocal in_progress
        message = b"burst %d" % i
        in_progress += 1
        try:
            out[message] = await signer.sign(key, message)
        finally:
            in_progress -= 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as signing:
            for i in range(n):
                signing.start_soon(one, i)
        nursery.cancel_scope.cancel()
    return ticks


async def test_signatures_verify_and_are_randomized(generated_keypair: WorkerKeyPair) -> None:
    # SLH-DSA-SHAKE-256f as pqcrypto implements it is randomized (hedged): two signatures of
    # the same message differ, so the pool's output cannot be compared with slhdsa_sign's.
    # Both verify, have the same length, and differ.
    message = b"transcript"
    async with SigningPool(processes=1) as pool:
        signature = await pool.sign(generated_keypair.slhdsa_private, message)
    inline = slhdsa_sign(generated_keypair.slhdsa_private, message)
    slhdsa_verify(generated_keypair.slhdsa_public, message, signature)
    assert len(signature) == len(inline) == SLHDSA_SIGNATURE_SIZE
    assert signature != inline


async def test_both_signers_satisfy_the_protocol(generated_keypair: WorkerKeyPair) -> None:
    assert isinstance(SigningPool(1), Signer)
    assert isinstance(InlineSigner(), Signer)
    signature = await InlineSigner().sign(generated_keypair.slhdsa_private, b"m")
    slhdsa_verify(generated_keypair.slhdsa_public, b"m", signature)


async def test_pool_keeps_the_loop_running_inline_does_not(
    generated_keypair: WorkerKeyPair,
) -> None:
    key = generated_keypair.slhdsa_private
    pooled: dict[bytes, bytes] = {}
    inline: dict[bytes, bytes] = {}
    async with SigningPool(processes=2) as pool:
        pool_ticks = await ticks_while_signing(pool, key, 16, pooled)
    # Two inline signatures are enough to show the stall (each blocks the loop entirely).
    inline_ticks = await ticks_while_signing(InlineSigner(), key, 2, inline)
    print(f"\nticks while signing: pool {pool_ticks}, inline {inline_ticks}")
    assert len(pooled) == 16 and len(inline) == 2
    for message, signature in [*pooled.items(), *inline.items()]:
        slhdsa_verify(generated_keypair.slhdsa_public, message, signature)
    assert inline_ticks <= 2
    # Signing on the loop would allow at most one tick per signature (16). 16 signatures on
    # 2 processes take >= 8 signatures' time (~1 s): a free loop ticks ~200 times in it.
    assert pool_ticks > 16


async def test_cancelled_signs_do_not_break_the_pool(generated_keypair: WorkerKeyPair) -> None:
    key = generated_keypair.slhdsa_private
    async with SigningPool(processes=1) as pool:
        assert pool.max_outstanding == 4
        finished = []

        async def sign(i: int) -> None:
            await pool.sign(key, b"doomed %d" % i)
            finished.append(i)

        # Six callers: some are running or queued in the child, some are pending in the
        # executor (cancellable), two wait for a slot.
        with trio.move_on_after(0.05) as scope:
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(sign, i)
        assert scope.cancelled_caught
        assert finished == []
        # The pool still signs; the slots come back once the child is done with the jobs it
        # had already taken (cancelled callers do not free a busy process early).
        signature = await pool.sign(key, b"after")
        slhdsa_verify(generated_keypair.slhdsa_public, b"after", signature)
        with trio.fail_after(5):
            while pool._slots.value != pool.max_outstanding:
                await trio.sleep(0.01)


async def submitted(pool: SigningPool, n: int) -> None:
    """Wait until ``n`` jobs hold a slot: each was submitted to the executor as it took it."""
    with trio.fail_after(10):
        while pool._slots.value != pool.max_outstanding - n:
            await trio.sleep(0.001)


async def test_closed_pool(generated_keypair: WorkerKeyPair) -> None:
    key = generated_keypair.slhdsa_private
    pool = SigningPool(processes=1)
    with pytest.raises(SigningPoolClosed, match="not open"):
        await pool.sign(key, b"m")
    outcomes: list[object] = []

    async def sign(i: int) -> None:
        try:
            outcomes.append(await pool.sign(key, b"m%d" % i))
        except SigningPoolClosed as exc:
            outcomes.append(exc)

    async with pool, trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(sign, i)
        await submitted(pool, 4)
        await pool.aclose()  # while the four are in flight
    assert pool.pids == frozenset()
    assert len(outcomes) == 4
    closed = [o for o in outcomes if isinstance(o, SigningPoolClosed)]
    assert closed, "the job not yet taken by the child is cancelled"
    for o in outcomes:
        assert isinstance(o, bytes | SigningPoolClosed)
    with pytest.raises(SigningPoolClosed, match="closed") as info:
        await pool.sign(key, b"m")
    assert isinstance(info.value, LocalError)
    assert info.value.code == "signing_pool_closed"
    with pytest.raises(SigningPoolClosed):
        await pool.__aenter__()


async def test_bad_arguments() -> None:
    with pytest.raises(LocalError):
        SigningPool(processes=0)
    assert SigningPool().processes == (os.cpu_count() or 1)
    with pytest.raises(LocalError, match="128 bytes"):
        await InlineSigner().sign(b"short", b"m")
    pool = SigningPool(processes=1)
    with pytest.raises(LocalError, match="128 bytes"):
        await pool.sign(b"short", b"m")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
async def test_children_are_niced_and_ignore_sigint() -> None:
    async with SigningPool(processes=2) as pool:
        assert len(pool.pids) == 2  # pre-warmed: all started on entry
        parent = os.getpriority(os.PRIO_PROCESS, 0)
        for pid in pool.pids:
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(parent + 10, 19)
            with open(f"/proc/{pid}/status") as status:
                ignored = next(line for line in status if line.startswith("SigIgn:"))
            assert int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1))


async def test_killed_child_is_recovered(generated_keypair: WorkerKeyPair) -> None:
    key, public = generated_keypair.slhdsa_private, generated_keypair.slhdsa_public
    async with SigningPool(processes=2) as pool:
        before = pool.pids
        results: dict[int, bytes] = {}

        async def sign(i: int) -> None:
            results[i] = await pool.sign(key, b"m%d" % i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(sign, i)
            await submitted(pool, 3)  # handed to the children
            os.kill(min(before), signal.SIGKILL)
        for i, signature in results.items():
            slhdsa_verify(public, b"m%d" % i, signature)
        assert len(results) == 3
        assert pool.restarts == 1  # once, although every job in flight failed
        assert not pool.pids & before

        # A second death while retrying the same signature is reported...
        sign_in_child = pool._child_fn
        pool._child_fn = _crash
        with pytest.raises(SigningPoolBroken, match="died twice"):
            await pool.sign(key, b"poison")
        assert pool.restarts == 2
        # ...and the pool still recovers for the next caller.
        pool._child_fn = sign_in_child
        signature = await pool.sign(key, b"again")
        slhdsa_verify(public, b"again", signature)
        assert pool.restarts == 3


async def test_on_demand_signer_starts_its_pool_at_the_first_signature(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with OnDemandSigner(processes=1) as signer:
        assert signer.pool is None  # nothing started for a worker nobody opens
        signature = await signer.sign(generated_keypair.slhdsa_private, b"transcript")
        slhdsa_verify(generated_keypair.slhdsa_public, b"transcript", signature)
        assert signer.pool is not None and len(signer.pool.pids) == 1
    with pytest.raises(SigningPoolClosed):
        await signer.sign(generated_keypair.slhdsa_private, b"again")


#: Signs one message with an OnDemandSigner in a fresh interpreter (the forkserver is one per
#: process, so only a fresh one shows how the first start goes), then prints the start
#: method the pool used ("inline" when it fell back) and whether the signature verified.
_FRESH_SIGNER = """
import resource, sys, trio
from leapcore.crypto.primitives import slhdsa_verify
from leapcore.worker.signpool import OnDemandSigner, SigningPool

async def main() -> None:
    secret, public = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
    if sys.argv[3] == "no-descriptors":  # nothing left for the pool's pipes
        import os
        used = len(os.listdir("/proc/self/fd"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))
    async with OnDemandSigner(processes=1) as signer:
        signature = await signer.sign(secret, b"transcript")
        pool = signer.pool
        method = pool._executor._mp_context.get_start_method() if pool is not None else "inline"
    slhdsa_verify(public, b"transcript", signature)
    print(method, "verified")

trio.run(main)
"""


def _sign_in_a_fresh_process(
    keypair: WorkerKeyPair, env: dict[str, str], mode: str = ""
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-c",
        _FRESH_SIGNER,
        keypair.slhdsa_private.hex(),
        keypair.slhdsa_public.hex(),
        mode,
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_a_deep_temporary_directory_starts_the_pool_with_spawn(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    """A TMPDIR so deep that the forkserver's socket path cannot be bound (AF_UNIX paths
    hold 107 bytes) used to fail the worker's first post-quantum open."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(deep)}
    done = _sign_in_a_fresh_process(generated_keypair, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["spawn", "verified"]
    shallow = _sign_in_a_fresh_process(generated_keypair, {**os.environ, "TMPDIR": "/tmp"})
    assert shallow.stdout.split() == ["forkserver", "verified"], shallow.stderr


def test_the_signer_signs_on_the_loop_when_no_process_can_start(
    generated_keypair: WorkerKeyPair,
) -> None:
    done = _sign_in_a_fresh_process(generated_keypair, dict(os.environ), "no-descriptors")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inline", "verified"]
    assert "signing processes could not start" in done.stderr


class _FailingSigner:
    async def sign(self, secret_key: bytes, message: bytes) -> bytes:
        raise RuntimeError("the signer broke")


async def test_a_failing_signer_refuses_that_open_only(generated_keypair: WorkerKeyPair) -> None:
    """A signer that raises something unexpected ends the one open (``handshake_failed``),
    not the worker's link: the server goes on to answer the next request."""
    sent: list[LinkMessage] = []

    async def send(message: LinkMessage) -> None:
        sent.append(message)

    message1 = Initiator(generated_keypair.public, EncryptionMode.POST_QUANTUM).write_message1()
    async with trio.open_nursery() as nursery:
        server = ChannelServer(
            keypair=generated_keypair,
            mode="post-quantum",
            owner_id="u-owner",
            send=send,
            signer=_FailingSigner(),
            services=Services(),
            nursery=nursery,
        )
        await server.handle_request(ChannelRequest(1, 5, "u-owner", message1, 1 << 24))
        await server.handle_request(ChannelRequest(2, 6, "u-mallory", message1, 1 << 24))
    internal = "handshake failed: an internal error on the worker"
    assert sorted(sent, key=lambda m: getattr(m, "request_id", 0)) == [
        ChannelReject(1, 5, "handshake_failed", internal),
        ChannelReject(2, 6, "permission_denied", "only the worker owner may open channels"),
    ]
