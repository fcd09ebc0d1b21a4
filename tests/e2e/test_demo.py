"""``rpm-demo --duration``: the README's first command tells the whole story and says nothing was lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.processes import command

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_demo_runs_the_week_and_loses_nothing(tmp_path: Path, pg_admin_url: str, mqtt_broker) -> None:
    # The demo's own embedded services are what a newcomer gets; this test runs exactly those.
    env = {k: v for k, v in os.environ.items() if k not in ("RPM_DATABASE_URL", "RPM_MQTT_URL")}
    result = subprocess.run(
        [*command("rpm-demo"), "--data-dir", str(tmp_path / "demo"), "--duration", "40", "--week-seconds", "16"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0
    assert summary["readings_sent"] > 50 and summary["readings_stored"] >= summary["readings_sent"]
    assert summary["alerts_opened"] >= 1 and summary["alerts_resolved"] >= 1
    assert summary["dead_letters"] == 0
