"""Reading the worker's policy file (``policy.toml``; the rules:
:mod:`leapcore.proto.worker_policy`).

:func:`load_policy` reads at most :data:`~leapcore.proto.limits.POLICY_MAX_FILE_BYTES`
bytes, parses them, and checks what only this machine can tell: that ``files.roots``
exist (each is taken with its symlinks resolved, as the paths checked against it are),
and that ``exec.run_as_user`` names a user this worker can become (it runs as root, or
as that user already). A missing file is no policy unless it was named explicitly.
Every problem is a :class:`~leapcore.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import attrs

from ..errors import ConfigError
from ..proto.limits import POLICY_MAX_FILE_BYTES
from ..proto.worker_policy import ALLOW_EVERYTHING, WorkerPolicy, parse_policy

__all__ = ["load_policy"]


def load_policy(path: Path, *, required: bool, home: Path | None = None) -> WorkerPolicy:
    """The policy in ``path``; with ``required`` False a missing file means no policy
    (:data:`~leapcore.proto.worker_policy.ALLOW_EVERYTHING`). ``home``: what ``~``
    means in ``files.roots`` (default: this user's home)."""
    try:
        with open(path, "rb") as file:
            data = file.read(POLICY_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"policy file {path} does not exist") from None
        return ALLOW_EVERYTHING
    except OSError as exc:
        raise ConfigError(f"policy file {path}: {exc.strerror or exc}") from None
    policy = parse_policy(data, source=str(path), home=str(home or Path.home()))
    try:
        return _checked(policy)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _checked(policy: WorkerPolicy) -> WorkerPolicy:
    user = policy.exec.run_as_user
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"exec.run_as_user: no user {user!r} on this machine") from None
        euid = os.geteuid()
        if euid != 0 and euid != entry.pw_uid:
            raise ConfigError(
                f"exec.run_as_user = {user!r}: this worker runs as uid {euid}, not root, and "
                "cannot switch user; run it as root or remove the setting"
            )
    roots = policy.files.roots
    if roots is not None:
        policy = attrs.evolve(
            policy, files=attrs.evolve(policy.files, roots=tuple(_root(r) for r in roots))
        )
    return policy


def _root(root: str) -> str:
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        raise ConfigError(f"files.roots: {root} is not a directory")
    return real
