"""Where leapcore keeps its files: the one place every path rule lives.

Pure functions: the environment and the home directory are arguments.

* Client config dir: ``$LEAPCORE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/leapcore``,
  else ``~/.config/leapcore``. Per hub: ``<config dir>/<hub host>/`` holds
  ``pins.json``; the hub credentials saved by ``leapcore remote login`` are
  ``<config dir>/<hub host>.json``, and the hub it logged in to last (the default hub)
  is named in ``<config dir>/default_hub.json`` (never a hub's own file: ``_`` is not
  valid in a host name, and ``hub`` is no port).
* Hub host: the URL's host, plus ``_<port>`` when a port is given; for a
  ``unix:`` URL the whole URL with ``/``, ``\\`` and ``:`` replaced by ``_``.
* Worker: default config dir ``~/.config/leapcore/worker``, config file
  ``worker.toml`` in it; the data dir is resolved by :func:`resolve_data_dir`;
  sibling pins live in ``<data dir>/cross_worker_pins.json``, its policy in
  ``<data dir>/policy.toml`` (:func:`worker_policy_path`).
* Hub: default config dir ``~/.config/leapcore/hub``, config file ``hub.toml`` in
  it; the data dir follows the worker's rule (:func:`resolve_data_dir` with
  ``default_dir=hub_config_dir(home)``) and holds the database ``hub.db``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "CLIENT_CONFIG_ENV",
    "DEFAULT_HUB_URL",
    "client_config_dir",
    "client_credentials_path",
    "client_default_hub_path",
    "client_pins_path",
    "cross_worker_pins_path",
    "hub_config_dir",
    "hub_config_file",
    "hub_database_path",
    "hub_dir_name",
    "resolve_data_dir",
    "worker_config_dir",
    "worker_config_file",
    "worker_policy_path",
]

CLIENT_CONFIG_ENV: Final = "LEAPCORE_CONFIG_DIR"
DEFAULT_HUB_URL: Final = "http://127.0.0.1:4327"
_UNSAFE: Final = re.compile(r"[/\\:]")


def client_config_dir(env: Mapping[str, str], home: Path) -> Path:
    explicit = env.get(CLIENT_CONFIG_ENV)
    if explicit:
        return Path(explicit)
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "leapcore"
    return home / ".config" / "leapcore"


def hub_dir_name(hub_url: str) -> str:
    """The per-hub directory name for ``hub_url`` (see the module docstring)."""
    url = hub_url.strip()
    if url.startswith("unix:"):
        if url == "unix:":
            raise ConfigError(f"hub URL {hub_url!r} names no socket path")
        return _UNSAFE.sub("_", url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"hub URL {hub_url!r} must start with http://, https:// or unix:")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"hub URL {hub_url!r} is malformed: {exc}") from None
    if not host or host in (".", ".."):
        raise ConfigError(f"hub URL {hub_url!r} has no host")
    safe_host = _UNSAFE.sub("_", host)
    return f"{safe_host}_{port}" if port is not None else safe_host


def client_pins_path(env: Mapping[str, str], home: Path, hub_url: str) -> Path:
    return client_config_dir(env, home) / hub_dir_name(hub_url) / "pins.json"


def client_credentials_path(env: Mapping[str, str], home: Path, hub_url: str) -> Path:
    """Where ``leapcore remote login`` keeps the API token for ``hub_url``."""
    return client_config_dir(env, home) / f"{hub_dir_name(hub_url)}.json"


def client_default_hub_path(env: Mapping[str, str], home: Path) -> Path:
    """Where ``leapcore remote login`` names the default hub (the one logged in to last)."""
    return client_config_dir(env, home) / "default_hub.json"


def worker_config_dir(home: Path) -> Path:
    return home / ".config" / "leapcore" / "worker"


def worker_config_file(home: Path) -> Path:
    return worker_config_dir(home) / "worker.toml"


def hub_config_dir(home: Path) -> Path:
    return home / ".config" / "leapcore" / "hub"


def hub_config_file(home: Path) -> Path:
    return hub_config_dir(home) / "hub.toml"


def hub_database_path(data_dir: Path) -> Path:
    return data_dir / "hub.db"


def resolve_data_dir(
    value: str, *, config_file: Path | None, home: Path, default_dir: Path | None = None
) -> Path:
    """Resolve a worker's (or the hub's) ``data_dir`` setting.

    ``~`` and ``~/…`` expand to ``home``; an absolute path is used as it is; a
    relative one (the default is ``.``) is taken relative to the directory of the
    config file when one exists (``config_file``), else to ``default_dir`` (default:
    the worker's config directory; the hub passes :func:`hub_config_dir`).
    """
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    path = Path(value)
    if path.is_absolute():
        return path
    if config_file is not None:
        base = config_file.parent
    else:
        base = default_dir if default_dir is not None else worker_config_dir(home)
    return base / path


def cross_worker_pins_path(data_dir: Path) -> Path:
    return data_dir / "cross_worker_pins.json"


def worker_policy_path(data_dir: Path) -> Path:
    """The worker's policy file when ``--policy`` names none."""
    return data_dir / "policy.toml"
