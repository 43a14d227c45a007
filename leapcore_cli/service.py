"""``leapcore-worker service install|uninstall``: start the worker at boot or login.

On Linux this writes a systemd unit, ``leapcore-worker.service``: a user unit in
``$XDG_CONFIG_HOME/systemd/user/`` (default ``~/.config/systemd/user/``) with ``--user``,
else a system unit in ``/etc/systemd/system/``. On macOS it writes a launchd agent,
``~/Library/LaunchAgents/dev.leapcore.worker.plist`` (always per user). The service runs
this installation's ``leapcore-worker`` by its absolute path, as
``leapcore-worker run --config <absolute path> [--data-dir <absolute path>]``.

Restart policy: the worker exits 0 when it is stopped or deregistered (nothing to restart)
and non-zero on errors, so systemd restarts it ``on-failure`` after 5 s, except for exit 2
(bad configuration, or an unregistered worker), 4 (unreadable local state) and 9 (a hub that
does not know this worker), which a restart cannot fix; launchd restarts it on any non-zero
exit (``KeepAlive`` ``SuccessfulExit`` false).

The unit is written atomically (:func:`leapcore.store.atomicfile.write_atomic`); an existing
unit with other content is replaced only with ``--force``. The renderers and path rules here
are pure (the platform, environment and home directory are arguments) so they can be tested
for every platform on any machine.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from leapcore.errors import ConfigError, StorageError
from leapcore.store.atomicfile import write_atomic
from leapcore.store.config import worker_settings
from leapcore.store.paths import worker_config_file
from leapcore.store.workerstate import STATE_FILE

__all__ = [
    "LAUNCHD_LABEL",
    "UNIT_NAME",
    "ServiceTarget",
    "add_parser",
    "find_executable",
    "render",
    "render_launchd_plist",
    "render_systemd_unit",
    "service_target",
    "systemd_quote",
    "worker_command",
]

UNIT_NAME: Final = "leapcore-worker.service"
LAUNCHD_LABEL: Final = "dev.leapcore.worker"
#: Seconds between a failure and the restart.
RESTART_DELAY: Final = 5
#: Exit codes a restart cannot fix: bad configuration or unregistered (2), unreadable state
#: (4), a hub that does not know this worker (9), an expired worker token (10).
NO_RESTART_CODES: Final = (2, 4, 9, 10)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")


@attrs.frozen
class ServiceTarget:
    """Where the service definition goes and how its manager is told about it."""

    kind: str  # "systemd" or "launchd"
    user: bool
    path: Path

    @property
    def systemctl(self) -> str:
        return "systemctl --user" if self.user else "systemctl"

    def enabled_links(self) -> list[Path]:
        """systemd's ``enable`` symlinks to this unit that exist (empty for launchd)."""
        if self.kind != "systemd":
            return []
        wants = self.path.parent / f"{_wanted_by(self.user)}.wants" / UNIT_NAME
        return [wants] if wants.is_symlink() or wants.exists() else []


def _wanted_by(user: bool) -> str:
    return "default.target" if user else "multi-user.target"


def service_target(
    *,
    user: bool,
    platform: str,
    env: Mapping[str, str],
    home: Path,
    root: Path = Path("/"),
) -> ServiceTarget:
    """The service file for this platform (``sys.platform``); ``root`` prefixes the system
    unit directory (tests)."""
    if platform == "darwin":
        path = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        return ServiceTarget("launchd", True, path)
    if not platform.startswith("linux"):
        raise ConfigError(
            f"service: no supported service manager on {platform!r} (systemd on Linux, "
            "launchd on macOS); run `leapcore-worker run --config FILE` from your own"
        )
    if user:
        xdg = env.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
        return ServiceTarget("systemd", True, base / "systemd" / "user" / UNIT_NAME)
    return ServiceTarget("systemd", False, root / "etc" / "systemd" / "system" / UNIT_NAME)


def systemd_quote(arg: str, *, program: bool = False) -> str:
    """One word of a systemd command line (``ExecStart=``): ``%`` doubled (no specifier
    expansion) and, except in the program's path, which systemd takes literally, ``$`` too (no
    variable expansion); then double quotes, with ``\\`` and ``"`` escaped, around a word that
    is empty or holds anything but plain characters (spaces, quotes, ``;``)."""
    if _CONTROL.search(arg):
        raise ConfigError(f"service: {arg!r} holds a control character; systemd cannot run it")
    escaped = arg.replace("%", "%%")
    if not program:
        escaped = escaped.replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_executable(argv0: str | None = None) -> Path:
    """This installation's ``leapcore-worker``, absolute: the running script when it is that,
    else the one beside the Python interpreter, else the first on ``PATH``."""
    candidates: list[Path] = []
    if argv0 is not None and Path(argv0).name == "leapcore-worker":
        candidates.append(Path(argv0))
    candidates.append(Path(sys.executable).with_name("leapcore-worker"))
    found = shutil.which("leapcore-worker")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.absolute()
    raise ConfigError(
        "service: cannot find the leapcore-worker executable (looked beside "
        f"{sys.executable} and on PATH)"
    )


def worker_command(executable: Path, config: Path, data_dir: Path | None) -> list[str]:
    """The service's command line: ``run`` with the config file (and data dir) given."""
    command = [str(executable), "run", "--config", str(config)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return command


def render_systemd_unit(command: Sequence[str], *, user: bool) -> str:
    """The unit file text. A user unit gets no ``PrivateTmp=`` (in a user manager it needs
    unprivileged user namespaces, which some systems forbid, and the unit would then fail to
    start) and no ``ProtectHome=`` (its files are in the home directory)."""
    exec_start = " ".join(systemd_quote(word, program=i == 0) for i, word in enumerate(command))
    uninstall = "leapcore-worker service uninstall" + (" --user" if user else "")
    lines = [
        "# Written by `leapcore-worker service install`; remove it with",
        f"# `{uninstall}`.",
        "[Unit]",
        "Description=leapcore worker: keeps an outbound link to a leapcore hub",
    ]
    if not user:  # a user manager has no network-online.target of its own
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "# systemctl reload: the worker reads its policy file again.",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# Exit 0 (stopped, deregistered): done. Other failures: start again after a pause,",
        "# except 2 (bad configuration, unregistered), 4 (unreadable state) and 9 (a hub",
        "# that does not know this worker): a restart cannot fix those.",
        "Restart=on-failure",
        f"RestartSec={RESTART_DELAY}",
        "RestartPreventExitStatus=" + " ".join(str(code) for code in NO_RESTART_CODES),
        "NoNewPrivileges=yes",
    ]
    if not user:
        lines.append("PrivateTmp=yes")
    lines += [
        "UMask=0077",
        "",
        "[Install]",
        f"WantedBy={_wanted_by(user)}",
        "",
    ]
    return "\n".join(lines)


def render_launchd_plist(command: Sequence[str], *, home: Path) -> str:
    """The launchd agent: started at login, restarted after a non-zero exit, output appended
    to ``~/Library/Logs/leapcore-worker.log``."""
    log = str(home / "Library" / "Logs" / "leapcore-worker.log")
    document: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY,
        "ProcessType": "Background",
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    return plistlib.dumps(document, sort_keys=True).decode("utf-8")


def render(target: ServiceTarget, command: Sequence[str], *, home: Path) -> str:
    if target.kind == "launchd":
        return render_launchd_plist(command, home=home)
    return render_systemd_unit(command, user=target.user)


def _start_hint(target: ServiceTarget) -> str:
    if target.kind == "launchd":
        return (
            f"load and start it now (and at every login) with:\n"
            f"  launchctl bootstrap gui/$(id -u) {shlex.quote(str(target.path))}"
        )
    text = (
        f"start it now and at every {'login' if target.user else 'boot'} with:\n"
        f"  {target.systemctl} daemon-reload\n"
        f"  {target.systemctl} enable --now {UNIT_NAME}\n"
        f"logs: journalctl {'--user ' if target.user else ''}-u {UNIT_NAME}"
    )
    if target.user:
        text += (
            "\na user unit runs while you are logged in; to keep it running without a "
            "session:\n  loginctl enable-linger $USER"
        )
    return text


# -- the commands ------------------------------------------------------------------------------


def _config_file(args: argparse.Namespace, home: Path) -> Path:
    if args.config is not None:
        path = Path(args.config).absolute()
        if not path.is_file():
            raise ConfigError(f"{args.config}: no such config file")
        return path
    default = worker_config_file(home)
    if not default.is_file():
        raise ConfigError(
            f'service: no config file: write {default} (at least `hub = "URL"`) or pass '
            "--config FILE; the service runs `leapcore-worker run --config FILE`"
        )
    return default


def install(args: argparse.Namespace) -> int:
    """``service install``: write (or ``--print``) the unit for this worker."""
    home = Path.home()
    target = service_target(user=args.user, platform=sys.platform, env=os.environ, home=home)
    config = _config_file(args, home)
    flags = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    # What the service will see: the file and the flags, none of this shell's environment.
    settings, _ = worker_settings(flags=flags, env={}, home=home, config_path=config)
    data_dir = Path(settings["data_dir"])
    command = worker_command(
        find_executable(sys.argv[0] if sys.argv else None),
        config,
        data_dir if args.data_dir is not None else None,
    )
    text = render(target, command, home=home)
    if not (data_dir / STATE_FILE).exists():
        print(
            f"note: {data_dir / STATE_FILE} does not exist: this worker is not registered yet. "
            f"Register it once first: {' '.join(shlex.quote(w) for w in command)} "
            "--registration-key KEY",
            file=sys.stderr,
        )
    if args.print:
        sys.stdout.write(text)
        return 0
    try:
        existing: str | None = target.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"{target.path}: cannot read: {exc}") from None
    if existing == text:
        print(f"{target.path} is already installed with this content; unchanged")
        print(_start_hint(target))
        return 0
    if existing is not None and not args.force:
        raise ConfigError(
            f"{target.path} exists with other content; pass --force to replace it "
            "(--print shows the new one)"
        )
    try:
        write_atomic(target.path, text.encode("utf-8"), mode=0o644)
    except StorageError as exc:
        hint = "" if target.user else " (a system unit needs root: use sudo, or --user)"
        raise StorageError(f"{exc.message}{hint}") from None
    print(f"{'replaced' if existing is not None else 'wrote'} {target.path}")
    print(_start_hint(target))
    return 0


def uninstall(args: argparse.Namespace) -> int:
    """``service uninstall``: remove the unit (not while systemd still has it enabled)."""
    home = Path.home()
    target = service_target(user=args.user, platform=sys.platform, env=os.environ, home=home)
    if not target.path.exists():
        print(f"no {target.path}; nothing to remove")
        return 0
    links = target.enabled_links()
    if links and not args.force:
        raise ConfigError(
            f"{UNIT_NAME} is still enabled ({links[0]}): first run\n"
            f"  {target.systemctl} disable --now {UNIT_NAME}\n"
            "then uninstall again (or pass --force to remove the file anyway)"
        )
    try:
        target.path.unlink()
    except OSError as exc:
        hint = "" if target.user else " (a system unit needs root: use sudo)"
        raise StorageError(f"{target.path}: cannot remove: {exc.strerror or exc}{hint}") from None
    print(f"removed {target.path}")
    if target.kind == "launchd":
        print(f"if it is loaded, stop it with:\n  launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}")
    else:
        stop = f"  {target.systemctl} disable --now {UNIT_NAME}\n" if links else ""
        print(f"then run:\n{stop}  {target.systemctl} daemon-reload")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``service install|uninstall`` to ``leapcore-worker``'s subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "service",
        help="install or remove a systemd unit (launchd agent on macOS) that runs the worker",
        description="Write or remove the service definition that starts this worker at boot "
        "(system unit) or login (--user unit; launchd agent on macOS). Nothing is started or "
        "stopped: the command says what to run.",
    )
    verbs = parser.add_subparsers(
        dest="service_command", metavar="COMMAND", required=True, parser_class=type(parser)
    )
    p = verbs.add_parser(
        "install",
        help="write the unit (or --print it)",
        description="Write leapcore-worker.service: ExecStart runs this installation's "
        "leapcore-worker with the config file (and --data-dir) as absolute paths.",
    )
    p.add_argument(
        "--user",
        action="store_true",
        help="a user unit in ~/.config/systemd/user (default: a system unit in "
        "/etc/systemd/system); implied on macOS",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the worker's config file (default: ~/.config/leapcore/worker/worker.toml; "
        "it must exist)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="pass --data-dir to the worker (a relative DIR is relative to the current "
        "directory; default: the config file's data_dir)",
    )
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--force", action="store_true", help="replace an existing, different unit")
    p.set_defaults(handler=install)
    p = verbs.add_parser(
        "uninstall",
        help="remove the unit",
        description="Remove leapcore-worker.service (refused while systemd has it enabled: "
        "disable it first, as the message says).",
    )
    p.add_argument("--user", action="store_true", help="the user unit (as installed with --user)")
    p.add_argument(
        "--force", action="store_true", help="remove the unit file even while it is enabled"
    )
    p.set_defaults(handler=uninstall)
    return parser
