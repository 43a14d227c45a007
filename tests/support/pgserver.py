"""A real PostgreSQL server for the tests: one per test session, a database per test.

The system's ``initdb`` and ``pg_ctl`` (on PATH, or Debian's ``/usr/lib/postgresql/*/bin``)
make a cluster in a fresh temporary directory; the server listens on a Unix socket in that
directory only (no TCP), with fsync off (a test database need not survive a crash). It is
stopped when the session ends.

PostgreSQL refuses to run as root, and CI runs as root: then the directory belongs to an
unprivileged user (``postgres`` when it exists, else ``nobody``) and ``initdb``/``pg_ctl``
run as that user (``runuser``); the tests connect as that user name (``trust`` auth on the
socket, which only this machine's users reach, in a 0700 directory).

No binaries: the PostgreSQL tests skip, with the reason, unless ``CI`` is set, where a
missing server is a failure (``.ci/run`` installs Debian's ``postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs

#: How long initdb, or a server start, may take on a loaded machine.
START_TIMEOUT = 120.0


def find_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (PATH first, then Debian's layout), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _run_as() -> str | None:
    """The user to run PostgreSQL as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists")


@attrs.define
class PgServer:
    """A running server: :meth:`url` of any database in it, :meth:`create_database`."""

    bin_dir: Path
    root: Path
    user: str
    run_as: str | None
    _counter: Iterator[int] = attrs.field(factory=itertools.count)
    _free: list[str] = attrs.field(factory=list)

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}"

    def _cmd(self, *argv: str) -> list[str]:
        if self.run_as is None:
            return list(argv)
        return ["runuser", "-u", self.run_as, "--", *argv]

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), *args),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        """Run statements (outside a transaction) in database ``dbname``."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    @staticmethod
    def dbname(url: str) -> str:
        return url.split("@/", 1)[1].split("?", 1)[0]

    def create_database(self) -> str:
        """An empty database, for this test only (give it back with
        :meth:`release_database`); reused: ``CREATE DATABASE`` costs ~0.4 s, emptying one
        a few ms."""
        if self._free:
            return self._free.pop()
        name = f"t{next(self._counter)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def release_database(self, url: str) -> None:
        """Empty the database (its other sessions ended, its schema made anew) for reuse."""
        name = self.dbname(url)
        self.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid != pg_backend_pid()"
        )
        self.admin("DROP SCHEMA public CASCADE; CREATE SCHEMA public", name)
        self._free.append(url)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("stop", "-m", "immediate")

    def start(self) -> None:
        log = self.root / "server.log"
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-l",
            str(log),
            "-o",
            f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=16MB",
        )


def start_server(bin_dir: Path) -> PgServer:
    """initdb in a new temporary directory and start the server (see the module)."""
    run_as = _run_as()
    # A short path: a Unix socket's path is at most ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="lcpg", dir="/tmp"))
    user = run_as or pwd.getpwuid(os.geteuid()).pw_name
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    os.chmod(root, 0o700)
    server = PgServer(bin_dir, root, user, run_as)
    subprocess.run(
        server._cmd(
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            user,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ),
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=root,
    )
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def remove(server: PgServer) -> None:
    """Stop the server and delete its directory (again: nothing)."""
    if server.root.exists():
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
