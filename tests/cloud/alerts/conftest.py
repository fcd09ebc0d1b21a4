from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

# tests/ is on sys.path (rootdir conftest) and holds a folder named cloud/ without __init__.py, so
# "import cloud.alerts" would find the namespace tests/cloud/alerts before the editable install's
# finder is asked. Put the repository first and drop a namespace "cloud" imported by mistake.
_REPO = str(Path(__file__).resolve().parents[3])
if sys.path[0] != _REPO:
    sys.path.insert(0, _REPO)
for _name in [n for n in sys.modules if n == "cloud" or n.startswith("cloud.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session database (each test uses its own patient ids)."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
