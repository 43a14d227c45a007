"""Shared fixtures for the sans-IO crypto core tests.

The known-answer vectors in ``tests/support/vectors`` come from LeapMux's own
implementation (``spec/handshake.md`` §9); :mod:`vectorkit` wraps them (:class:`Vector`)
and replays them without SLH-DSA signing. The fixtures here hand them to tests.

Post-quantum key generation (~10 ms) and above all SLH-DSA signing (~125 ms)
are expensive: the generated keypair and the one real post-quantum handshake
are session-scoped and shared by every test that needs them.

**No secret in any log** (:mod:`support.secretlog`): every log record emitted in this
process goes to ``<basetemp>/session-logs/inprocess.log`` (as JSON lines, fields included;
the root logger is at INFO at least, the websockets library quieted as the daemons do); the
hub store's minting methods record what they return; at the end of the session every
collected log (that file, what :mod:`support.procs` appended, every ``*.err``) is read
once, and a line holding a secret fails the run (exit status 1, the lines listed with the
secret masked).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from support import pgserver, secretlog
from support.vectorkit import (
    ALL_VECTORS,
    PQ_VECTORS,
    Vector,
    keypair_from_vector,
    load_vector,
)

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.store.hubstore import HubStore
from leapcore_cli.logs import JsonFormatter, quiet_libraries

# Crypto calls vary a lot in time on a loaded 2-core machine: no per-example deadlines. In CI
# (CI=true) examples are derandomized so a run is reproducible; locally they stay random.
settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=ALL_VECTORS)
def vector(request: pytest.FixtureRequest) -> Vector:
    """Each of the six known-answer vectors."""
    return load_vector(request.param)


@pytest.fixture(params=PQ_VECTORS)
def pq_vector(request: pytest.FixtureRequest) -> Vector:
    return load_vector(request.param)


@pytest.fixture(params=["pq_seed1", "classic_seed1"])
def mode_vector(request: pytest.FixtureRequest) -> Vector:
    """One vector per mode, for the (expensive) exhaustive hostile-input tests."""
    return load_vector(request.param)


@pytest.fixture(name="load_vector")
def load_vector_fixture() -> Callable[[str], Vector]:
    """Load a vector by name (``pq_seed2``...)."""
    return load_vector


@pytest.fixture(name="keypair_from_vector")
def keypair_from_vector_fixture() -> Callable[[dict[str, Any]], WorkerKeyPair]:
    return keypair_from_vector


@pytest.fixture(scope="session")
def generated_keypair() -> WorkerKeyPair:
    """One freshly generated worker keypair for the whole run (reuse it)."""
    return WorkerKeyPair.generate()


@pytest.fixture(scope="session")
def pq_handshake_keys(generated_keypair: WorkerKeyPair) -> tuple[bytes, bytes]:
    """One real post-quantum handshake (real encapsulation, real SLH-DSA signature).

    Returns the initiator's ``(send_key, receive_key)``; build fresh
    :class:`TransportSession` objects from them instead of sharing sessions.
    """
    initiator = Initiator(generated_keypair.public, EncryptionMode.POST_QUANTUM)
    responder = Responder(generated_keypair, EncryptionMode.POST_QUANTUM)
    responder.read_message1(initiator.write_message1())
    initiator.read_message2(responder.write_message2())
    si, sr = initiator.session(), responder.session()
    assert si._send.key == sr._recv.key and si._recv.key == sr._send.key
    assert si._send.key != si._recv.key
    return si._send.key, si._recv.key


# -- a PostgreSQL server (support.pgserver) ------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    """One real PostgreSQL server for the session (skipped without binaries, unless CI)."""
    bin_dir = pgserver.find_bin_dir()
    if bin_dir is None:
        reason = (
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under "
            "/usr/lib/postgresql/*/bin: install Debian's postgresql package"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    server = pgserver.start_server(bin_dir)
    atexit.register(pgserver.remove, server)  # also when the session is interrupted
    try:
        yield server
    finally:
        pgserver.remove(server)


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> Iterator[str]:
    """The URL of a new, empty database on :func:`pg_server`, dropped after the test."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.release_database(url)


# -- no secret in any log --------------------------------------------------------------------

#: The hub store's methods that mint a secret -> where the secret is in what they return.
_MINTING: dict[str, Callable[[Any], str]] = {
    "create_user": lambda result: result[1],
    "create_token": lambda result: result,
    "mint_registration_key": lambda result: result[1],
    "register_worker": lambda result: result[1],
}
_session_root: list[Path] = []


def _recording(method: Callable[..., Any], pick: Callable[[Any], str]) -> Callable[..., Any]:
    @functools.wraps(method)
    def minted(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        secretlog.record_secret(pick(result))
        return result

    return minted


@pytest.fixture(scope="session", autouse=True)
def _session_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Collect every in-process log record and record every secret the store mints."""
    root = tmp_path_factory.getbasetemp()
    directory = root / "session-logs"
    directory.mkdir(exist_ok=True)
    secretlog.set_log_dir(directory)
    _session_root.append(root)
    handler = logging.FileHandler(directory / "inprocess.log", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.WARNING, logging.INFO))
    quiet_libraries(logging.INFO)
    with pytest.MonkeyPatch.context() as patch:
        for name, pick in _MINTING.items():
            patch.setattr(HubStore, name, _recording(getattr(HubStore, name), pick))
        try:
            yield directory
        finally:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(level)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a collected log holds a secret (see the module docstring)."""
    if not _session_root:
        return
    root = _session_root[-1]
    secrets = secretlog.recorded() | secretlog.harvest_secrets(root)
    leaks = secretlog.find_leaks(secrets, secretlog.log_files(root))
    if not leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{leak.path}:{leak.line}: secret {leak.masked}: {leak.text}" for leak in leaks[:50]]
    if len(leaks) > 50:
        lines.append(f"... and {len(leaks) - 50} more")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", f"{len(leaks)} secret(s) found in logs", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    if session.exitstatus == pytest.ExitCode.OK:  # an interrupted run keeps its own status
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
