"""``leapcore-worker service install|uninstall``: the systemd unit and launchd agent it
renders (checked by ``systemd-analyze verify`` where it is installed), and real installs and
removals of a user unit into a temporary HOME / XDG_CONFIG_HOME."""

from __future__ import annotations

import configparser
import os
import plistlib
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import expect
from support.procs import script

from leapcore.errors import ConfigError
from leapcore_cli import worker
from leapcore_cli.service import (
    LAUNCHD_LABEL,
    UNIT_NAME,
    find_executable,
    render_launchd_plist,
    render_systemd_unit,
    service_target,
    systemd_quote,
    worker_command,
)

HOME = Path("/home/ada")
BIN = Path(sys.executable).parent


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _unquote(exec_start: str) -> list[str]:
    """systemd's reading of an ExecStart= line we wrote: our double-quoting (``\\\\`` and
    ``\\"`` inside) is POSIX shell's; ``%%`` is ``%``, and ``$$`` is ``$`` after the program."""
    words = shlex.split(exec_start.replace("%%", "%"))
    return words[:1] + [word.replace("$$", "$") for word in words[1:]]


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/usr/bin/leapcore-worker", "/usr/bin/leapcore-worker"),
        ("--config", "--config"),
        ("/srv/my worker/w.toml", '"/srv/my worker/w.toml"'),
        ("/a/100%.toml", "/a/100%%.toml"),
        ("/a/$HOME/x", "/a/$$HOME/x"),
        ("/a/it's", '"/a/it\'s"'),
        ('/a/say "hi"', '"/a/say \\"hi\\""'),
        ("/a/back\\slash", '"/a/back\\\\slash"'),
        ("/a/semi;colon", '"/a/semi;colon"'),
        ("", '""'),
        ("/a/tab\tx", None),
        ("/a/new\nline", None),
    ],
)
def test_systemd_quote(word: str, quoted: str | None) -> None:
    if quoted is None:
        expect(ConfigError, "control character", systemd_quote, word)
        return
    assert systemd_quote(word) == quoted
    assert _unquote(f"/bin/x {quoted}") == ["/bin/x", word]
    program = systemd_quote(word, program=True)
    assert program == quoted.replace("$$", "$")  # the program's path is taken literally
    assert _unquote(program) == [word]


def test_system_unit(tmp_path: Path) -> None:
    command = worker_command(
        Path("/opt/leap core/bin/leapcore-worker"), Path("/etc/leapcore/w 1.toml"), None
    )
    text = render_systemd_unit(command, user=False)
    unit = _unit(text)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert _unquote(service.pop("ExecStart")) == [
        "/opt/leap core/bin/leapcore-worker",
        "run",
        "--config",
        "/etc/leapcore/w 1.toml",
    ]
    assert service == {
        "Type": "simple",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "2 4 9 10",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "UMask": "0077",
    }
    assert unit["Unit"]["After"] == unit["Unit"]["Wants"] == "network-online.target"
    assert dict(unit["Install"]) == {"WantedBy": "multi-user.target"}
    assert "ProtectHome" not in text
    assert text.startswith("# Written by `leapcore-worker service install`")
    assert "`leapcore-worker service uninstall`" in text


def test_user_unit(tmp_path: Path) -> None:
    command = worker_command(Path("/x/leapcore-worker"), HOME / "w.toml", HOME / "state dir")
    unit = _unit(render_systemd_unit(command, user=True))
    assert _unquote(unit["Service"]["ExecStart"]) == [
        "/x/leapcore-worker",
        "run",
        "--config",
        str(HOME / "w.toml"),
        "--data-dir",
        str(HOME / "state dir"),
    ]
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["NoNewPrivileges"] == "yes"
    # No PrivateTmp/ProtectHome (namespaces a user manager may not have; files in HOME),
    # and no dependency on a system target.
    for key in ("PrivateTmp", "ProtectHome"):
        assert key not in unit["Service"]
    assert "After" not in unit["Unit"]
    assert dict(unit["Install"]) == {"WantedBy": "default.target"}


def test_launchd_plist() -> None:
    command = worker_command(Path("/x/leapcore-worker"), HOME / "my w.toml", None)
    document = plistlib.loads(render_launchd_plist(command, home=HOME).encode())
    assert document == {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": ["/x/leapcore-worker", "run", "--config", str(HOME / "my w.toml")],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ProcessType": "Background",
        "StandardOutPath": str(HOME / "Library/Logs/leapcore-worker.log"),
        "StandardErrorPath": str(HOME / "Library/Logs/leapcore-worker.log"),
    }


def test_where_the_service_goes(tmp_path: Path) -> None:
    def path(**kw: object) -> Path:
        args: dict[str, object] = {"user": True, "platform": "linux", "env": {}, "home": HOME}
        args.update(kw)
        return service_target(**args).path  # type: ignore[arg-type]

    assert path() == HOME / ".config/systemd/user" / UNIT_NAME
    assert path(env={"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/systemd/user") / UNIT_NAME
    assert path(env={"XDG_CONFIG_HOME": "relative"}) == HOME / ".config/systemd/user" / UNIT_NAME
    assert path(user=False) == Path("/etc/systemd/system") / UNIT_NAME
    assert path(user=False, root=tmp_path) == tmp_path / "etc/systemd/system" / UNIT_NAME
    launchd = HOME / "Library/LaunchAgents/dev.leapcore.worker.plist"
    assert path(platform="darwin") == path(platform="darwin", user=False) == launchd
    expect(ConfigError, "no supported service manager on 'win32'", path, platform="win32")


def test_the_executable_is_this_installations(tmp_path: Path) -> None:
    assert find_executable() == Path(script("leapcore-worker")).absolute()
    assert find_executable("/not/this/python") == Path(script("leapcore-worker")).absolute()
    other = tmp_path / "leapcore-worker"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert find_executable(str(other)) == other


# -- systemd-analyze verify ----------------------------------------------------------------------


def _verify(unit: Path, *, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    args = [binary, "--man=no", *(["--user"] if user else []), "verify", str(unit)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if "Failed to initialize manager" in proc.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip()}")
    return proc


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_accepts_the_unit(tmp_path: Path, user: bool) -> None:
    # The executable must exist: systemd-analyze checks it. A path with a space checks quoting.
    folder = tmp_path / "with space $HOME 100%"
    folder.mkdir()
    executable = folder / "leapcore-worker"
    shutil.copy(script("leapcore-worker"), executable)
    config = folder / "w.toml"
    command = worker_command(executable, config, folder / "state")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_systemd_unit(command, user=user))
    proc = _verify(unit, user=user, tmp_path=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    # ... and it would notice a wrong path (so the check above can fail).
    executable.unlink()
    proc = _verify(unit, user=user, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert f"Command {executable} is not executable" in proc.stderr


# -- install and uninstall, for real ------------------------------------------------------------


class Home:
    """A temporary HOME and XDG_CONFIG_HOME, and the real ``leapcore-worker service``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.xdg = root / "xdg"
        self.home.mkdir()
        self.config = root / "conf dir" / "worker.toml"
        self.config.parent.mkdir()
        self.config.write_text('hub = "http://127.0.0.1:4327"\ndata_dir = "state"\n')
        self.unit = self.xdg / "systemd" / "user" / UNIT_NAME

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.xdg))
        return subprocess.run(
            [script("leapcore-worker"), "service", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd or self.root,
        )


def test_install_and_uninstall_a_user_unit(tmp_path: Path) -> None:
    home = Home(tmp_path)
    printed = home.run("install", "--user", "--config", str(home.config), "--print")
    assert printed.returncode == 0, printed.stderr
    assert not home.unit.exists()  # --print writes nothing
    assert _unquote(_unit(printed.stdout)["Service"]["ExecStart"]) == [
        str(Path(script("leapcore-worker")).absolute()),
        "run",
        "--config",
        str(home.config),
    ]
    state = home.config.parent / "state" / "state.json"
    assert f"note: {state} does not exist: this worker is not registered yet" in printed.stderr

    proc = home.run("install", "--user", "--config", str(home.config))
    assert proc.returncode == 0, proc.stderr
    assert home.unit.read_text() == printed.stdout
    assert stat.S_IMODE(home.unit.stat().st_mode) == 0o644
    assert proc.stdout.startswith(f"wrote {home.unit}\n")
    assert "systemctl --user enable --now leapcore-worker.service" in proc.stdout
    assert not list(home.unit.parent.glob(".*.tmp"))  # written atomically, nothing left over

    # The same again: nothing to do.
    proc = home.run("install", "--user", "--config", str(home.config))
    assert proc.returncode == 0, proc.stderr
    assert "already installed with this content; unchanged" in proc.stdout

    # A different unit is not overwritten without --force.
    other = tmp_path / "other.toml"
    other.write_text('hub = "http://127.0.0.1:4327"\n')
    proc = home.run("install", "--user", "--config", str(other))
    assert proc.returncode == 2
    assert f"error: {home.unit} exists with other content; pass --force" in proc.stderr
    assert home.unit.read_text() == printed.stdout
    proc = home.run("install", "--user", "--config", "other.toml", "--force")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"replaced {home.unit}\n")
    assert f"--config {other}" in home.unit.read_text()

    # Enabled (systemctl's symlink): uninstall says to disable it first.
    wants = home.unit.parent / "default.target.wants"
    wants.mkdir()
    (wants / UNIT_NAME).symlink_to(home.unit)
    proc = home.run("uninstall", "--user")
    assert proc.returncode == 2
    assert "systemctl --user disable --now leapcore-worker.service" in proc.stderr
    assert home.unit.exists()
    (wants / UNIT_NAME).unlink()

    proc = home.run("uninstall", "--user")
    assert proc.returncode == 0, proc.stderr
    assert not home.unit.exists()
    assert proc.stdout == f"removed {home.unit}\nthen run:\n  systemctl --user daemon-reload\n"
    proc = home.run("uninstall", "--user")
    assert (proc.returncode, proc.stdout) == (0, f"no {home.unit}; nothing to remove\n")


def test_install_paths_are_absolute_and_relative_to_the_current_directory(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "w.toml").write_text('hub = "http://127.0.0.1:4327"\n')
    proc = home.run(
        "install", "--user", "--config", "w.toml", "--data-dir", "d", "--print", cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    words = _unquote(_unit(proc.stdout)["Service"]["ExecStart"])
    assert words[1:] == ["run", "--config", str(cwd / "w.toml"), "--data-dir", str(cwd / "d")]


def test_install_needs_a_config_file(tmp_path: Path) -> None:
    home = Home(tmp_path)
    proc = home.run("install", "--user", "--print")
    assert proc.returncode == 2
    default = home.home / ".config/leapcore/worker/worker.toml"
    assert f"error: service: no config file: write {default}" in proc.stderr
    proc = home.run("install", "--user", "--config", "missing.toml")
    assert (proc.returncode, proc.stderr) == (2, "error: missing.toml: no such config file\n")
    home.config.write_text("colour = 1\n")  # checked as the worker would
    proc = home.run("install", "--user", "--config", str(home.config))
    assert proc.returncode == 2
    assert "unknown setting 'colour'" in proc.stderr
    assert not home.unit.exists()
    # The default file is used when it exists.
    default.parent.mkdir(parents=True)
    default.write_text('hub = "http://127.0.0.1:4327"\n')
    proc = home.run("install", "--user", "--print")
    assert proc.returncode == 0, proc.stderr
    assert f"--config {default}" in proc.stdout


def test_install_a_launchd_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS, rendered and written into a temporary HOME (in this process, as ``darwin``)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    config = tmp_path / "w.toml"
    config.write_text('hub = "http://127.0.0.1:4327"\n')
    assert worker.main(["service", "install", "--config", str(config)]) == 0
    plist = tmp_path / "Library/LaunchAgents/dev.leapcore.worker.plist"
    document = plistlib.loads(plist.read_bytes())
    assert document["ProgramArguments"][1:] == ["run", "--config", str(config)]
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert worker.main(["service", "uninstall"]) == 0
    assert not plist.exists()


def test_the_unit_names_match_the_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    section = docs.split("## `leapcore-worker service`", 1)[1].split("\n## ", 1)[0]
    for needle in (UNIT_NAME, "dev.leapcore.worker.plist", "RestartPreventExitStatus=2 4 9 10"):
        assert needle in section
    assert re.search(r"Restart=on-failure", section)
