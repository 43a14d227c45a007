"""The hub's settings (``leapcore.store.config.hub_settings``) and paths: pure functions, given an
environment dict and a home directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.helpers import expect

from leapcore.errors import ConfigError
from leapcore.hub.server import Hub
from leapcore.proto.limits import HubLimits
from leapcore.store.config import HUB_KEYS, hub_settings
from leapcore.store.paths import (
    hub_config_dir,
    hub_config_file,
    hub_database_path,
    resolve_data_dir,
)

HOME = Path("/home/ada")


def test_hub_locations() -> None:
    assert hub_config_dir(HOME) == HOME / ".config/leapcore/hub"
    assert hub_config_file(HOME) == HOME / ".config/leapcore/hub/hub.toml"
    assert hub_database_path(Path("/srv/hub")) == Path("/srv/hub/hub.db")


@pytest.mark.parametrize(
    ("value", "config_file", "expected"),
    [
        (".", None, HOME / ".config/leapcore/hub"),
        ("state", None, HOME / ".config/leapcore/hub/state"),
        ("state", Path("/etc/lc/hub.toml"), Path("/etc/lc/state")),
        ("/srv/hub", None, Path("/srv/hub")),
        ("~/hub", None, HOME / "hub"),
    ],
)
def test_resolve_data_dir_with_the_hub_default(
    value: str, config_file: Path | None, expected: Path
) -> None:
    resolved = resolve_data_dir(
        value, config_file=config_file, home=HOME, default_dir=hub_config_dir(HOME)
    )
    assert resolved == expected
    # Without default_dir the worker's directory stays the default.
    if config_file is None and not value.startswith(("/", "~")):
        assert resolve_data_dir(value, config_file=None, home=HOME) == (
            HOME / ".config/leapcore/worker" / value
        )


def test_hub_keys_and_defaults(tmp_path: Path) -> None:
    assert {k: v for k, (_t, v) in HUB_KEYS.items()} == {
        "listen": "127.0.0.1:4327",
        "listen_unix": "",
        "data_dir": ".",
        "tls_cert": "",
        "tls_key": "",
        "web_listen": "",
        "public_url": "",
        "cluster_listen": "",
        "cluster_advertise": "",
        "cluster_secret_file": "",
        "node_name": "",
        "cluster_lease": 15.0,
        "cluster_renew_interval": 5.0,
        "max_workers_per_user": 64,
        "max_message_size": 16777216,
        "store": "",
        "store_pool_size": 8,
        "log_level": "info",
        "log_format": "text",
        "signin_timeout": 10.0,
        "client_idle_timeout": 600.0,
        "max_links_per_user": 32,
        "max_links_per_address": 256,
        "max_channels_per_link": 256,
        "max_channels_per_user": 1024,
        "max_channels_per_worker": 256,
        "max_pending_opens_per_worker": 64,
        "max_link_queue_bytes": 4194304,
        "max_live_registration_keys": 16,
        "registration_key_retention": 86400.0,
        "purge_interval": 3600.0,
        "audit_retention_days": 365,
        "worker_token_lifetime_days": 90,
        "api_token_lifetime_days": 90,
        "token_rotation_window_days": 7,
        "revocation_check_interval": 0.5,
        "deregister_grace": 10.0,
        "handshake_timeout": 10.0,
        "max_connections_per_address": 128,
        "max_header_list_size": 16384,
        "max_concurrent_streams": 100,
        "max_pending_output": 1048576,
        "max_control_frames": 100,
        "max_pending_connections": 512,
    }
    settings, used = hub_settings(flags={}, env={}, home=tmp_path, config_path=None)
    assert used is None
    assert settings["data_dir"] == str(tmp_path / ".config/leapcore/hub")
    assert {k: v for k, v in settings.items() if k != "data_dir"} == {
        k: v for k, (_t, v) in HUB_KEYS.items() if k != "data_dir"
    }


def test_hub_settings_precedence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    default_file = hub_config_file(home)
    default_file.parent.mkdir(parents=True)
    default_file.write_text('data_dir = "default-file"\nmax_workers_per_user = 3\n')
    settings, used = hub_settings(flags={}, env={}, home=home, config_path=None)
    assert used == default_file
    assert settings["data_dir"] == str(default_file.parent / "default-file")
    assert settings["max_workers_per_user"] == 3

    config = tmp_path / "etc" / "hub.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "from-file"\nlog_level = "debug"\n')
    settings, used = hub_settings(flags={}, env={}, home=home, config_path=config)
    assert used == config  # --config replaces the default file, it does not add to it
    assert settings["data_dir"] == str(config.parent / "from-file")
    assert settings["max_workers_per_user"] == 64
    assert settings["log_level"] == "debug"

    env = {
        "LEAPCORE_HUB_DATA_DIR": "/from/env",
        "LEAPCORE_HUB_MAX_WORKERS_PER_USER": "0",
        "LEAPCORE_HUB": "https://not.a.setting",  # the remote CLI's hub URL
        "LEAPCORE_WORKER_DATA_DIR": "/not/ours",
    }
    settings, _ = hub_settings(flags={}, env=env, home=home, config_path=config)
    assert (settings["data_dir"], settings["max_workers_per_user"]) == ("/from/env", 0)
    assert settings["log_level"] == "debug"
    settings, _ = hub_settings(
        flags={"data_dir": "/from/flag"}, env=env, home=home, config_path=config
    )
    assert settings["data_dir"] == "/from/flag"
    settings, _ = hub_settings(
        flags={"data_dir": "rel"}, env=env, home=home, config_path=config, cwd=tmp_path
    )
    assert settings["data_dir"] == str(tmp_path / "rel")  # a flag's: the current directory's


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    expect(
        ConfigError,
        f"^{re.escape(str(missing))}: no such config file$",
        hub_settings,
        flags={},
        env={},
        home=tmp_path,
        config_path=missing,
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "colour = 'red'\n",
            "unknown setting 'colour' (known: api_token_lifetime_days, audit_retention_days, "
            "client_idle_timeout, cluster_advertise, cluster_lease, cluster_listen, "
            "cluster_renew_interval, cluster_secret_file, "
            "data_dir, deregister_grace, handshake_timeout, listen, ",
        ),
        ("max_workers_per_user = '3'\n", "setting 'max_workers_per_user' must be int, got str"),
        ("max_workers_per_user = -1\n", "setting 'max_workers_per_user' must be >= 0"),
        (
            "max_message_size = 65518\n",
            "setting 'max_message_size' must be an integer in 65519..67108864, got 65518",
        ),
        (
            "max_message_size = 67108865\n",
            "setting 'max_message_size' must be an integer in 65519..67108864, got 67108865",
        ),
        ("log_level = 'loud'\n", "setting 'log_level' must be one of debug, info, warn, error"),
        ("data_dir = \n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, problem: str) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(content)
    expect(
        ConfigError,
        f"^{re.escape(f'{config}: {problem}')}",
        hub_settings,
        flags={},
        env={},
        home=tmp_path,
        config_path=config,
    )


def test_bad_values_elsewhere_name_their_source(tmp_path: Path) -> None:
    def settings(**kw: object) -> object:
        return hub_settings(home=tmp_path, config_path=None, **kw)  # type: ignore[arg-type]

    expect(
        ConfigError,
        r"^environment: LEAPCORE_HUB_MAX_WORKERS_PER_USER must be an integer, got 'lots'$",
        settings,
        flags={},
        env={"LEAPCORE_HUB_MAX_WORKERS_PER_USER": "lots"},
    )
    expect(
        ConfigError,
        r"^environment: LEAPCORE_HUB_LOG_LEVEL: setting 'log_level' must be one of debug, info, "
        r"warn, error, got 'LOUD'$",
        settings,
        flags={},
        env={"LEAPCORE_HUB_LOG_LEVEL": "LOUD"},
    )
    expect(
        ConfigError,
        r"^flag --max-workers-per-user: setting 'max_workers_per_user' must be >= 0 "
        r"\(0 = unlimited\), got -2$",
        settings,
        flags={"max_workers_per_user": -2},
        env={},
    )
    expect(
        ConfigError,
        r"^settings 'tls_cert' and 'tls_key' must be given together$",
        settings,
        flags={},
        env={"LEAPCORE_HUB_TLS_CERT": "/etc/hub.pem"},
    )
    ok, _ = hub_settings(
        flags={},
        env={"LEAPCORE_HUB_TLS_CERT": "/etc/hub.pem", "LEAPCORE_HUB_TLS_KEY": "/etc/hub.key"},
        home=tmp_path,
        config_path=None,
    )
    assert (ok["tls_cert"], ok["tls_key"]) == ("/etc/hub.pem", "/etc/hub.key")


def test_listener_budgets_are_hub_settings_that_reach_the_listener(tmp_path: Path) -> None:
    """The listener's budgets are set like the hub's own: in hub.toml, and the Hub hands
    them to its LinkServer."""
    config = tmp_path / "hub.toml"
    config.write_text("handshake_timeout = 3\nmax_connections_per_address = 7\n")
    settings, used = hub_settings(flags={}, env={}, home=tmp_path, config_path=config)
    assert used == config
    limits = HubLimits.from_settings(settings)
    hub = Hub(tmp_path / "hub.db", limits=limits)
    try:
        assert hub.server.limits.handshake_timeout == 3
        assert hub.server.limits.max_connections_per_address == 7
    finally:
        hub.store.close()
    with pytest.raises(ConfigError, match="max_pending_output"):
        hub_settings(
            flags={},
            env={"LEAPCORE_HUB_MAX_PENDING_OUTPUT": "1000"},
            home=tmp_path,
            config_path=None,
        )
