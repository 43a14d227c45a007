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

Without ``hub_url``, :func:`connect` uses ``$LEAPCORE_HUB``, then the default hub (the one
``leapcore remote login`` logged in to last). Without ``token``, it uses ``$LEAPCORE_TOKEN``,
then the token ``leapcore remote login`` saved for that hub; without ``ca_file``, the CA file
saved with it (if any). Worker keys are pinned, on first use, in the
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
from typing import Any, Final, NamedTuple

from ..errors import ConfigError, KeyFileError
from ..store.atomicfile import write_atomic
from ..store.paths import client_credentials_path, client_default_hub_path, client_pins_path
from ..store.pinstore import PinStore
from .hubsession import KEEPALIVE_INTERVAL, HubSession, hub_session

__all__ = [
    "MISMATCH_HINT",
    "Credentials",
    "connect",
    "credentials_path",
    "default_hub_path",
    "default_pin_store",
    "load_credentials",
    "load_default_hub",
    "load_token",
    "resolve_hub",
    "save_credentials",
    "save_default_hub",
]

#: How a key mismatch says to clear the pin (``{hub}`` and ``{worker_id}`` are filled in).
MISMATCH_HINT: Final = (
    "clear with `leapcore remote worker pins remove --hub {hub} --worker-id={{worker_id}}`"
)


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


_DEFAULT: Final = _Default()


class Credentials(NamedTuple):
    """What ``leapcore remote login`` saved for one hub."""

    hub: str
    token: str
    #: The CA file to trust for an ``https://`` hub (an absolute path), or ``None``: the
    #: system's CAs.
    ca_file: str | None = None


def credentials_path(hub: str) -> Path:
    """Where ``leapcore remote login`` keeps the API token for ``hub``."""
    return client_credentials_path(os.environ, Path.home(), hub)


def default_hub_path() -> Path:
    """Where ``leapcore remote login`` names the default hub."""
    return client_default_hub_path(os.environ, Path.home())


def save_credentials(hub: str, token: str, *, ca_file: str | None = None) -> Path:
    """Store ``token`` (and ``ca_file``, made absolute) for ``hub``: atomically, mode 0600,
    directory 0700; it replaces what was saved for that hub. The file is
    ``{"hub", "token"}`` plus ``"ca_file"`` when one is given."""
    doc: dict[str, str] = {"hub": hub, "token": token}
    if ca_file:
        doc["ca_file"] = os.path.abspath(os.path.expanduser(ca_file))
    path = credentials_path(hub)
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"{path}: {what} file is not valid JSON") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: {what} file is not a JSON object")
    return data


def load_credentials(hub: str) -> Credentials | None:
    """What was saved for ``hub``, or ``None`` when nothing was; :class:`KeyFileError` when
    the file is unreadable or malformed."""
    path = credentials_path(hub)
    data = _read_json(path, "credentials")
    if data is None:
        return None
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise KeyFileError(f"{path}: credentials file has no token")
    ca_file = data.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise KeyFileError(f"{path}: credentials file has a bad ca_file")
    return Credentials(hub, token, ca_file)


def load_token(hub: str) -> str | None:
    """The token saved for ``hub``, or ``None`` when there is none."""
    saved = load_credentials(hub)
    return saved.token if saved is not None else None


def save_default_hub(hub: str) -> Path:
    """Make ``hub`` the default hub (atomically, mode 0600, directory 0700)."""
    path = default_hub_path()
    write_atomic(path, (json.dumps({"hub": hub}, indent=2) + "\n").encode())
    return path


def load_default_hub() -> str | None:
    """The default hub's URL, or ``None`` when none was saved."""
    path = default_hub_path()
    data = _read_json(path, "default hub")
    if data is None:
        return None
    hub = data.get("hub")
    if not isinstance(hub, str) or not hub:
        raise KeyFileError(f"{path}: default hub file names no hub")
    return hub


def resolve_hub(hub: str | None = None) -> str | None:
    """``hub`` if given, else ``$LEAPCORE_HUB``, else the default hub; ``None`` when there
    is none (empty values count as unset)."""
    return hub or os.environ.get("LEAPCORE_HUB") or load_default_hub()


def default_pin_store(hub: str) -> PinStore:
    """The per-hub TOFU store shared with the ``leapcore remote`` CLI."""
    path = client_pins_path(os.environ, Path.home(), hub)
    return PinStore(path, hint=MISMATCH_HINT.format(hub=shlex.quote(hub)))


@asynccontextmanager
async def connect(
    hub_url: str | None = None,
    *,
    token: str | None = None,
    transport: str = "websocket",
    ca_file: str | None = None,
    pins: PinStore | _Default | None = _DEFAULT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
) -> AsyncIterator[HubSession]:
    """Sign in to the hub; yields a :class:`~leapcore.peer.hubsession.HubSession` (see the module
    docstring). Raises :class:`~leapcore.errors.ConfigError` when no hub or no token is
    found. ``keepalive`` is the busy session's heartbeat interval in seconds
    (:data:`~leapcore.peer.hubsession.KEEPALIVE_INTERVAL`; ``None``: never)."""
    url = resolve_hub(hub_url)
    if not url:
        raise ConfigError(
            "no hub: pass hub_url, set LEAPCORE_HUB, or run `leapcore remote login --hub URL`"
        )
    saved = load_credentials(url)
    secret = token or os.environ.get("LEAPCORE_TOKEN") or (saved.token if saved else None)
    if not secret:
        raise ConfigError(
            f"no API token for {url}: pass token=, set LEAPCORE_TOKEN, or run "
            f"`leapcore remote login --hub {shlex.quote(url)}`"
        )
    if ca_file is None and saved is not None:
        ca_file = saved.ca_file
    store = default_pin_store(url) if isinstance(pins, _Default) else pins
    async with hub_session(
        url, secret, transport=transport, ca_file=ca_file, pins=store, keepalive=keepalive
    ) as session:
        yield session
