"""The real-stack suites' PostgreSQL server: one per session, a database per stack."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

from .postgres import PostgresServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port, started once and stopped by its pid."""
    with PostgresServer() as server:
        print(f"\n[postgres] {server.bin_dir} ready in {server.startup_seconds:.1f} s on port {server.port}")
        yield server


@pytest.fixture(scope="module")
def metadata_database(postgres: PostgresServer) -> Callable[[], tuple[str, str]]:
    """Makes a new empty database on the session's server; returns ``(name, SQLAlchemy URL)``."""

    def create() -> tuple[str, str]:
        name = f"airflow_{next(_numbers)}"
        return name, postgres.create_database(name)

    return create
