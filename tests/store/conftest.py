"""The hub store on both backends: ``make_store`` (and ``store``) run each test that uses
them once on SQLite and once on PostgreSQL (a fresh database per test, on the session's
server: ``pg_server`` in the top conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.storekit import BACKENDS, StoreMaker

from leapcore.store.hubstore import HubStore


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    maker = StoreMaker(request.param, tmp_path, server)
    try:
        yield maker
    finally:
        maker.close()


@pytest.fixture
def store(make_store: StoreMaker) -> HubStore:
    return make_store.open()
