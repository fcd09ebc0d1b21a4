from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

# See tests/cloud/alerts/conftest.py: the repository must come before tests/ (which holds cloud/).
_REPO = str(Path(__file__).resolve().parents[3])
if sys.path[0] != _REPO:
    sys.path.insert(0, _REPO)
for _name in [n for n in sys.modules if n == "cloud" or n.startswith("cloud.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]
# The scripted patient helpers are shared with the alerts tests.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "alerts"))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
