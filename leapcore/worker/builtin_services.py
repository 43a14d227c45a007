"""The services a worker offers inside its channels, and what ``info`` reports.

``ping`` is answered by the channel endpoint itself (any caller). :func:`default_services`
adds ``info`` (owner only, as every method unless registered ``public=True``)::

    {"name", "worker_id", "version", "commit", "os", "arch", "python",
     "encryption_mode", "labels", "capabilities", "services"}

(``capabilities``: the sorted names of every method served, ``ping`` included;
``services``: the same methods as ``{"name", "kind", "public"}``, see :func:`service_list`)

and ``tcp`` (owner only): a byte stream to a TCP connection the worker dials, within the
worker's destination rules (``worker.tunnel_policy``; see :mod:`leapcore.worker.tcp`);
and ``exec``, ``exec.stderr``, ``exec.wait``, ``exec.signal``, ``exec.resize`` (owner
only): processes run for the owner (:mod:`leapcore.worker.exec`); and ``pty.*`` (owner
only): terminal sessions kept by the worker (:mod:`leapcore.worker.pty`); and ``files.*``
(owner only): file copies (:mod:`leapcore.worker.files`); and ``workspace.*`` (owner only):
git checkouts under ``worker.workspace_root`` (:mod:`leapcore.worker.workspaces`), which
``exec`` and ``pty.spawn`` may start in.

An embedding application adds its own methods to the table it passes to the worker::

    services = default_services(worker)
    services.add_rpc("uptime", my_uptime_handler)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..peer.channel import CallContext, Services
from ..proto.channel_mux import PING_METHOD
from ..proto.worker_policy import DENIED_BY_POLICY, ExecRules
from .advertise import host_platform
from .exec import ExecService, add_exec_service
from .files import add_files_service
from .pty import PtyService, add_pty_service
from .spawn import no_exec_rules
from .tcp import add_tcp_service
from .workspaces import WorkspaceService, add_workspace_service

if TYPE_CHECKING:
    from .daemon import Worker

__all__ = [
    "INFO_METHOD",
    "Installer",
    "add_process_services",
    "build_commit",
    "default_services",
    "info_document",
    "install_services",
    "load_installer",
    "service_list",
]

log = logging.getLogger(__name__)

INFO_METHOD = "info"


@functools.cache
def build_commit() -> str | None:
    """The git commit leapcore runs from (a source checkout), else ``None``."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def service_list(services: Services) -> list[dict[str, Any]]:
    """Every method ``services`` serves, ``ping`` included, by name: ``{"name", "kind"
    ("rpc", "stream" or "byte_stream"), "public"}`` (``info``'s ``services``)."""
    kinds: dict[str, str] = {PING_METHOD: "rpc"}
    for kind, table in (
        ("rpc", services.rpcs),
        ("stream", services.streams),
        ("byte_stream", services.byte_streams),
    ):
        kinds.update(dict.fromkeys(table, kind))
    return [
        {
            "name": name,
            "kind": kinds[name],
            "public": name == PING_METHOD or name in services.public,
        }
        for name in services.served()
    ]


def info_document(worker: Worker) -> dict[str, Any]:
    """What ``info`` answers for ``worker`` (its capabilities: every method it serves; its
    services: the same, with each one's kind and access)."""
    greeting = worker.greeting
    services = worker.services
    methods = services.served()
    os_name, arch = host_platform()
    return {
        "name": worker.name,
        "worker_id": greeting.worker_id if greeting is not None else None,
        "version": worker.version,
        "commit": build_commit(),
        "os": os_name,
        "arch": arch,
        "python": platform.python_version(),
        "encryption_mode": worker.encryption_mode,
        "labels": dict(worker.labels),
        "capabilities": methods,
        "services": service_list(services),
    }


def default_services(worker: Worker) -> Services:
    """A table with ``info``, ``tcp``, ``exec``, ``pty.*``, ``files.*`` and ``workspace.*``
    for ``worker``; add more methods
    to it before running."""
    services = Services()
    build_commit()  # a git subprocess, once, at start-up: never inside a channel call

    async def info(ctx: CallContext, payload: bytes) -> bytes:
        return json.dumps(info_document(worker), sort_keys=True).encode()

    services.add_rpc(INFO_METHOD, info)
    services.gates.append(lambda method: _disabled(worker, method))
    worker.tcp_tunnels = add_tcp_service(services, lambda: worker.tunnel_policy)
    add_files_service(services, policy=lambda: worker.policy.files)
    worker.exec_service, worker.pty_service, _ = add_process_services(
        services, worker.workspace_root, policy=lambda: worker.policy.exec
    )
    return services


def _disabled(worker: Worker, method: str) -> tuple[str, str] | None:
    refusal = worker.policy.services.check(method)
    return None if refusal is None else (DENIED_BY_POLICY, refusal.message)


def add_process_services(
    services: Services,
    workspace_root: Path,
    *,
    policy: Callable[[], ExecRules] = no_exec_rules,
) -> tuple[ExecService, PtyService, WorkspaceService]:
    """``exec``, ``pty.*`` and ``workspace.*`` on ``services``, joined: processes and
    terminal sessions may start in a workspace (under ``workspace_root``), and a workspace
    is busy while one started in it runs; ``policy`` gives the ``[exec]`` rules."""
    workspaces = add_workspace_service(services, workspace_root)
    exec_service = add_exec_service(services, workspace_dir=workspaces.directory, policy=policy)
    pty_service = add_pty_service(services, workspace_dir=workspaces.directory, policy=policy)
    workspaces.busy = lambda: [*exec_service.cwds(), *pty_service.cwds()]
    return exec_service, pty_service, workspaces


# -- installers named by MODULE:CALLABLE (leapcore-worker --services) --------------------

#: An installer named by ``--services MODULE:CALLABLE``: it adds methods to the table.
Installer = Callable[[Services, "Worker"], Any]


def _dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def load_installer(spec: str) -> Installer:
    """The callable ``spec`` (``MODULE:CALLABLE``, each part a dotted name) names: the module is
    imported, the attribute looked up. Every failure is a :class:`ConfigError` that says which
    step failed for which spec (the traceback only in the debug log)."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not _dotted(module_name) or not _dotted(attr):
        raise ConfigError(
            f"services: {spec!r} is not MODULE:CALLABLE (for example mypkg.methods:install)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(
                f"services: no module named {missing!r} (from {spec!r}); is its directory "
                "on PYTHONPATH?"
            ) from None
        log.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigError(
            f"services: importing {module_name!r} (from {spec!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:
        log.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigError(
            f"services: importing {module_name!r} (from {spec!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"services: module {module_name!r} has no attribute {attr!r} (from {spec!r})"
            ) from None
    if not callable(target):
        raise ConfigError(
            f"services: {spec!r} is not callable (it is {type(target).__name__}); name a "
            "function taking (services, worker)"
        )
    installer: Installer = target
    return installer


def install_services(specs: Sequence[str], worker: Worker) -> None:
    """Call each installer in ``specs``, in order, with ``(worker.services, worker)``."""
    services = worker.services
    for spec in specs:
        installer = load_installer(spec)
        before = _methods(services)
        try:
            result = installer(services, worker)
        except Exception as exc:
            log.debug("%s failed", spec, exc_info=True)
            raise ConfigError(f"services: {spec} failed: {type(exc).__name__}: {exc}") from None
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise ConfigError(
                f"services: {spec} returned an awaitable; it must be a plain (not async) "
                "function that registers methods and returns"
            )
        added = sorted(_methods(services) - before)
        log.info("services: %s added %s", spec, ", ".join(added) or "no methods")


def _methods(services: Services) -> set[str]:
    return {*services.rpcs, *services.streams, *services.byte_streams}
