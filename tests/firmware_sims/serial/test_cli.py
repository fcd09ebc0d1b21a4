"""``rpm-sim serial`` runs a device on a pty that pyserial opens like any port."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import serial

pytestmark = pytest.mark.unit


def test_rpm_sim_serial_scale_serves_on_the_printed_path(tmp_path) -> None:
    link = tmp_path / "ttyScale"
    process = subprocess.Popen(
        [sys.executable, "-m", "firmware_sims.cli", "serial", "scale", "--link", str(link), "--framing", "8N1",
         "--baud", "9600", "--interval", "0.01", "--weights", "70.5"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        path = process.stdout.readline().strip()
        assert path == str(link)
        with serial.Serial(path, 9600, timeout=5) as host:
            assert host.read_until(b"\n").startswith(b"ST,+00000.00")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    assert not link.exists()


def test_ant_simulator_refuses_to_run_without_a_network_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "firmware_sims.cli", "serial", "ant"], capture_output=True, text=True, timeout=20,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0 and "network-key" in result.stderr
