"""Where files live (``leapcore.store.paths``) and how settings are layered
(``leapcore.store.config``):
pure functions, given an environment dict and a home directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from support.helpers import expect
from support.procs import script

from leapcore.errors import ConfigError
from leapcore.proto.limits import (
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_CHANNELS,
    MAX_MAX_MESSAGE_SIZE,
    MIN_MAX_MESSAGE_SIZE,
    validate_max_message_size,
)
from leapcore.store.config import (
    WORKER_KEYS,
    hub_settings,
    hub_store_location,
    layer,
    read_config_file,
    worker_settings,
)
from leapcore.store.paths import (
    client_config_dir,
    client_pins_path,
    cross_worker_pins_path,
    hub_dir_name,
    resolve_data_dir,
    worker_config_dir,
    worker_config_file,
)
from leapcore.store.sqldb import DEFAULT_POOL_SIZE, MAX_POOL_SIZE

HOME = Path("/home/ada")

# -- client config dir and per-hub directory --------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, HOME / ".config/leapcore"),
        ({"XDG_CONFIG_HOME": "/xdg"}, Path("/xdg/leapcore")),
        ({"XDG_CONFIG_HOME": ""}, HOME / ".config/leapcore"),
        ({"LEAPCORE_CONFIG_DIR": "/etc/lc", "XDG_CONFIG_HOME": "/xdg"}, Path("/etc/lc")),
        ({"LEAPCORE_CONFIG_DIR": "rel/dir"}, Path("rel/dir")),  # verbatim, even relative
        ({"LEAPCORE_CONFIG_DIR": "", "XDG_CONFIG_HOME": "/xdg"}, Path("/xdg/leapcore")),
    ],
)
def test_client_config_dir_precedence(env: dict[str, str], expected: Path) -> None:
    assert client_config_dir(env, HOME) == expected


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://127.0.0.1:4327", "127.0.0.1_4327"),
        ("https://hub.example.com", "hub.example.com"),
        ("https://hub.example.com:8443/some/path?x=1", "hub.example.com_8443"),
        ("https://Hub.Example.COM", "hub.example.com"),
        ("HTTPS://hub.example.com", "hub.example.com"),
        ("https://user:secret@hub.example.com:443", "hub.example.com_443"),
        ("http://h:/", "h"),  # an empty port is no port
        ("http://[::1]:8443", "__1_8443"),
        ("  https://hub.example.com  ", "hub.example.com"),
        ("unix:/run/leapcore/hub.sock", "unix__run_leapcore_hub.sock"),
        ("unix:relative.sock", "unix_relative.sock"),
        ("unix:C:\\pipes\\hub", "unix_C__pipes_hub"),
    ],
)
def test_hub_dir_name(url: str, name: str) -> None:
    assert hub_dir_name(url) == name
    assert "/" not in name and name not in (".", "..")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http:///no-host", "hub URL 'http:///no-host' has no host"),
        ("http://:8080", "hub URL 'http://:8080' has no host"),
        ("https://", "hub URL 'https://' has no host"),
        # "." and ".." would put pins.json beside or above the per-hub directories
        ("http://../", "hub URL 'http://../' has no host"),
        ("http://.:80", "hub URL 'http://.:80' has no host"),
        ("unix:", "hub URL 'unix:' names no socket path"),
        ("hub.example.com", "hub URL 'hub.example.com' must start with http://, https:// or unix:"),
        ("ftp://hub", "hub URL 'ftp://hub' must start with http://, https:// or unix:"),
        ("", "hub URL '' must start with http://, https:// or unix:"),
        (
            "http://h:99999",
            "hub URL 'http://h:99999' is malformed: Port out of range 0-65535",
        ),
        (
            "http://h:port",
            "hub URL 'http://h:port' is malformed: Port could not be cast to integer value as "
            "'port'",
        ),
    ],
)
def test_hub_dir_name_refuses_unusable_urls(url: str, message: str) -> None:
    expect(ConfigError, f"^{re.escape(message)}$", hub_dir_name, url)


def test_client_pins_path() -> None:
    env = {"LEAPCORE_CONFIG_DIR": "/cfg"}
    assert client_pins_path(env, HOME, "https://hub.example.com:8443") == Path(
        "/cfg/hub.example.com_8443/pins.json"
    )
    assert client_pins_path({}, HOME, "unix:/run/hub.sock") == (
        HOME / ".config/leapcore/unix__run_hub.sock/pins.json"
    )
    expect(ConfigError, "has no host", client_pins_path, env, HOME, "http:///x")


# -- worker paths ------------------------------------------------------------------------------


def test_worker_config_locations() -> None:
    assert worker_config_dir(HOME) == HOME / ".config/leapcore/worker"
    assert worker_config_file(HOME) == HOME / ".config/leapcore/worker/worker.toml"
    assert cross_worker_pins_path(Path("/srv/w")) == Path("/srv/w/cross_worker_pins.json")


@pytest.mark.parametrize(
    ("value", "config_file", "expected"),
    [
        (".", None, HOME / ".config/leapcore/worker"),
        ("data", None, HOME / ".config/leapcore/worker/data"),
        (".", Path("/etc/lc/worker.toml"), Path("/etc/lc")),
        ("data", Path("/etc/lc/worker.toml"), Path("/etc/lc/data")),
        ("../shared", Path("/etc/lc/worker.toml"), Path("/etc/lc/../shared")),
        ("/srv/worker", Path("/etc/lc/worker.toml"), Path("/srv/worker")),
        ("/srv/worker", None, Path("/srv/worker")),
        ("~", Path("/etc/lc/worker.toml"), HOME),
        ("~/w", Path("/etc/lc/worker.toml"), HOME / "w"),
        ("~bob/w", None, HOME / ".config/leapcore/worker/~bob/w"),  # no ~user expansion
    ],
)
def test_resolve_data_dir(value: str, config_file: Path | None, expected: Path) -> None:
    assert resolve_data_dir(value, config_file=config_file, home=HOME) == expected


# -- layering ------------------------------------------------------------------------------------

KEYS: dict[str, tuple[type, object]] = {"name": (str, "dflt"), "size": (int, 4), "hub": (str, "")}


def test_layers_later_wins() -> None:
    merged = layer(KEYS, file_values=None, env={}, prefix="T_", flags={})
    assert merged == {"name": "dflt", "size": 4, "hub": ""}
    merged = layer(KEYS, file_values={"name": "file", "size": 5}, env={}, prefix="T_", flags={})
    assert merged == {"name": "file", "size": 5, "hub": ""}
    env = {"T_NAME": "env", "T_SIZE": " 6 ", "OTHER": "x", "t_hub": "lowercase is not ours"}
    merged = layer(KEYS, file_values={"name": "file", "size": 5}, env=env, prefix="T_", flags={})
    assert merged == {"name": "env", "size": 6, "hub": ""}
    merged = layer(
        KEYS, file_values={"name": "file"}, env={"T_NAME": "env"}, prefix="T_", flags={"name": ""}
    )
    assert merged["name"] == ""  # an explicitly passed flag wins even when empty


def test_environment_variables_of_other_tools_are_ignored() -> None:
    # LEAPCORE_WORKER_ID is the remote CLI's --worker-id default, not a worker setting.
    env = {"LEAPCORE_WORKER_ID": "w1", "LEAPCORE_WORKER_DATA_DIR": "/srv/w"}
    merged = layer(WORKER_KEYS, file_values=None, env=env, prefix="LEAPCORE_WORKER_", flags={})
    assert merged["data_dir"] == "/srv/w"
    assert "id" not in merged


def test_environment_integers_are_checked() -> None:
    expect(
        ConfigError,
        r"^environment: T_SIZE must be an integer, got 'big'$",
        layer,
        KEYS,
        file_values=None,
        env={"T_SIZE": "big"},
        prefix="T_",
        flags={},
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"size": "7"}, "flag: setting 'size' must be int, got str"),
        ({"size": True}, "flag: setting 'size' must be int, got bool"),
        ({"colour": "red"}, "flag: unknown setting 'colour' (known: hub, name, size)"),
    ],
)
def test_flags_are_checked(flags: dict[str, object], message: str) -> None:
    expect(
        ConfigError,
        f"^{re.escape(message)}$",
        layer,
        KEYS,
        file_values=None,
        env={},
        prefix="T_",
        flags=flags,
    )


# -- config files --------------------------------------------------------------------------------


def test_read_config_file(tmp_path: Path) -> None:
    assert read_config_file(tmp_path / "missing.toml", KEYS) is None
    good = tmp_path / "good.toml"
    good.write_text('name = "from file"\nsize = 9\n')
    assert read_config_file(good, KEYS) == {"name": "from file", "size": 9}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("colour = 'red'\n", "unknown setting 'colour' (known: hub, name, size)"),
        ("size = '9'\n", "setting 'size' must be int, got str"),
        ("size = true\n", "setting 'size' must be int, got bool"),
        ("name = 3.5\n", "setting 'name' must be str, got float"),
        ("[name]\nx = 1\n", "setting 'name' must be str, got dict"),
        ("name = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
        (
            b"name = '\xff'\n",
            "not valid TOML: 'utf-8' codec can't decode byte 0xff in position 8: "
            "invalid start byte",
        ),
    ],
)
def test_bad_config_files_name_the_file_and_the_problem(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    expect(ConfigError, f"^{re.escape(f'{path}: {problem}')}$", read_config_file, path, KEYS)


def test_an_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()
    message = f"{path}: cannot read config file: Is a directory"
    expect(ConfigError, f"^{re.escape(message)}$", read_config_file, path, KEYS)


# -- the worker's settings -----------------------------------------------------------------------


def test_worker_settings_without_a_config_file(tmp_path: Path) -> None:
    settings, used = worker_settings(flags={}, env={}, home=tmp_path, config_path=None)
    assert used is None
    assert settings["data_dir"] == str(tmp_path / ".config/leapcore/worker")
    assert settings["hub"] == []  # never a default hub: the worker must be told (or remember)
    assert {k: v for k, v in settings.items() if k != "data_dir"} == {
        k: default for k, (_t, default) in WORKER_KEYS.items() if k != "data_dir"
    }


def test_worker_settings_default_file_with_a_relative_data_dir(tmp_path: Path) -> None:
    config = tmp_path / ".config/leapcore/worker/worker.toml"
    config.parent.mkdir(parents=True)
    config.write_text('data_dir = "state"\nname = "box"\n')
    settings, used = worker_settings(flags={}, env={}, home=tmp_path, config_path=None)
    assert used == config
    assert settings["data_dir"] == str(config.parent / "state")
    assert settings["name"] == "box"


def test_worker_settings_precedence_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "w.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "from-file"\n')
    env = {"LEAPCORE_WORKER_DATA_DIR": "/from/env", "LEAPCORE_WORKER_ID": "ignored"}
    home = tmp_path / "home"
    settings, used = worker_settings(flags={}, env={}, home=home, config_path=config)
    assert (settings["data_dir"], used) == (str(config.parent / "from-file"), config)
    settings, _ = worker_settings(flags={}, env=env, home=home, config_path=config)
    assert settings["data_dir"] == "/from/env"
    flags = {"data_dir": "/from/flag"}
    settings, _ = worker_settings(flags=flags, env=env, home=home, config_path=config)
    assert settings["data_dir"] == "/from/flag"
    # A relative value from a flag resolves against the current directory, not the file's.
    settings, _ = worker_settings(
        flags={"data_dir": "rel"}, env=env, home=home, config_path=config, cwd=tmp_path / "cwd"
    )
    assert settings["data_dir"] == str(tmp_path / "cwd" / "rel")


def test_worker_settings_relative_config_path_gives_an_absolute_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("conf").mkdir()
    Path("conf/w.toml").write_text('data_dir = "d"\n')
    settings, used = worker_settings(
        flags={}, env={}, home=tmp_path / "home", config_path=Path("conf/w.toml")
    )
    assert settings["data_dir"] == str(tmp_path / "conf" / "d")
    assert Path(settings["data_dir"]).is_absolute()
    assert used == tmp_path / "conf" / "w.toml"


def test_worker_settings_explicit_config_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    expect(
        ConfigError,
        f"^{re.escape(str(missing))}: no such config file$",
        worker_settings,
        flags={},
        env={},
        home=tmp_path,
        config_path=missing,
    )


def test_worker_settings_bad_environment_value(tmp_path: Path) -> None:
    expect(
        ConfigError,
        r"^environment: LEAPCORE_WORKER_MAX_MESSAGE_SIZE must be an integer, got '16M'$",
        worker_settings,
        flags={},
        env={"LEAPCORE_WORKER_MAX_MESSAGE_SIZE": "16M"},
        home=tmp_path,
        config_path=None,
    )


def test_worker_settings_defaults_are_the_limits() -> None:
    assert {k: WORKER_KEYS[k][1] for k in ("max_message_size", "max_incomplete_chunked")} == {
        "max_message_size": DEFAULT_MAX_MESSAGE_SIZE,
        "max_incomplete_chunked": DEFAULT_MAX_INCOMPLETE,
    }
    assert WORKER_KEYS["max_channels"][1] == MAX_CHANNELS == 256


@pytest.mark.parametrize("value", [65518, 64 * 1024 * 1024 + 1])
def test_worker_max_message_size_is_range_checked_in_every_layer(
    tmp_path: Path, value: int
) -> None:
    """The one check of the range (limits.max_message_size_problem), naming the layer."""
    rule = f"must be an integer in 65519..67108864, got {value}"
    problem = f"setting 'max_message_size' {rule}"
    config = tmp_path / "w.toml"
    config.write_text(f"max_message_size = {value}\n")
    cases = [
        ({}, {}, config, str(config)),
        (
            {},
            {"LEAPCORE_WORKER_MAX_MESSAGE_SIZE": str(value)},
            None,
            "environment: LEAPCORE_WORKER_MAX_MESSAGE_SIZE",
        ),
        ({"max_message_size": value}, {}, None, "flag --max-message-size"),
    ]
    for flags, env, path, where in cases:
        expect(
            ConfigError,
            f"^{re.escape(f'{where}: {problem}')}$",
            worker_settings,
            flags=flags,
            env=env,
            home=tmp_path,
            config_path=path,
        )
    with pytest.raises(ConfigError, match=f"^{re.escape(f'max_message_size {rule}')}$"):
        validate_max_message_size(value)
    for ok in (MIN_MAX_MESSAGE_SIZE, MAX_MAX_MESSAGE_SIZE):
        settings, _ = worker_settings(
            flags={"max_message_size": ok}, env={}, home=tmp_path, config_path=None
        )
        assert settings["max_message_size"] == ok


# -- relative paths: relative to where they were written ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "file_text", "expected"),
    [
        # A flag or the environment: the current directory, whatever the file says.
        ({"data_dir": "rel"}, {}, 'data_dir = "filed"\n', "cwd/rel"),
        ({}, {"LEAPCORE_WORKER_DATA_DIR": "rel"}, 'data_dir = "filed"\n', "cwd/rel"),
        ({"data_dir": "../up"}, {}, None, "cwd/../up"),
        ({"data_dir": "."}, {}, "", "cwd"),
        # The config file: the file's directory.
        ({}, {}, 'data_dir = "filed"\n', "etc/filed"),
        ({}, {}, 'data_dir = "../state"\n', "etc/../state"),
        # No value anywhere: the config file's directory, else the default config directory.
        ({}, {}, "", "etc"),
        ({}, {}, None, "home/.config/leapcore/worker"),
        # Home and absolute paths, from any layer.
        ({"data_dir": "~/d"}, {}, None, "home/d"),
        ({}, {"LEAPCORE_WORKER_DATA_DIR": "~"}, None, "home"),
        ({}, {}, 'data_dir = "~/d"\n', "home/d"),
        ({"data_dir": "/abs/d"}, {}, 'data_dir = "filed"\n', "/abs/d"),
        ({}, {}, 'data_dir = "/abs/d"\n', "/abs/d"),
    ],
)
def test_worker_data_dir_is_relative_to_where_it_was_written(
    tmp_path: Path,
    flags: dict[str, str],
    env: dict[str, str],
    file_text: str | None,
    expected: str,
) -> None:
    config = tmp_path / "etc" / "worker.toml"
    if file_text is not None:
        config.parent.mkdir()
        config.write_text(file_text)
    settings, used = worker_settings(
        flags=flags,
        env=env,
        home=tmp_path / "home",
        config_path=config if file_text is not None else None,
        cwd=tmp_path / "cwd",
    )
    assert used == (config if file_text is not None else None)
    want = Path(expected) if expected.startswith("/") else tmp_path / expected
    assert settings["data_dir"] == str(want)
    assert Path(settings["data_dir"]).is_absolute()


def test_a_relative_data_dir_flag_defaults_to_the_real_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings, _ = worker_settings(
        flags={"data_dir": "rel"}, env={}, home=tmp_path / "home", config_path=None
    )
    assert settings["data_dir"] == str(tmp_path / "rel")
    settings, _ = hub_settings(
        flags={}, env={"LEAPCORE_HUB_DATA_DIR": "rel"}, home=tmp_path / "home", config_path=None
    )
    assert settings["data_dir"] == str(tmp_path / "rel")


@pytest.mark.parametrize(
    ("file_value", "env_value", "flag_value", "expected"),
    [
        ("ca.pem", None, None, "etc/ca.pem"),
        ("../pki/ca.pem", None, None, "etc/../pki/ca.pem"),
        ("~/ca.pem", None, None, "home/ca.pem"),
        ("/abs/ca.pem", None, None, "/abs/ca.pem"),
        ("", None, None, ""),  # empty: no CA file, not the config directory
        ("ca.pem", "env.pem", None, "env.pem"),  # as given: the OS reads it from the cwd
        ("ca.pem", None, "flag.pem", "flag.pem"),
        (None, None, None, ""),
    ],
)
@pytest.mark.parametrize("key", ["ca_file", "workspace_root"])
def test_worker_paths_in_a_config_file_are_relative_to_the_file(
    tmp_path: Path,
    key: str,
    file_value: str | None,
    env_value: str | None,
    flag_value: str | None,
    expected: str,
) -> None:
    config = tmp_path / "etc" / "worker.toml"
    config.parent.mkdir()
    config.write_text("" if file_value is None else f"{key} = {file_value!r}\n")
    env = {} if env_value is None else {f"LEAPCORE_WORKER_{key.upper()}": env_value}
    flags = {} if flag_value is None else {key: flag_value}
    settings, _ = worker_settings(
        flags=flags, env=env, home=tmp_path / "home", config_path=config, cwd=tmp_path / "cwd"
    )
    if expected.startswith(("etc", "home")):
        expected = str(tmp_path / expected)
    assert settings[key] == expected


def test_hub_path_settings_in_a_config_file_are_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "hub.toml"
    config.parent.mkdir()
    config.write_text(
        'data_dir = "state"\ntls_cert = "tls/cert.pem"\ntls_key = "~/key.pem"\n'
        'listen_unix = "hub.sock"\n'
    )
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    settings, _ = hub_settings(flags={}, env={}, home=home, config_path=config, cwd=cwd)
    assert (
        settings["data_dir"],
        settings["tls_cert"],
        settings["tls_key"],
        settings["listen_unix"],
    ) == (
        str(config.parent / "state"),
        str(config.parent / "tls/cert.pem"),
        str(home / "key.pem"),
        str(config.parent / "hub.sock"),
    )
    env = {"LEAPCORE_HUB_DATA_DIR": "d", "LEAPCORE_HUB_TLS_CERT": "c.pem"}
    flags = {"tls_key": "k.pem", "listen_unix": "s.sock"}
    settings, _ = hub_settings(flags=flags, env=env, home=home, config_path=config, cwd=cwd)
    assert (
        settings["data_dir"],
        settings["tls_cert"],
        settings["tls_key"],
        settings["listen_unix"],
    ) == (str(cwd / "d"), "c.pem", "k.pem", "s.sock")
    # Without a file: the defaults, and the hub's config directory for the data.
    settings, _ = hub_settings(flags={}, env={}, home=home, config_path=None, cwd=cwd)
    assert (settings["data_dir"], settings["tls_cert"], settings["listen_unix"]) == (
        str(home / ".config/leapcore/hub"),
        "",
        "",
    )


def test_real_commands_put_a_relative_data_dir_where_it_was_written(tmp_path: Path) -> None:
    """The real ``leapcore-hub admin`` and ``leapcore-worker cross-worker-pins``, run in
    ``tmp_path/cwd``: a relative ``--data-dir`` or environment value lands under the current
    directory, a config file's under the file's directory."""
    cwd, home, etc = tmp_path / "cwd", tmp_path / "home", tmp_path / "etc"
    for folder in (cwd, home, etc):
        folder.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
    base["HOME"] = str(home)

    def hub_admin(*args: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(
            [script("leapcore-hub"), "admin", *args, "user", "create", "ada", "--admin"],
            cwd=cwd,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr

    hub_admin("--data-dir", "flag-dir")
    assert (cwd / "flag-dir" / "hub.db").is_file()
    hub_admin(env={"LEAPCORE_HUB_DATA_DIR": "env-dir"})
    assert (cwd / "env-dir" / "hub.db").is_file()
    (etc / "hub.toml").write_text('data_dir = "file-dir"\n')
    hub_admin("--config", str(etc / "hub.toml"))
    assert (etc / "file-dir" / "hub.db").is_file()
    assert not (cwd / "file-dir").exists()
    assert not (home / ".config").exists()

    (etc / "worker.toml").write_text('data_dir = "worker-state"\n')
    for args, store in [
        (["--data-dir", "w"], cwd / "w"),
        (["--data-dir", "w", "--config", str(etc / "worker.toml")], cwd / "w"),
        (["--config", str(etc / "worker.toml")], etc / "worker-state"),
    ]:
        proc = subprocess.run(
            [script("leapcore-worker"), "cross-worker-pins", "list", "--json", *args],
            cwd=cwd,
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["store"] == str(store / "cross_worker_pins.json")


def test_the_hub_store_setting_flag_then_environment_then_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "hub.toml"
    config.write_text('store = "file.db"\nstore_pool_size = 4\n')
    url = "postgresql://hub@db.example/leapcore"
    env = {"LEAPCORE_HUB_STORE": url}

    def location(flags: dict[str, object], env: dict[str, str]) -> object:
        settings, _ = hub_settings(flags=flags, env=env, home=home, config_path=config)
        return hub_store_location(settings)

    # The file's relative SQLite path is in the data directory (the file's, by default).
    assert location({}, {}) == tmp_path / "file.db"
    assert location({}, env) == url
    assert location({"store": "postgres://other/db"}, env) == "postgres://other/db"
    bare, _ = hub_settings(flags={}, env={}, home=home, config_path=None)
    assert hub_store_location(bare) == Path(bare["data_dir"]) / "hub.db"
    assert bare["store_pool_size"] == DEFAULT_POOL_SIZE
    settings, _ = hub_settings(flags={}, env={}, home=home, config_path=config)
    assert settings["store_pool_size"] == 4


@pytest.mark.parametrize("size", [0, MAX_POOL_SIZE + 1])
def test_the_store_pool_size_is_range_checked(tmp_path: Path, size: int) -> None:
    expect(
        ConfigError,
        f"store_pool_size.*must be 1 .. {MAX_POOL_SIZE}",
        hub_settings,
        flags={"store_pool_size": size},
        env={},
        home=tmp_path,
        config_path=None,
    )
