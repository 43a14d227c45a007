"""The rekey of one channel: when to renew its keys, and the one renewal in flight.

Sans-IO: time is the ``now`` argument; randomness and ML-KEM encapsulation are
injected. The initiator (client) asks for new keys with REKEY_REQUEST, on an
id of its own, when its :class:`~leapcore.crypto.rekey_policy.InitiatorRekeyPolicy`
says so (key age, or a nonce past the soft limit); the responder (worker)
answers REKEY_ACK or REKEY_REJECT as its
:class:`~leapcore.crypto.rekey_policy.ResponderRekeyPolicy` decides, and switches
its sending key once the ack is encrypted. The rule this module holds: a rekey
message that does not fit -- a REKEY_REQUEST to the initiator or on an even id,
a REKEY_ACK or REKEY_REJECT to the responder or for no request in flight, bad
key material -- raises :class:`~leapcore.errors.RekeyError`, and the channel
ends (``rekey_failed``); a request left unanswered too long, or keys older than
the hard ceiling, end it too (:class:`RekeyExpired`: ``rekey_expired``).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..crypto.mode import EncryptionMode
from ..crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    Encapsulator,
    MLKEMPrivateKey,
    RandomSource,
)
from ..crypto.rekey import PendingRekey, RekeyAcceptance, accept_rekey, start_rekey
from ..crypto.rekey_policy import (
    InitiatorRekeyPolicy,
    RekeyAction,
    RekeyState,
    RekeyTimings,
    ResponderRekeyPolicy,
)
from ..crypto.transport import TransportSession
from ..errors import ConfigError, RekeyError
from .channel_codec import RekeyAck, RekeyReject, RekeyRequest
from .channel_streams import Role

__all__ = ["ChannelRekey", "RekeyAnswer", "RekeyExpired", "RekeyStart"]


@attrs.frozen
class RekeyAnswer:
    """The responder's answer to a REKEY_REQUEST, to send on the request's id."""

    message: RekeyAck | RekeyReject
    #: Run once ``message`` is encrypted: an ack switches the sending key after it.
    after: Callable[[], None] | None = None

    @property
    def completed(self) -> bool:
        """True when both directions now use new keys (the answer is an ack)."""
        return isinstance(self.message, RekeyAck)


@attrs.frozen
class RekeyStart:
    """The initiator asks for new keys: send ``request`` on ``cid``."""

    cid: int
    request: RekeyRequest


@attrs.frozen
class RekeyExpired:
    """The keys may not be used any longer: the channel must close (``rekey_expired``)."""

    reason: str


class ChannelRekey:
    """The rekey state of one end (see the module docstring).

    ``worker_mlkem_public`` (initiator) and ``mlkem_private`` (responder: the 64-byte
    seed or the key object) are needed in post-quantum mode only.
    """

    def __init__(
        self,
        session: TransportSession,
        role: Role,
        mode: EncryptionMode,
        now: float,
        *,
        timings: RekeyTimings,
        worker_mlkem_public: bytes | None,
        mlkem_private: bytes | MLKEMPrivateKey | None,
        random: RandomSource,
        encapsulate: Encapsulator,
    ) -> None:
        pq = mode is EncryptionMode.POST_QUANTUM
        if (
            role is Role.INITIATOR
            and pq
            and not (
                isinstance(worker_mlkem_public, bytes)
                and len(worker_mlkem_public) == MLKEM_PUBLIC_KEY_SIZE
            )
        ):
            raise ConfigError(
                "a post-quantum initiator needs the worker's 1568-byte ML-KEM public key"
            )
        if role is Role.RESPONDER and pq and mlkem_private is None:
            raise ConfigError("a post-quantum responder needs its ML-KEM private key")
        self.session = session
        self.mode = mode
        self._worker_mlkem_public = worker_mlkem_public or b""
        self._mlkem_private = mlkem_private
        self._random = random
        self._encapsulate = encapsulate
        self.initiator_policy: InitiatorRekeyPolicy | None = None
        self.responder_policy: ResponderRekeyPolicy | None = None
        if role is Role.INITIATOR:
            self.initiator_policy = InitiatorRekeyPolicy(now, timings)
        else:
            self.responder_policy = ResponderRekeyPolicy(now, timings)
        #: The id of the request in flight (the initiator's), if any.
        self.pending_cid: int | None = None
        self._pending: PendingRekey | None = None

    def forget(self) -> None:
        """The channel is closing: drop the request in flight."""
        self.pending_cid = self._pending = None

    def on_request(self, cid: int, message: RekeyRequest, now: float) -> RekeyAnswer:
        """The peer's REKEY_REQUEST (the responder's side)."""
        policy = self.responder_policy
        if policy is None:
            raise RekeyError("REKEY_REQUEST sent to the initiator")
        if cid % 2 != 1:
            raise RekeyError(f"REKEY_REQUEST with even id {cid}")
        decision = policy.on_request(now, soft=self.session.rekey_wanted)
        if not decision.accept:
            return RekeyAnswer(RekeyReject(decision.retry_after_ms))
        acceptance = accept_rekey(
            self.session,
            message,
            self.mode,
            self._mlkem_private or b"",
            now=now,
            random=self._random,
        )
        return RekeyAnswer(RekeyAck(acceptance.dh_pub), self._rotate_after_ack(acceptance))

    def _rotate_after_ack(self, acceptance: RekeyAcceptance) -> Callable[[], None]:
        def rotate() -> None:
            acceptance.rotate_send(self.session)

        return rotate

    def on_answer(self, cid: int, message: RekeyAck | RekeyReject, now: float) -> bool:
        """The peer's REKEY_ACK or REKEY_REJECT (the initiator's side); True when both
        directions now use new keys."""
        policy = self.initiator_policy
        name = "REKEY_ACK" if isinstance(message, RekeyAck) else "REKEY_REJECT"
        if policy is None:
            raise RekeyError(f"{name} sent to the responder")
        pending = self._pending
        if pending is None or self.pending_cid != cid:
            raise RekeyError(f"{name} {cid} does not answer a rekey request")
        self.pending_cid = self._pending = None
        if isinstance(message, RekeyAck):
            pending.finish(self.session, message.dh_pub, now=now)
            policy.on_ack(now)
            return True
        policy.on_reject(now, message.retry_after_ms)
        return False

    def poll(self, now: float, allocate: Callable[[], int]) -> RekeyStart | RekeyExpired | None:
        """Run the initiator's timers at ``now``; ``allocate`` gives the id of a request."""
        policy = self.initiator_policy
        if policy is None:
            return None
        awaiting = self._pending is not None
        action = policy.poll(now, soft=self.session.rekey_wanted)
        if action is RekeyAction.START:
            pending, request = start_rekey(
                self.mode,
                self._worker_mlkem_public,
                random=self._random,
                encapsulate=self._encapsulate,
            )
            cid = allocate()
            self.pending_cid, self._pending = cid, pending
            return RekeyStart(cid, request)
        if action is RekeyAction.CLOSE:
            if awaiting:
                why = f"no answer to the rekey request within {policy.timings.timeout:g} s"
            else:
                why = f"session keys reached the {policy.timings.hard_ceiling:g} s hard ceiling"
            return RekeyExpired(why + "; re-handshake")
        return None

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`poll` has work next (``None``: never, as on the responder)."""
        policy = self.initiator_policy
        if policy is None:
            return None
        if policy.state is RekeyState.IDLE and self.session.rekey_wanted:
            return now
        return policy.next_deadline(now)
