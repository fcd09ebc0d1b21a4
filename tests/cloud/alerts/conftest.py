from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session database (each test uses its own patient ids)."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
