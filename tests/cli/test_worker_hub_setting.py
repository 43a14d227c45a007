"""The worker's ``hub`` setting holds several URLs: ``--hub`` repeated, commas in the
environment or a config-file string, or a TOML list; strictly checked, naming the layer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.helpers import expect

from leapcore.errors import ConfigError
from leapcore.proto.limits import MAX_HUB_URLS
from leapcore.store.config import worker_settings
from leapcore_cli.worker import RUN_FLAGS, build_parser

A, B, C = "http://a.example:1", "https://b.example", "unix:/run/hub.sock"


def settings(
    tmp_path: Path,
    *,
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    toml: str | None = None,
) -> list[str]:
    config = None
    if toml is not None:
        config = tmp_path / "worker.toml"
        config.write_text(toml)
    values, _ = worker_settings(flags=flags or {}, env=env or {}, home=tmp_path, config_path=config)
    hub: list[str] = values["hub"]
    return hub


def cli_flags(*argv: str) -> dict[str, Any]:
    args = build_parser().parse_args(list(argv))
    return {key: getattr(args, key) for key in RUN_FLAGS if hasattr(args, key)}


def test_every_layer_takes_several_urls(tmp_path: Path) -> None:
    assert settings(tmp_path) == []
    assert settings(tmp_path, toml=f'hub = "{A}"') == [A]
    assert settings(tmp_path, toml=f'hub = "{A}, {B}"') == [A, B]
    assert settings(tmp_path, toml=f'hub = ["{A}", "{B}", "{C}"]') == [A, B, C]
    assert settings(tmp_path, env={"LEAPCORE_WORKER_HUB": f" {A} ,{B}"}) == [A, B]
    assert settings(tmp_path, env={"LEAPCORE_WORKER_HUB": ""}) == []  # blank: unset
    flags = cli_flags("--hub", A, "--hub", f"{B},{C}")
    assert flags["hub"] == [A, f"{B},{C}"]
    assert cli_flags("run", "--hub", A, "--hub", B)["hub"] == [A, B]
    # A later layer replaces the list whole: the flags win over the environment and the file.
    env = {"LEAPCORE_WORKER_HUB": B}
    assert settings(tmp_path, flags=flags, env=env, toml=f'hub = ["{C}"]') == [A, B, C]
    assert settings(tmp_path, env=env, toml=f'hub = ["{C}"]') == [B]


@pytest.mark.parametrize(
    ("layer", "where"),
    [
        ({"env": {"LEAPCORE_WORKER_HUB": f"{A},,{B}"}}, "environment: LEAPCORE_WORKER_HUB: "),
        ({"env": {"LEAPCORE_WORKER_HUB": f"{A},"}}, "environment: LEAPCORE_WORKER_HUB: "),
        ({"toml": f'hub = ["{A}", ""]'}, "{file}: setting 'hub': "),
        ({"toml": f'hub = "{A},, {B}"'}, "{file}: setting 'hub': "),
        ({"flags": {"hub": [A, ""]}}, "flag: setting 'hub': "),
    ],
)
def test_an_empty_element_is_an_error(tmp_path: Path, layer: dict[str, Any], where: str) -> None:
    prefix = where.format(file=tmp_path / "worker.toml")
    expect(ConfigError, f"^{re.escape(prefix)}.* has an empty hub URL", settings, tmp_path, **layer)


def test_duplicates_and_too_many_are_errors_naming_the_layer(tmp_path: Path) -> None:
    expect(
        ConfigError,
        "^environment: LEAPCORE_WORKER_HUB: setting 'hub' names hub URL "
        f"{re.escape(repr(A))} twice",
        settings,
        tmp_path,
        env={"LEAPCORE_WORKER_HUB": f"{A},{B},{A}"},
    )
    many = [f"http://h{i}.example" for i in range(MAX_HUB_URLS + 1)]
    expect(
        ConfigError,
        f"^flag --hub: setting 'hub' names 17 hub URLs; at most {MAX_HUB_URLS} are allowed",
        settings,
        tmp_path,
        flags={"hub": many},
    )
    assert len(settings(tmp_path, flags={"hub": many[:MAX_HUB_URLS]})) == MAX_HUB_URLS
    file = tmp_path / "worker.toml"
    expect(
        ConfigError,
        f"^{re.escape(str(file))}: setting 'hub' must be a string or a list of strings",
        settings,
        tmp_path,
        toml="hub = [1, 2]",
    )


def test_the_cli_refuses_a_repeated_hub_before_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = Path(sys.executable).with_name("leapcore-worker")
    argv = ["--data-dir", str(data), "--hub", A, "--hub", "http://a.example:1/"]
    proc = subprocess.run(
        [str(script), *argv, "--registration-key", "k" * 24],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: hub URLs {A!r} and 'http://a.example:1/' name the same hub address\n"
    )
    assert not data.exists()
