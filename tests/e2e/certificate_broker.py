"""A private mosquitto run from ``deploy/mosquitto/mosquitto.certificates.conf`` (the client-certificate
variant): the gateways' listener keeps its TLS with ``require_certificate`` and ``use_identity_as_username``
(its server certificate and the gateway CA from ``trustme``); every listener moves to a free 127.0.0.1 port,
the services' listeners lose their TLS (as in tests/deploy/deploy_broker.py), container paths go to a temp
dir. The gateway CA's key is written out for the cloud to sign gateways' CSRs with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme

from cloud.embedded import free_port, mosquitto_binary
from tests.deploy.deploy_broker import (
    CONTAINER_CONFIG,
    DEPLOY_MOSQUITTO,
    EXTERNAL_PORT,
    INTERNAL_PORT,
    TLS_OPTIONS,
    MosquittoProcess,
    config_file_name,
    parse_listeners,
)

VARIANT = DEPLOY_MOSQUITTO / "mosquitto.certificates.conf"


class CertificateMosquitto(MosquittoProcess):
    what = "certificate variant"

    def __init__(self, workdir: Path, *, internal: dict[str, str]) -> None:
        binary, passwd_tool = mosquitto_binary(), shutil.which("mosquitto_passwd")
        if binary is None or passwd_tool is None:
            pytest.skip("needs the mosquitto and mosquitto_passwd binaries (apt-get install mosquitto)")
        self.binary, self.workdir, self.host = binary, workdir, "127.0.0.1"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        text = VARIANT.read_text()
        _, listeners = parse_listeners(text)
        gateways = next(x for x in listeners if x.port == EXTERNAL_PORT).options
        assert gateways.get("require_certificate") == "true" and gateways.get("use_identity_as_username") == "true"
        assert "password_file" not in gateways
        self.ports = {x.port: free_port() for x in listeners}
        self.ca = trustme.CA(organization_name="RPM deployment")
        self.ca_cert, self.ca_key = workdir / "gateway-ca.crt", workdir / "gateway-ca.key"
        self.ca.cert_pem.write_to_path(str(self.ca_cert))
        self.ca.private_key_pem.write_to_path(str(self.ca_key))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert, self.server_key = workdir / "server.crt", workdir / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        internal_file = next(x for x in listeners if x.port == INTERNAL_PORT).options["password_file"]
        self.internal_passwd = workdir / config_file_name(internal_file)
        self.internal_passwd.touch()
        for user, password in internal.items():
            subprocess.run([passwd_tool, "-b", str(self.internal_passwd), user, password], check=True,
                           capture_output=True)
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(self._adapt(text))
        self._process: subprocess.Popen[bytes] | None = None

    def _adapt(self, text: str) -> str:
        lines = ["user root"] if os.geteuid() == 0 else []
        files = {"server.crt": self.server_cert, "server.key": self.server_key, "gateway-ca.crt": self.ca_cert}
        current: int | None = None
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "listener":
                current = int(value.split()[0])
                line = f"listener {self.ports[current]} {self.host}"
            elif key in TLS_OPTIONS and current != EXTERNAL_PORT:
                continue
            elif key in ("certfile", "keyfile", "cafile"):
                line = f"{key} {files[value.rsplit('/', 1)[1]]}"
            elif key == "acl_file":
                line = f"acl_file {DEPLOY_MOSQUITTO / config_file_name(value)}"
            elif key == "password_file":
                line = f"password_file {self.workdir / config_file_name(value)}"
            elif key == "persistence_location":
                line = f"persistence_location {self.workdir / 'data'}/"
            elif not line.lstrip().startswith("#") and CONTAINER_CONFIG in line:
                raise AssertionError(f"variant config line needs a test mapping: {line!r}")
            lines.append(line)
        lines += [f"log_dest file {self.log}", "log_type information"]
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def gateway_url(self) -> str:
        return f"mqtts://{self.host}:{self.external_port}"
