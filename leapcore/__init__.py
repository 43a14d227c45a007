"""leapcore: reach machines behind NAT through a relay that never sees content.

The sans-IO cores (handshake, transport cipher, rekey, keys) import without
trio; the trio drivers build on them. The client API -- :func:`connect`, and the
:class:`Channel`, :class:`ByteStream`, :class:`Services` and :class:`Worker` drivers -- is
loaded on first use, so ``import leapcore`` alone never imports trio.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import LeapcoreError, LocalError, RemoteProtocolError
from .handshake import Initiator, Responder
from .keys import PublicKeyBundle, WorkerKeyPair
from .mode import EncryptionMode, parse_encryption_mode
from .transport import TransportSession

_LAZY = {
    "connect": "leapcore.client",
    "Channel": "leapcore.channel",
    "ByteStream": "leapcore.channel",
    "CallContext": "leapcore.channel",
    "ServiceError": "leapcore.channel",
    "Services": "leapcore.channel",
    "HubSession": "leapcore.hubclient",
    "Worker": "leapcore.workerd",
    "default_services": "leapcore.services",
}

if TYPE_CHECKING:
    from .channel import ByteStream, CallContext, Channel, ServiceError, Services
    from .client import connect
    from .hubclient import HubSession
    from .services import default_services
    from .workerd import Worker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leapcore' has no attribute {name!r}")
    import importlib

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
    "RemoteProtocolError",
    "Responder",
    "ServiceError",
    "Services",
    "TransportSession",
    "Worker",
    "WorkerKeyPair",
    "__version__",
    "connect",
    "default_services",
    "parse_encryption_mode",
]
