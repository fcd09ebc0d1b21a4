"""A mosquitto of a test's own, on a fixed port it can stop and start again (a broker restart), with
persistence off (a restart forgets every session and queued message) and optional password auth."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cloud.embedded import free_port, mosquitto_binary, port_open, wait_for_port


class PrivateMosquitto:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, require_client_cert: bool = False) -> None:
        """``tls``: (CA, server certificate, server key) for a TLS listener."""
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("needs the mosquitto binary (broker restarts and password auth)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self.tls = tls is not None
        lines = [f"listener {self.port} {self.host}", "persistence false", "max_queued_messages 1000000",
                 "max_inflight_messages 1000", "max_packet_size 16777216"]
        if tls:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dir.
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        if users:
            passwd_tool = shutil.which("mosquitto_passwd")
            if passwd_tool is None:
                pytest.skip("needs mosquitto_passwd for password auth")
            passwd = workdir / "passwd"
            for user, password in users.items():
                subprocess.run([passwd_tool, "-b", *([] if passwd.exists() else ["-c"]), str(passwd), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> PrivateMosquitto:
        self._process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, 10, "private mosquitto")
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()  # abrupt, like a crash: no goodbye to clients
            self._process.wait(10)
            self._process = None
        # The port must be free before a restart binds it again.
        for _ in range(100):
            if not port_open(self.host, self.port, 0.05):
                break
