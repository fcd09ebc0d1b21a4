"""A bootstrap endpoint that checks the gateway's side of the contract (issue 19), for the gateway's
tests while the cloud's own endpoint (H9) is built beside them: a real HTTP server on 127.0.0.1 that
verifies each poll as the contract says the cloud must — the Ed25519 signature over the exact body
bytes (with ``cryptography``, not the gateway's code), the key pinned to the gateway id on first
contact, ``at`` within 5 minutes, no nonce twice, the claim hash — and answers ``unclaimed`` until the
test claims the gateway with the code a person would type."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CROCKFORD_READS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def code_hash(code: str) -> str:
    """SHA-256 of the claim code as a person may type it (contract: upper case, no dashes, I/L→1, O→0)."""
    typed = code.replace("-", "").replace(" ", "").upper().translate(CROCKFORD_READS)
    return hashlib.sha256(typed.encode()).hexdigest()


class BootstrapServer:
    def __init__(self, *, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        self.polls: list[dict[str, Any]] = []
        self.refusals: list[tuple[int, str]] = []
        self.pinned: dict[str, bytes] = {}
        self.claim_hashes: dict[str, str] = {}
        self.nonces: set[str] = set()
        self.claimed: dict[str, dict[str, Any]] = {}
        """gateway id -> the provisioned answer to give."""
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, answer = server.handle(self.path, body, self.headers.get("X-RPM-Signature") or "")
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bootstrap/v1/poll"

    def __enter__(self) -> BootstrapServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def claim(self, code: str, answer: dict[str, Any]) -> str:
        """What ``POST /v1/gateways/claim`` does: find the gateway by the hash of the typed code."""
        with self.lock:
            wanted = code_hash(code)
            for gateway_id, known in self.claim_hashes.items():
                if known == wanted:
                    self.claimed[gateway_id] = {"state": "provisioned", "gateway_id": gateway_id, **answer}
                    return gateway_id
        raise AssertionError(f"no gateway polled with claim code {code}")

    def _refuse(self, status: int, detail: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append((status, detail))
        return status, {"detail": detail}

    def handle(self, path: str, body: bytes, signature: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if path != "/bootstrap/v1/poll":
                return self._refuse(404, "not found")
            try:
                poll = json.loads(body)
                public = base64.b64decode(poll["public_key"], validate=True)
                scheme, _, value = signature.partition("=")
                if scheme != "ed25519":
                    return self._refuse(401, "signature scheme")
                Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(value), body)
            except (ValueError, KeyError, InvalidSignature) as err:
                return self._refuse(401, f"bad signature or body: {type(err).__name__}")
            gateway_id = poll["gateway_id"]
            at = datetime.fromisoformat(poll["at"].replace("Z", "+00:00"))
            if abs(datetime.now(UTC) - at) > timedelta(minutes=5):
                return self._refuse(401, "clock skew")
            if poll["nonce"] in self.nonces:
                return self._refuse(401, "replayed nonce")
            self.nonces.add(poll["nonce"])
            if self.pinned.setdefault(gateway_id, public) != public:
                return self._refuse(409, "another key for this gateway id")
            self.claim_hashes.setdefault(gateway_id, poll["claim_code_sha256"])
            self.polls.append(poll)
            answer = self.claimed.get(gateway_id)
            if answer is None:
                return 202, {"state": "unclaimed", "retry_after_s": self.retry_after_s}
            return 200, answer
