"""Child processes for fault tests and benchmarks: the real ``rpm-cloud ingest`` and a gateway process
(``gateway_child.py``), with their output collected by a thread so a pipe never blocks them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
CHILD = REPO / "tests" / "gateway" / "gateway_child.py"


class LoggedProcess:
    """A child process whose output lines are collected by a thread (so it never blocks on a pipe)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def count(self, prefix: str) -> int:
        return sum(1 for line in list(self.lines) if line.startswith(prefix))

    def terminate(self, within_s: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(within_s)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])


class Ingest(LoggedProcess):
    def __init__(self, database_url: str, mqtt_url: str, client_id: str) -> None:
        super().__init__([sys.executable, "-m", "cloud.cli", "ingest", "--workers", "1", "--client-id", client_id],
                         env={"RPM_DATABASE_URL": database_url, "RPM_MQTT_URL": mqtt_url})
        try:
            wait_until(lambda: self.saw("consuming with MQTT") or self.process.poll() is not None, 30,
                       "ingest consuming")
        except AssertionError:
            self.kill()
            raise
        if self.process.poll() is not None:
            raise AssertionError(f"ingest exited:\n{self.tail()}")


class GatewayProcess(LoggedProcess):
    def __init__(self, config: Path, start: int, count: int, rate: float) -> None:
        super().__init__([sys.executable, str(CHILD), str(config), str(start), str(count), str(rate)])

    def stored(self) -> int:
        return self.count("stored ")
