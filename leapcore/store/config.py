"""Layered configuration: defaults < config file < environment < flags given explicitly.

A config file is TOML (read with the standard library's ``tomllib``) with
flat keys; environment variables are ``<PREFIX><KEY>`` upper-cased
(``LEAPCORE_WORKER_DATA_DIR`` → ``data_dir``); a flag overrides only when it
was passed on the command line, so a flag's default never hides the file or
the environment. Unknown keys in a file and unknown ``<PREFIX>`` variables
are errors in a file (a typo should not silently do nothing) but ignored in
the environment, where other tools share the prefix (``LEAPCORE_WORKER_ID``
is the remote CLI's default ``--worker-id``); values are checked against
each key's type. A list setting (the worker's ``services``) is a TOML array of
strings, or comma-separated in the environment (blank items dropped); like every
setting, a later layer replaces it whole. The worker's ``hub`` is a list too, stricter: a
TOML string or list, commas in the environment and in each ``--hub`` value, and an empty
element is an error (:func:`~leapcore.proto.hub_failover.split_hub_urls`); at most
:data:`~leapcore.proto.limits.MAX_HUB_URLS`, none twice.

A ``float`` setting also takes an integer (``client_idle_timeout = 300``).

A relative path setting (:data:`WORKER_PATH_KEYS`, :data:`HUB_PATH_KEYS`) is taken
relative to where it was written: given as a flag or in the environment, to the current
directory; in a config file, to that file's directory.

The worker's settings (:data:`WORKER_KEYS`, :func:`worker_settings`, prefix
``LEAPCORE_WORKER_``) and the hub's (:data:`HUB_KEYS`, :func:`hub_settings`,
prefix ``LEAPCORE_HUB_``) follow the same rules; the hub's values are also
range-checked, naming the layer a bad value came from. The hub's budgets
(:class:`~leapcore.proto.limits.HubLimits`: idle time, links, channels, queue bytes,
registration keys, check intervals) are hub settings of the same names, checked against
:data:`~leapcore.proto.limits.LIMIT_RANGES`. Every default and range is
:mod:`leapcore.proto.limits`'; ``max_message_size`` (hub and worker) is checked by
:func:`~leapcore.proto.limits.max_message_size_problem`, the one check of that range.

Sans-IO except :func:`read_config_file`: the environment is passed in.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from ..errors import ConfigError
from ..proto.capabilities import parse_concurrency
from ..proto.hub_failover import hub_urls_problem, split_hub_urls
from ..proto.limits import (
    AUDIT_LOG_MAX_BYTES,
    AUDIT_LOG_MAX_BYTES_RANGE,
    AUDIT_LOG_RETENTION_DAYS,
    CLUSTER_LEASE,
    CLUSTER_LEASE_RANGE,
    CLUSTER_RENEW_INTERVAL,
    CLUSTER_RENEW_RANGE,
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_WORKERS_PER_USER,
    LIMIT_RANGES,
    MAX_CHANNELS,
    HubLimits,
    check_limit,
    max_message_size_problem,
)
from ..proto.tunnel_policy import parse_rule
from .sqldb import DEFAULT_POOL_SIZE, MAX_POOL_SIZE

__all__ = [
    "HUB_ENV_PREFIX",
    "HUB_KEYS",
    "HUB_PATH_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "WORKER_ENV_PREFIX",
    "WORKER_KEYS",
    "WORKER_PATH_KEYS",
    "hub_settings",
    "hub_store_location",
    "layer",
    "parse_pairs",
    "read_config_file",
    "worker_settings",
]

WORKER_ENV_PREFIX: Final = "LEAPCORE_WORKER_"

#: Worker settings: key -> (type, default). A file may set any of them.
WORKER_KEYS: Final[dict[str, tuple[type, Any]]] = {
    # No default hub: an unregistered worker must be told; a registered one uses hub.json's.
    # Several URLs (one deployment's hubs): a TOML list, or commas in any text value.
    "hub": (list, []),
    "registration_key": (str, ""),
    "name": (str, ""),
    "data_dir": (str, "."),
    "encryption_mode": (str, "post-quantum"),
    "labels": (str, ""),
    "transport": (str, "websocket"),
    "ca_file": (str, ""),
    "log_level": (str, "info"),
    "log_format": (str, "text"),
    "max_message_size": (int, DEFAULT_MAX_MESSAGE_SIZE),
    "max_incomplete_chunked": (int, DEFAULT_MAX_INCOMPLETE),
    # Channels open on the worker's link at once; bytes held per channel (0: twice
    # max_message_size). See leapcore.worker.channels.
    "max_channels": (int, MAX_CHANNELS),
    "max_channel_bytes": (int, 0),
    # MODULE:CALLABLE installers of extra channel methods (TOML list; comma-separated in the
    # environment).
    "services": (list, []),
    # Destination rules of the tcp tunnel service, HOST_OR_CIDR[:PORTS] each (TOML lists;
    # comma-separated in the environment). Deny wins; no allow rule: every destination.
    "tunnel_allow": (list, []),
    "tunnel_deny": (list, []),
    # Where the workspace service keeps its clones and worktrees ("": data_dir/workspaces).
    "workspace_root": (str, ""),
    # The policy file ("": data_dir/policy.toml when it exists; a named one must exist).
    "policy": (str, ""),
    # Calls in progress at once per capability ({exec = 8, pty = 4}; a TOML table, or
    # exec=8,pty=4 in the environment); a capability not named has no limit.
    "concurrency": (dict, {}),
    # The audit log of every call ("": data_dir/audit.log; "off": none), rotated at
    # audit_max_bytes, rotated files kept audit_retention_days.
    "audit_log": (str, ""),
    "audit_max_bytes": (int, AUDIT_LOG_MAX_BYTES),
    "audit_retention_days": (int, AUDIT_LOG_RETENTION_DAYS),
    # HOST:PORT of the worker's own /metrics and /healthz ("": off). Loopback only unless
    # --metrics-allow-remote (leapcore.worker.metrics).
    "metrics_listen": (str, ""),
}

HUB_ENV_PREFIX: Final = "LEAPCORE_HUB_"

#: Hub settings: key -> (type, default). A file may set any of them.
HUB_KEYS: Final[dict[str, tuple[type, Any]]] = {
    "listen": (str, "127.0.0.1:4327"),
    "listen_unix": (str, ""),
    "data_dir": (str, "."),
    "tls_cert": (str, ""),
    "tls_key": (str, ""),
    # The web page (leapcore.hub.web): HOST:PORT to serve it on ("" = off), and the hub URL
    # its "Register worker" command names ("" = the listen address's URL).
    "web_listen": (str, ""),
    "public_url": (str, ""),
    # Several hubs on one database (leapcore.hub.cluster): the hub-to-hub listener
    # (HOST:PORT, "" = none), the address other hubs dial ("" = the listen address), the
    # 0600 file holding the shared cluster secret, and a stable node id ("" = random).
    "cluster_listen": (str, ""),
    "cluster_advertise": (str, ""),
    "cluster_secret_file": (str, ""),
    "node_name": (str, ""),
    # Seconds a hub's lease (and its workers' presence) lasts, and between its renewals.
    "cluster_lease": (float, CLUSTER_LEASE),
    "cluster_renew_interval": (float, CLUSTER_RENEW_INTERVAL),
    "max_workers_per_user": (int, DEFAULT_MAX_WORKERS_PER_USER),
    "max_message_size": (int, DEFAULT_MAX_MESSAGE_SIZE),
    # Where the hub's state is (hub_store_location): "" = data_dir/hub.db (SQLite); an SQLite
    # file's path; or a postgresql:// URL, with at most store_pool_size connections.
    "store": (str, ""),
    "store_pool_size": (int, DEFAULT_POOL_SIZE),
    "log_level": (str, "info"),
    "log_format": (str, "text"),
    # The budgets of leapcore.proto.limits.HubLimits, under the same names.
    **{
        name: (kind, attrs.fields_dict(HubLimits)[name].default)
        for name, (kind, _low, _high) in LIMIT_RANGES.items()
    },
}

#: List settings that may also be written as text, several items separated by commas, none
#: empty (the worker's ``hub``: a string in the file, the environment, each ``--hub``).
_TEXT_LISTS: Final = frozenset({"hub"})

#: Worker settings that name a file or directory (see :func:`_resolve_paths`).
WORKER_PATH_KEYS: Final = ("data_dir", "ca_file", "workspace_root", "policy", "audit_log")
#: Hub settings that name a file, directory or socket (see :func:`_resolve_paths`).
HUB_PATH_KEYS: Final = ("data_dir", "tls_cert", "tls_key", "listen_unix", "cluster_secret_file")


LOG_LEVELS: Final = ("debug", "info", "warn", "error")
#: ``log_format``: ``TIME LEVEL LOGGER: MESSAGE`` lines, or one JSON object per line.
LOG_FORMATS: Final = ("text", "json")

#: A value's problem: None when it is acceptable, else what is required ("must be ...").
_Check = Callable[[Any], str | None]


def _workers_per_user(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0 (0 = unlimited)"


def _log_level(value: str) -> str | None:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _log_format(value: str) -> str | None:
    return None if value in LOG_FORMATS else f"must be one of {', '.join(LOG_FORMATS)}"


def _tunnel_rules(value: list[str]) -> str | None:
    for rule in value:
        try:
            parse_rule(rule)
        except ConfigError as exc:
            return f"has a bad rule ({exc})"
    return None


def _concurrency(value: dict[str, int]) -> str | None:
    try:
        parse_concurrency(value)
    except ConfigError as exc:
        return f"is wrong: {exc}"
    return None


def _hub_urls(value: list[str]) -> str | None:
    return hub_urls_problem(value)


def _range(low: float, high: float) -> _Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be {low} .. {high}, got {value}"

    return check


#: Worker values checked beyond their type.
_WORKER_CHECKS: Final[dict[str, _Check]] = {
    "audit_max_bytes": _range(*AUDIT_LOG_MAX_BYTES_RANGE),
    "audit_retention_days": _range(1, 36500),
    "concurrency": _concurrency,
    "hub": _hub_urls,
    "max_message_size": max_message_size_problem,
    "log_format": _log_format,
    "tunnel_allow": _tunnel_rules,
    "tunnel_deny": _tunnel_rules,
}

#: Hub values checked beyond their type.
_HUB_CHECKS: Final[dict[str, _Check]] = {
    "max_workers_per_user": _workers_per_user,
    "max_message_size": max_message_size_problem,
    "store_pool_size": _range(1, MAX_POOL_SIZE),
    "log_level": _log_level,
    "log_format": _log_format,
    "cluster_lease": _range(*CLUSTER_LEASE_RANGE),
    "cluster_renew_interval": _range(*CLUSTER_RENEW_RANGE),
    **{name: functools.partial(check_limit, name) for name in LIMIT_RANGES},
}


def read_config_file(path: Path, keys: Mapping[str, tuple[type, Any]]) -> dict[str, Any] | None:
    """The settings in ``path``, or ``None`` when it does not exist. Bad files raise
    :class:`ConfigError` naming the path and the problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key, value in data.items():
        checked = _check(key, value, keys, where=str(path))
        if key in _TEXT_LISTS:
            data[key] = checked
    return data


def _check(key: str, value: Any, keys: Mapping[str, tuple[type, Any]], *, where: str) -> Any:
    spec = keys.get(key)
    if spec is None:
        raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(keys))})")
    kind = spec[0]
    if kind is float and type(value) is int:
        value = float(value)
    if kind is list and key in _TEXT_LISTS and type(value) in (str, list):
        if not all(type(item) is str for item in value):
            raise ConfigError(f"{where}: setting {key!r} must be a string or a list of strings")
        value = split_hub_urls(value, where=f"{where}: setting {key!r}")
    if type(value) is not kind:
        raise ConfigError(
            f"{where}: setting {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    if isinstance(value, dict):
        for name, item in value.items():
            if type(item) is not int:
                raise ConfigError(
                    f"{where}: setting {key!r} must map names to integers, got "
                    f"{name} = {type(item).__name__}"
                )
    if isinstance(value, list):
        for item in value:
            if type(item) is not str:
                raise ConfigError(
                    f"{where}: setting {key!r} must be a list of strings, got an item of type "
                    f"{type(item).__name__}"
                )
    return value


def _from_env(
    env: Mapping[str, str], prefix: str, keys: Mapping[str, tuple[type, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].lower()
        if key not in keys:
            continue  # another tool's variable (e.g. LEAPCORE_WORKER_ID): not ours to judge
        kind = keys[key][0]
        if kind is int:
            try:
                out[key] = int(text.strip())
            except ValueError:
                raise ConfigError(f"environment: {name} must be an integer, got {text!r}") from None
        elif kind is float:
            try:
                out[key] = float(text.strip())
            except ValueError:
                raise ConfigError(f"environment: {name} must be a number, got {text!r}") from None
            if not math.isfinite(out[key]):
                raise ConfigError(f"environment: {name} must be a finite number, got {text!r}")
        elif kind is list and key in _TEXT_LISTS:
            out[key] = split_hub_urls(text, where=f"environment: {name}")
        elif kind is list:
            out[key] = [item.strip() for item in text.split(",") if item.strip()]
        elif kind is dict:
            out[key] = parse_pairs(name, text)
        else:
            out[key] = text
    return out


def parse_pairs(name: str, text: str) -> dict[str, int]:
    """``exec=8,pty=4`` (a mapping setting in the environment or a flag) as a dict."""
    out: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, number = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = int(number.strip())
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not NAME=INTEGER") from None
    return out


def _copy(default: Any) -> Any:
    """A default as a settings value (a list or dict default is copied, never shared)."""
    if isinstance(default, list | dict):
        return type(default)(default)
    return default


def layer(
    keys: Mapping[str, tuple[type, Any]],
    *,
    file_values: Mapping[str, Any] | None,
    env: Mapping[str, str],
    prefix: str,
    flags: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge the layers; ``flags`` holds only the flags that were passed explicitly."""
    settings = {key: _copy(default) for key, (_kind, default) in keys.items()}
    settings.update(file_values or {})
    settings.update(_from_env(env, prefix, keys))
    for key, value in flags.items():
        settings[key] = _check(key, value, keys, where="flag")
    return settings


def _read_named_file(
    config_path: Path | None, default_path: Path, keys: Mapping[str, tuple[type, Any]]
) -> tuple[dict[str, Any] | None, Path | None]:
    """``--config`` (which must exist) or the default file (read only if it exists)."""
    path = config_path.absolute() if config_path is not None else default_path
    file_values = read_config_file(path, keys)
    if file_values is None and config_path is not None:
        raise ConfigError(f"{config_path}: no such config file")
    return file_values, (path if file_values is not None else None)


def _check_values(
    values: Mapping[str, Any], checks: Mapping[str, _Check], where: Callable[[str], str]
) -> None:
    for key, value in values.items():
        check = checks.get(key)
        problem = None if check is None else check(value)
        if problem is not None:
            raise ConfigError(f"{where(key)}: setting {key!r} {problem}, got {value!r}")


def _checked_layers(
    keys: Mapping[str, tuple[type, Any]],
    checks: Mapping[str, _Check],
    *,
    file_values: Mapping[str, Any] | None,
    used: Path | None,
    env: Mapping[str, str],
    prefix: str,
    flags: Mapping[str, Any],
) -> dict[str, Any]:
    """:func:`layer`, with each layer's values range-checked, the error naming the layer."""
    if file_values is not None:
        _check_values(file_values, checks, lambda _key: str(used))
    _check_values(
        _from_env(env, prefix, keys), checks, lambda key: f"environment: {prefix}{key.upper()}"
    )
    settings = layer(keys, file_values=file_values, env=env, prefix=prefix, flags=flags)
    _check_values(flags, checks, lambda key: f"flag --{key.replace('_', '-')}")
    return settings


def _resolve_paths(
    settings: dict[str, Any],
    path_keys: tuple[str, ...],
    *,
    file_values: Mapping[str, Any] | None,
    used: Path | None,
    env_values: Mapping[str, Any],
    flags: Mapping[str, Any],
    home: Path,
    cwd: Path | None,
    default_dir: Path,
) -> None:
    """Resolve the path settings in place, each by the layer its value came from.

    ``data_dir`` always becomes absolute: a value from a flag or the environment is taken
    relative to the current directory (``cwd``, default :meth:`Path.cwd`), one from the
    config file relative to the file's directory, and the default ``.`` is the config
    file's directory, else ``default_dir``. The other path settings (empty: unset) are
    resolved only when they come from the config file; a flag's or the environment's value
    is left as given, which the operating system already takes relative to the current
    directory. ``~`` and ``~/…`` in a config file's value are ``home``.
    """
    from .paths import resolve_data_dir

    for key in path_keys:
        value = settings[key]
        if key in flags or key in env_values:
            if key == "data_dir":
                base = cwd if cwd is not None else Path.cwd()
                resolved = resolve_data_dir(value, config_file=None, home=home, default_dir=base)
                settings[key] = str(resolved)
        elif file_values is not None and key in file_values:
            if value and value != "off":  # "off": the audit log's way of saying none
                settings[key] = str(resolve_data_dir(value, config_file=used, home=home))
        elif key == "data_dir":
            resolved = resolve_data_dir(value, config_file=used, home=home, default_dir=default_dir)
            settings[key] = str(resolved)


def worker_settings(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    home: Path,
    config_path: Path | None,
    cwd: Path | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """The worker's settings and the config file they came from (``None``: no file).

    ``config_path`` is ``--config`` when given (it must then exist); otherwise the
    default ``~/.config/leapcore/worker/worker.toml`` is read if it exists. The
    returned ``data_dir`` is absolute: a relative one given as a flag or in the
    environment is relative to ``cwd`` (default: the current directory), one in the
    config file relative to the file's directory; the default ``.`` is the config file's
    directory, else ``~/.config/leapcore/worker`` (``paths.resolve_data_dir``). A
    relative ``ca_file`` in the config file is relative to the file's directory too.
    ``max_message_size`` is range-checked (65519 … 64 MiB), the :class:`ConfigError`
    naming the file, the environment variable or the flag.
    """
    from .paths import worker_config_dir, worker_config_file

    file_values, used = _read_named_file(config_path, worker_config_file(home), WORKER_KEYS)
    settings = _checked_layers(
        WORKER_KEYS,
        _WORKER_CHECKS,
        file_values=file_values,
        used=used,
        env=env,
        prefix=WORKER_ENV_PREFIX,
        flags=flags,
    )
    _resolve_paths(
        settings,
        WORKER_PATH_KEYS,
        file_values=file_values,
        used=used,
        env_values=_from_env(env, WORKER_ENV_PREFIX, WORKER_KEYS),
        flags=flags,
        home=home,
        cwd=cwd,
        default_dir=worker_config_dir(home),
    )
    return settings, used


def hub_settings(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    home: Path,
    config_path: Path | None,
    cwd: Path | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """The hub's settings and the config file they came from (``None``: no file).

    Exactly :func:`worker_settings`' rules with :data:`HUB_KEYS`, the prefix
    ``LEAPCORE_HUB_`` and the default file ``~/.config/leapcore/hub/hub.toml``; the
    default ``data_dir`` is the config file's directory, else ``~/.config/leapcore/hub``,
    and relative ``tls_cert``, ``tls_key`` and ``listen_unix`` values in the config file
    are relative to the file's directory. Values are also range-checked (``max_workers_per_user``
    >= 0, ``max_message_size`` within 65519 … 64 MiB, ``log_level`` one of
    :data:`LOG_LEVELS`, ``log_format`` one of :data:`LOG_FORMATS`, the budgets within
    :data:`~leapcore.proto.limits.LIMIT_RANGES`,
    ``tls_cert`` and ``tls_key`` together);
    the :class:`ConfigError` names the file, the environment variable or the flag.
    """
    from .paths import hub_config_dir, hub_config_file

    file_values, used = _read_named_file(config_path, hub_config_file(home), HUB_KEYS)
    settings = _checked_layers(
        HUB_KEYS,
        _HUB_CHECKS,
        file_values=file_values,
        used=used,
        env=env,
        prefix=HUB_ENV_PREFIX,
        flags=flags,
    )
    if bool(settings["tls_cert"]) != bool(settings["tls_key"]):
        raise ConfigError("settings 'tls_cert' and 'tls_key' must be given together")
    _resolve_paths(
        settings,
        HUB_PATH_KEYS,
        file_values=file_values,
        used=used,
        env_values=_from_env(env, HUB_ENV_PREFIX, HUB_KEYS),
        flags=flags,
        home=home,
        cwd=cwd,
        default_dir=hub_config_dir(home),
    )
    return settings, used


def hub_store_location(settings: Mapping[str, Any]) -> str | Path:
    """Where :func:`hub_settings`' hub keeps its state: the ``store`` setting's
    ``postgresql://`` (or ``postgres://``) URL as it is; an SQLite file's path (a relative one
    is taken in ``data_dir``); with no ``store``, ``data_dir``/``hub.db``."""
    from .paths import hub_database_path

    value = str(settings.get("store") or "")
    data_dir = Path(settings["data_dir"])
    if not value:
        return hub_database_path(data_dir)
    if value.startswith(("postgresql://", "postgres://")):
        return value
    return data_dir / Path(value).expanduser()
