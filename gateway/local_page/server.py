"""The local page's HTTP server: stdlib ``http.server`` on its own threads, inside the gateway process.

Off by default (``[local_page] enabled``); bound to the gateway's private LAN address (``bind = "lan"``),
never to every interface unless the config says ``0.0.0.0``. Everything the page shows or changes is
done on the gateway's event loop (``run_coroutine_threadsafe``), so the page never races the device
managers or the status board.

Defences, each answered with a clear 4xx and never an exception that reaches the gateway: sign-in by
claim code (rate-limited, :mod:`gateway.local_page.auth`) or the gateway's button, then an HttpOnly
SameSite=Strict session cookie; every form carries the session's CSRF token and a cross-origin POST is
refused; bodies over :data:`MAX_BODY` (413), other content types (415), unknown paths (404) and
methods (405); a Host that is not this gateway's (DNS rebinding) gets 421; a strict content policy
(no script at all, styles from the page itself) on every answer; at most :data:`MAX_CONNECTIONS`
requests at once (503), each with a socket timeout so a slow client cannot hold a thread for ever.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.discovery.enrolment import EnrolmentError, EnrolmentStore
from gateway.errors import GatewayError
from gateway.local_page import render
from gateway.local_page.auth import Session, SignIn, SignInError, TooManyAttempts
from gateway.local_page.config import LocalPageConfig
from gateway.local_page.view import PageFacts, gather

log = logging.getLogger(__name__)

COOKIE = "rpm_local"
MAX_BODY = 4096
MAX_CONNECTIONS = 16
SOCKET_TIMEOUT_S = 10.0
LOOP_TIMEOUT_S = 10.0
CONTENT_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                  "frame-ancestors 'none'; base-uri 'none'")
_CSS = resources.files("gateway.local_page").joinpath("static/page.css")


class LocalPageError(GatewayError):
    """The local page cannot start (the address is in use, not this machine's)."""


def lan_address() -> str:
    """This machine's address on its default route if it is a private one (RFC 1918, ULA), else
    127.0.0.1: a gateway plugged straight into the internet must not serve its page there."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing, it only picks a route
        address = probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
    ip = ipaddress.ip_address(address)
    return address if ip.is_private and not ip.is_loopback else "127.0.0.1"


class Refused(Exception):
    """An answer other than the page: status, a title and a sentence, and headers."""

    def __init__(self, status: int, title: str, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.title, self.text, self.headers = status, title, text, headers or {}


class LocalPage:
    """``start()`` binds and serves on a thread; ``stop()`` closes. The gateway object gives ``status()``,
    ``uplink`` and the device decisions (``confirm_candidate``, ``ignore_candidate``, ``unpair_device``,
    ``open_pairing_window``)."""

    def __init__(self, config: LocalPageConfig, gateway: Any, store: EnrolmentStore, *,
                 loop: asyncio.AbstractEventLoop, claim_code: Callable[[], str | None]) -> None:
        self.config = config
        self.gateway = gateway
        self.store = store
        self.loop = loop
        self.sign_in = SignIn(claim_code, session_s=config.session_hours * 3600, button_file=config.button_file,
                              button_window_s=config.button_window_s)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise LocalPageError("the local page is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> None:
        host = lan_address() if self.config.bind == "lan" else self.config.bind
        page = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def process_request(self, request: Any, client_address: Any) -> None:
                if not page._slots.acquire(blocking=False):
                    # Too many at once: a short answer on this thread, never a queue of threads.
                    try:
                        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                        b"Retry-After: 2\r\nConnection: close\r\n\r\n")
                    except OSError:
                        pass
                    self.shutdown_request(request)
                    return
                super().process_request(request, client_address)

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    page._slots.release()

            def handle_error(self, request: Any, client_address: Any) -> None:
                log.exception("local page: request from %s failed", client_address[0])

        try:
            self._server = Server((host, self.config.port), _handler_for(self))
        except OSError as err:
            raise LocalPageError(f"local_page: cannot listen on {host}:{self.config.port}: "
                                 f"{err.strerror or err}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-page", daemon=True)
        self._thread.start()
        log.info("local page on %s (sign in with the claim code%s)", self.url,
                 " or the gateway's button" if self.config.button_file else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------------------ on the loop

    def on_loop(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the gateway's event loop and return its result (the page's one way in)."""

        async def run() -> Any:
            return work()

        try:
            future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        except RuntimeError:  # the loop is closed: the gateway is stopping
            raise Refused(503, "Stopping", "The gateway is restarting. Try again in a minute.") from None
        try:
            return future.result(LOOP_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise Refused(503, "Busy", "The gateway is busy. Try again in a moment.") from None

    def facts(self) -> PageFacts:
        return self.on_loop(lambda: gather(self.gateway, self.store))


def _handler_for(page: LocalPage) -> type[BaseHTTPRequestHandler]:
    class Handler(PageHandler):
        pass

    Handler.page = page
    return Handler


class PageHandler(BaseHTTPRequestHandler):
    page: LocalPage
    server_version = "rpm-gateway"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S

    # ------------------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local page: %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes = b"", *, content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CONTENT_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, refused: Refused) -> None:
        if refused.status >= 400 and refused.status not in (401, 404):
            log.info("local page: %s %s from %s: %d %s", self.command, self.path[:80], self.client_address[0],
                     refused.status, refused.text)
        body = render.message_page(refused.status, refused.title, refused.text).encode()
        self.close_connection = refused.status in (400, 411, 413, 421, 431)
        self._send(refused.status, body, headers=refused.headers)

    def _redirect(self, where: str, *, cookie: str | None = None) -> None:
        headers = {"Location": where}
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        self._send(HTTPStatus.SEE_OTHER, b"", headers=headers)

    def _route(self, handle: Callable[[], None]) -> None:
        try:
            self._check_host()
            handle()
        except Refused as refused:
            self._refuse(refused)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug here is one failed request, never a dead gateway
            log.exception("local page: %s %s failed", self.command, self.path[:80])
            self.close_connection = True
            self._send(500, render.message_page(500, "Something went wrong", "Try again in a moment.").encode())

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip()
        name = urlsplit(f"//{host}").hostname or ""
        try:
            ipaddress.ip_address(name)
            return
        except ValueError:
            pass
        # Names a home network gives a box (mDNS .local, router .lan / .home.arpa, bare hostnames); any
        # other name is a web page's DNS rebinding its own name onto this address.
        if name and ("." not in name or name.endswith((".local", ".lan", ".home.arpa", ".internal"))):
            return
        raise Refused(421, "Wrong address", "Open this page with the gateway's address.")

    def _session(self) -> Session | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            cookie = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return self.page.sign_in.session(morsel.value if morsel else None)

    def _cookie(self, session: Session | None) -> str:
        if session is None:
            return f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        lifetime = int(self.page.sign_in.session_s)
        return f"{COOKIE}={session.token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={lifetime}"

    def _form(self) -> dict[str, str]:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise Refused(411, "Length required", "Send the form with a Content-Length.")
        if length_header is None:
            raise Refused(411, "Length required", "Send the form with a Content-Length.")
        try:
            length = int(length_header)
        except ValueError:
            raise Refused(400, "Bad request", "Content-Length is not a number.") from None
        if length < 0:
            raise Refused(400, "Bad request", "Content-Length is negative.")
        if length > MAX_BODY:
            raise Refused(413, "Too large", f"A form is at most {MAX_BODY} bytes.")
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(415, "Unsupported form", "Send the page's own form.")
        body = self.rfile.read(length)
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "Bad request", "The form could not be read.") from None
        return {key: values[0] for key, values in fields.items()}

    def _same_origin(self) -> None:
        # Browsers send Origin on every form POST (its real value: the referrer policy is same-origin);
        # a client without one (curl) still needs the session's CSRF token for anything but sign-in.
        origin = self.headers.get("Origin")
        if origin is None:
            return
        if origin == "null" or urlsplit(origin).netloc != (self.headers.get("Host") or ""):
            raise Refused(403, "Refused", "This form was sent from another site.")

    # ------------------------------------------------------------------------------ methods

    def do_GET(self) -> None:
        self._route(self._get)

    def do_HEAD(self) -> None:
        self._route(self._get)

    def do_POST(self) -> None:
        self._route(self._post)

    def _not_allowed(self) -> None:
        def refuse() -> None:
            raise Refused(405, "Not allowed", "This page only reads and sends forms.", {"Allow": "GET, HEAD, POST"})

        self._route(refuse)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _get(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/static/page.css":
            self._send(200, _CSS.read_bytes(), content_type="text/css; charset=utf-8")
            return
        if path != "/":
            raise Refused(404, "Not found", "There is no such page on the gateway.")
        session = self._session()
        if session is None:
            session = self.page.sign_in.with_button()
            if session is not None:
                log.info("local page: signed in by the gateway's button from %s", self.client_address[0])
                self._redirect("/", cookie=self._cookie(session))
                return
            page = render.sign_in_page(button=self.page.config.button_file is not None)
            self._send(200, page.encode())
            return
        notice = parse_qs(query, max_num_fields=4).get("done", [None])[0]
        self._send(200, render.status_page(self.page.facts(), session.csrf, notice=notice).encode())

    def _post(self) -> None:
        self._same_origin()
        form = self._form()
        path = self.path.partition("?")[0]
        if path == "/sign-in":
            self._post_sign_in(form)
            return
        session = self._session()
        if session is None:
            raise Refused(401, "Please sign in", "Your sign-in has ended. Sign in again with the gateway's code.")
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            raise Refused(403, "Refused", "This form is out of date. Go back, reload the page and try again.")
        gateway = self.page.gateway
        uid = form.get("uid", "")[:128]
        if path == "/sign-out":
            self.page.sign_in.end(session.token)
            self._redirect("/?done=signed-out", cookie=self._cookie(None))
        elif path == "/pairing":
            self.page.on_loop(lambda: gateway.open_pairing_window(self.page.config.pairing_window_s))
            self._redirect("/?done=pairing#pairing")
        elif path in ("/confirm", "/ignore", "/unpair"):
            if not uid:
                raise Refused(400, "Bad request", "Which device? The form names none.")
            user = form.get("user")
            if user is not None and not (user.isascii() and user.isdigit() and 0 <= int(user) <= 255):
                raise Refused(400, "Bad request", "The user slot must be a number from 0 to 255.")
            action = {"/confirm": lambda: gateway.confirm_candidate(uid, None if user is None else int(user),
                                                                    source="local"),
                      "/ignore": lambda: gateway.ignore_candidate(uid, source="local"),
                      "/unpair": lambda: gateway.unpair_device(uid, source="local")}[path]
            try:
                self.page.on_loop(action)
            except (EnrolmentError, KeyError):
                self._redirect("/?done=gone")
                return
            done = {"/confirm": "confirmed", "/ignore": "ignored", "/unpair": "removed"}[path]
            self._redirect(f"/?done={done}#{'devices' if path == '/confirm' else 'pairing'}")
        else:
            raise Refused(404, "Not found", "There is no such form on the gateway.")

    def _post_sign_in(self, form: dict[str, str]) -> None:
        try:
            session = self.page.sign_in.with_code(self.client_address[0], form.get("code", ""))
        except TooManyAttempts as err:
            page = render.sign_in_page(error=f"Too many wrong codes. Try again in {err.retry_after_s / 60:.0f} "
                                             f"minute(s).", button=self.page.config.button_file is not None)
            self._send(429, page.encode(), headers={"Retry-After": str(int(err.retry_after_s))})
            return
        except SignInError:
            page = render.sign_in_page(error="That is not this gateway's code. Check the code printed on the "
                                             "gateway and try again.", button=self.page.config.button_file is not None)
            self._send(401, page.encode())
            return
        log.info("local page: signed in with the claim code from %s", self.client_address[0])
        self._redirect("/", cookie=self._cookie(session))
