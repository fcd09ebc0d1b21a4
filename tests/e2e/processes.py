"""Run the system's real commands as child processes, for end-to-end tests and their diagnostics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

BIN = Path(sys.executable).parent
T = TypeVar("T")


def command(name: str) -> list[str]:
    """The console script of this environment (``rpm-cloud``, ``rpm-gateway``, ``rpm-sim``)."""
    return [str(BIN / name)]


def identity_of(data_dir: Path) -> tuple[str, str]:
    """(gateway id, claim code) as ``rpm-gateway identity`` prints them for the label on the box."""
    done = subprocess.run([*command("rpm-gateway"), "identity"], env={**os.environ, "RPM_GATEWAY_DATA": str(data_dir)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    return lines["gateway id"], lines["claim code"]


@contextmanager
def running(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process whose output goes to ``log_path``; SIGTERM (then SIGKILL) when the block ends."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, logs: list[Path] = ()) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the children's logs if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def write_gateway_config(path: Path, gateway_id: str, data_dir: Path, broker_url: str, ble: list[str]) -> Path:
    """A ``rpm-gateway run`` config for these tests: simulated BLE with these devices enrolled, no USB,
    fast batches and status."""
    enrolled = ", ".join(f'{{ address = "{address}" }}' for address in ble)
    path.write_text(f"""
gateway_id = "{gateway_id}"
data_dir = "{data_dir}"
status_interval_s = 1
[mqtt]
url = "{broker_url}"
batch_ms = 50
ack_timeout_s = 5
[ble]
backend = "sim"
enrolled = [{enrolled}]
[usb]
enabled = false
""")
    return path
