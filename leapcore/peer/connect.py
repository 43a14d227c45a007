"""The client's entry point: :func:`connect` to a hub, list workers, open channels.

::

    import leapcore, trio

    async def main():
        async with leapcore.connect("http://127.0.0.1:4327") as hub:
            for worker in await hub.list_workers():
                print(worker["name"], worker["online"])
            async with hub.open_channel(worker_id) as ch:
                info = await ch.call("info")

    trio.run(main)

Without ``token``, :func:`connect` uses ``$LEAPCORE_TOKEN``, then the token
``leapcore remote login`` saved for that hub. Worker keys are pinned, on first use, in the
same per-hub store the ``leapcore remote`` CLI uses (``LEAPCORE_CONFIG_DIR`` or
``~/.config/leapcore``), so a library and the CLI on one machine agree on what they trust;
pass ``pins=`` to use another store, or ``pins=None`` to skip pinning.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from ..errors import ConfigError, KeyFileError
from ..store.atomicfile import write_atomic
from ..store.paths import client_credentials_path, client_pins_path
from ..store.pinstore import PinStore
from .hubsession import KEEPALIVE_INTERVAL, HubSession, hub_session

__all__ = [
    "MISMATCH_HINT",
    "connect",
    "credentials_path",
    "default_pin_store",
    "load_token",
    "save_credentials",
]

#: How a key mismatch says to clear the pin (``{hub}`` and ``{worker_id}`` are filled in).
MISMATCH_HINT: Final = (
    "clear with `leapcore remote worker pins remove --hub {hub} --worker-id={{worker_id}}`"
)


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


_DEFAULT: Final = _Default()


def credentials_path(hub: str) -> Path:
    """Where ``leapcore remote login`` keeps the API token for ``hub``."""
    return client_credentials_path(os.environ, Path.home(), hub)


def save_credentials(hub: str, token: str) -> Path:
    """Store ``token`` for ``hub`` (atomically, mode 0600, directory 0700)."""
    path = credentials_path(hub)
    write_atomic(path, (json.dumps({"hub": hub, "token": token}, indent=2) + "\n").encode())
    return path


def load_token(hub: str) -> str | None:
    """The token saved for ``hub``, or ``None`` when there is none."""
    path = credentials_path(hub)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read credentials: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"{path}: credentials file is not valid JSON") from None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise KeyFileError(f"{path}: credentials file has no token")
    return token


def default_pin_store(hub: str) -> PinStore:
    """The per-hub TOFU store shared with the ``leapcore remote`` CLI."""
    path = client_pins_path(os.environ, Path.home(), hub)
    return PinStore(path, hint=MISMATCH_HINT.format(hub=shlex.quote(hub)))


@asynccontextmanager
async def connect(
    hub_url: str,
    *,
    token: str | None = None,
    transport: str = "websocket",
    ca_file: str | None = None,
    pins: PinStore | _Default | None = _DEFAULT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
) -> AsyncIterator[HubSession]:
    """Sign in to the hub; yields a :class:`~leapcore.peer.hubsession.HubSession` (see the module
    docstring). Raises :class:`~leapcore.errors.ConfigError` when no token is found.
    ``keepalive`` is the busy session's heartbeat interval in seconds
    (:data:`~leapcore.peer.hubsession.KEEPALIVE_INTERVAL`; ``None``: never)."""
    secret = token or os.environ.get("LEAPCORE_TOKEN") or load_token(hub_url)
    if not secret:
        raise ConfigError(
            f"no API token for {hub_url}: pass token=, set LEAPCORE_TOKEN, or run "
            f"`leapcore remote login --hub {shlex.quote(hub_url)} --token TOKEN`"
        )
    store = default_pin_store(hub_url) if isinstance(pins, _Default) else pins
    async with hub_session(
        hub_url, secret, transport=transport, ca_file=ca_file, pins=store, keepalive=keepalive
    ) as session:
        yield session
