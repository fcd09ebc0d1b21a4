"""Every cloud process logs one line per event with an ISO-8601 UTC timestamp, the level, the process
name and the logger: plain text by default, JSON lines with ``RPM_LOG_FORMAT=json``, the level from
``RPM_LOG_LEVEL`` (``rpm-cloud migrate`` as the example: a real process on a real database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def migrate(database_url: str, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "migrate", "--database-url", database_url],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_json_lines_carry_a_utc_timestamp_level_process_and_logger(empty_database_url: str) -> None:
    lines = migrate(empty_database_url, RPM_LOG_FORMAT="json", RPM_LOG_LEVEL="info")
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    applied = [e for e in entries if e["msg"].startswith("applied migration")]
    assert applied, lines
    entry = applied[0]
    assert (entry["level"], entry["logger"], entry["process_name"]) == ("INFO", "cloud.db.migrate", "migrate")
    assert isinstance(entry["pid"], int)
    assert datetime.fromisoformat(entry["ts"]).utcoffset() == timedelta(0)


def test_the_level_comes_from_the_environment(empty_database_url: str) -> None:
    assert migrate(empty_database_url, RPM_LOG_FORMAT="plain", RPM_LOG_LEVEL="warning") == []


def test_an_unknown_level_is_refused_naming_it(empty_database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "migrate", "--database-url", empty_database_url],
        cwd=REPO,
        env={**os.environ, "RPM_LOG_LEVEL": "chatty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "error: settings: RPM_LOG_LEVEL: unknown log level 'chatty' (DEBUG, INFO, WARNING, ERROR or CRITICAL)"]
