"""Real servers for the channel tests: an SMTP server (aiosmtpd) with STARTTLS or implicit TLS from a
throw-away CA (trustme) and AUTH, and an HTTP endpoint that answers a scripted list of statuses."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.cloud.alerts.webhook_receiver import free_port


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls_version: str | None
    """Of the connection the message came over (None: plain text)."""
    login: str | None


class SmtpServer:
    """``security``: ``starttls`` (STARTTLS required before anything else), ``tls`` (implicit TLS) or
    ``none``. ``users``: AUTH is required when given. ``refuse``: recipients answered 550."""

    def __init__(self, ca: trustme.CA, *, security: str = "starttls", users: dict[str, str] | None = None,
                 refuse: Sequence[str] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[ReceivedMail] = []
        self.received_at: list[float] = []
        """Wall-clock time each message was taken (``time.time()``), in the order of ``received``."""
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        received, received_at, refused = self.received, self.received_at, set(refuse)

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  rcpt_options: list[str]) -> str:
                if address in refused:
                    return "550 5.1.1 no such mailbox"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                ssl_object = server.transport.get_extra_info("ssl_object")
                message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
                received_at.append(time.time())
                received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message,
                                             ssl_object.version() if ssl_object else None, session.auth_data))
                return "250 2.0.0 accepted"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword) and users is not None
                  and users.get(auth_data.login.decode()) == auth_data.password.decode())
            return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)

        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port, "server_hostname": "localhost"}
        if users is not None:
            kwargs.update(authenticator=authenticate, auth_required=True,
                          # Implicit TLS is TLS from the first byte; aiosmtpd only knows about STARTTLS.
                          auth_require_tls=security == "starttls")
        if security == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif security == "tls":
            kwargs.update(ssl_context=context)
        self.controller = Controller(Handler(), **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def ca_file(ca: trustme.CA, directory: Path) -> Path:
    path = directory / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


class HttpEndpoint:
    """A real HTTP server that records each POST and answers the next of ``statuses`` (the last repeats),
    ``delay_s`` after reading the request."""

    def __init__(self, statuses: Sequence[int] = (200,), body: bytes = b"{}", port: int | None = None,
                 delay_s: float = 0.0) -> None:
        self.port = port or free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []
        received, answers = self.received, list(statuses)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), payload))
                time.sleep(delay_s)  # a slow endpoint
                status = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    def __enter__(self) -> HttpEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
