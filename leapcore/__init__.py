"""leapcore: reach machines behind NAT through a relay that never sees content.

The sans-IO cores (handshake, transport cipher, rekey, keys) import without
trio; the trio drivers build on them.
"""

from ._version import __version__
from .errors import LeapcoreError, LocalError, RemoteProtocolError
from .handshake import Initiator, Responder
from .keys import PublicKeyBundle, WorkerKeyPair
from .mode import EncryptionMode, parse_encryption_mode
from .transport import TransportSession

__all__ = [
    "EncryptionMode",
    "Initiator",
    "LeapcoreError",
    "LocalError",
    "PublicKeyBundle",
    "RemoteProtocolError",
    "Responder",
    "TransportSession",
    "WorkerKeyPair",
    "__version__",
    "parse_encryption_mode",
]
