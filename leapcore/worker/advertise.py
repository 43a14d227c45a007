"""What a worker tells its hub about itself at each ``connect``, besides its name and labels:
its capabilities (the service groups its method table serves,
:func:`leapcore.proto.capabilities.capabilities_of`), its operating system and its
machine architecture."""

from __future__ import annotations

import platform

from ..peer.channel import Services
from ..proto.capabilities import capabilities_of

__all__ = ["capabilities", "host_platform"]


def capabilities(services: Services) -> list[str]:
    """The sorted capabilities ``services`` serves now (``exec``, ``files``, ``info``, ``pty``,
    ``tcp``, ``workspace``, and the groups of any added methods; never ``ping``): a group
    the worker's policy disables whole (``services.disabled``) is left out."""
    return capabilities_of(services.served())


def host_platform() -> tuple[str | None, str | None]:
    """``(os, arch)``: ``platform.system().lower()`` and ``platform.machine()`` (``None``
    for what Python cannot tell)."""
    return platform.system().lower() or None, platform.machine() or None
