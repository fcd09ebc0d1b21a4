"""``rpm-demo --duration``: the README's first command tells the whole story and says nothing was lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import command

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def run_demo(data_dir: Path, *args: str) -> dict:
    # The demo's own embedded services are what a newcomer gets; this test runs exactly those.
    env = {k: v for k, v in os.environ.items() if k not in ("RPM_DATABASE_URL", "RPM_MQTT_URL")}
    result = subprocess.run([*command("rpm-demo"), "--data-dir", str(data_dir), *args],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Outside pytest's basetemp: a concurrent pytest session prunes old basetemps, and this one holds
    # a PostgreSQL data directory across two demo runs.
    path = Path(tempfile.mkdtemp(prefix="rpm-test-demo-"))
    yield path / "demo"
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_the_week_and_loses_nothing_and_again_on_its_data(demo_dir: Path) -> None:
    first = run_demo(demo_dir, "--duration", "40", "--week-seconds", "16")
    assert first["lost"] == 0
    assert first["readings_sent"] > 50 and first["readings_stored"] >= first["readings_sent"]
    assert first["alerts_opened"] >= 1 and first["alerts_resolved"] >= 1
    assert first["dead_letters"] == 0
    # A second run on the same data: the week is played again and its alerts counted again, although
    # they re-open within the suppression window of the first run's (one episode each, not two alerts).
    second = run_demo(demo_dir, "--duration", "30", "--week-seconds", "12")
    assert second["lost"] == 0 and second["readings_stored"] >= second["readings_sent"] > 50
    assert second["alerts_opened"] >= 1 and second["alerts_resolved"] >= 1
