"""leapcore: reach machines behind NAT through a relay that never sees content.

The sans-IO cores (handshake, transport cipher, rekey, keys) import without
trio; the trio drivers build on them. The client API -- :func:`connect`, and the
:class:`Channel`, :class:`ByteStream`, :class:`Services` and :class:`Worker` drivers -- is
loaded on first use, so ``import leapcore`` alone never imports trio; so is ``leapcore.sync``,
the blocking API for scripts and asyncio programs (``from leapcore import sync``).

Errors form one tree under :class:`LeapcoreError`, caught by meaning: :class:`LocalError`
(this side's fault), :class:`RemoteProtocolError` (the peer broke the protocol: possibly an
attack) and :class:`RemoteFailure`, split into :class:`Unavailable` (went away or too slow:
retry later) and :class:`Refused` (the far side said no). See :mod:`leapcore.errors`.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .crypto.handshake import Initiator, Responder
from .crypto.keys import PublicKeyBundle, WorkerKeyPair
from .crypto.mode import EncryptionMode, parse_encryption_mode
from .crypto.transport import TransportSession
from .errors import (
    LeapcoreError,
    LocalError,
    Refused,
    RemoteFailure,
    RemoteProtocolError,
    ServiceError,
    Unavailable,
)

_LAZY = {
    "connect": "leapcore.peer.connect",
    "Channel": "leapcore.peer.channel",
    "ByteStream": "leapcore.peer.channel",
    "CallContext": "leapcore.peer.channel",
    "Services": "leapcore.peer.channel",
    "HubSession": "leapcore.peer.hubsession",
    "Worker": "leapcore.worker.daemon",
    "default_services": "leapcore.worker.builtin_services",
    "forward_local": "leapcore.peer.tunnel",
    "serve_socks5": "leapcore.peer.socks5",
    "channel_pool": "leapcore.peer.tunnel",
    "tune_allocator": "leapcore.net.allocator",
}
#: Submodules loaded on first use, as attributes: ``leapcore.sync`` (the blocking API).
_LAZY_MODULES = {"sync": "leapcore.peer.sync"}

if TYPE_CHECKING:
    from .net.allocator import tune_allocator
    from .peer import sync
    from .peer.channel import ByteStream, CallContext, Channel, Services
    from .peer.connect import connect
    from .peer.hubsession import HubSession
    from .peer.socks5 import serve_socks5
    from .peer.tunnel import channel_pool, forward_local
    from .worker.builtin_services import default_services
    from .worker.daemon import Worker


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leapcore' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ByteStream",
    "CallContext",
    "Channel",
    "EncryptionMode",
    "HubSession",
    "Initiator",
    "LeapcoreError",
    "LocalError",
    "PublicKeyBundle",
    "Refused",
    "RemoteFailure",
    "RemoteProtocolError",
    "Responder",
    "ServiceError",
    "Services",
    "TransportSession",
    "Unavailable",
    "Worker",
    "WorkerKeyPair",
    "__version__",
    "channel_pool",
    "connect",
    "default_services",
    "forward_local",
    "parse_encryption_mode",
    "serve_socks5",
    "sync",
    "tune_allocator",
]
