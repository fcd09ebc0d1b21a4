"""Who may use the local page: someone who knows the claim code (printed on the box) or pressed the
gateway's button, and then holds a session cookie (HttpOnly, SameSite=Strict) with a CSRF token.

The claim code is 60 random bits, so guessing is hopeless anyway; failed attempts are still limited
(per client address, and for all clients together, so many addresses on one LAN do not multiply the
budget) and each refusal says when to try again. Sessions live in memory only: a restart signs
everyone out, which on a box in a living room is a feature.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from gateway.provisioning.identity import normalise_claim_code

MAX_SESSIONS = 32
FAILURE_WINDOW_S = 600.0
FAILURES_PER_CLIENT = 5
FAILURES_ALL_CLIENTS = 30
MAX_TRACKED_CLIENTS = 1024


class SignInError(GatewayError):
    """A sign-in that is refused; ``status`` is the HTTP status the page answers with."""

    status = 401


class WrongCode(SignInError):
    pass


class TooManyAttempts(SignInError):
    status = 429

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong codes; try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass
class Session:
    token: str
    csrf: str
    expires: float
    how: str
    """``code`` or ``button``."""


class SignIn:
    def __init__(self, claim_code: Callable[[], str | None], *, session_s: float, button_file: Path | None = None,
                 button_window_s: float = 120.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``claim_code``: the gateway's code (None: not known, only the button lets anyone in)."""
        self._claim_code = claim_code
        self.session_s = session_s
        self.button_file = button_file
        self.button_window_s = button_window_s
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._all_failures: deque[float] = deque()
        self._pressed_at: float | None = None
        self._used_press_mtime = self._button_mtime()
        """A press older than the gateway's start does not count (the file may be left from last week)."""

    # ------------------------------------------------------------------------------ the code

    def with_code(self, client: str, code: str) -> Session:
        with self._lock:
            self._check_budget(client)
            expected = self._claim_code()
            if expected and hmac.compare_digest(normalise_claim_code(code[:64]).encode(),
                                                    normalise_claim_code(expected).encode()):
                self._failures.pop(client, None)
                return self._new_session("code")
            now = self._clock()
            self._failures.setdefault(client, deque()).append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)
            self._all_failures.append(now)
        raise WrongCode("that is not this gateway's code")

    def _check_budget(self, client: str) -> None:
        now = self._clock()
        horizon = now - FAILURE_WINDOW_S
        while self._all_failures and self._all_failures[0] < horizon:
            self._all_failures.popleft()
        mine = self._failures.get(client)
        if mine is not None:
            while mine and mine[0] < horizon:
                mine.popleft()
        for failures, limit in ((mine, FAILURES_PER_CLIENT), (self._all_failures, FAILURES_ALL_CLIENTS)):
            if failures is not None and len(failures) >= limit:
                raise TooManyAttempts(max(1.0, failures[0] + FAILURE_WINDOW_S - now))

    # ------------------------------------------------------------------------------ the button

    def press_button(self) -> None:
        """The in-process button (a GPIO handler calls it; so can a test)."""
        with self._lock:
            self._pressed_at = self._clock()

    def with_button(self) -> Session | None:
        """A session if the button was pressed in the last ``button_window_s`` (each press lets one in)."""
        with self._lock:
            if self._pressed_at is not None and self._clock() - self._pressed_at <= self.button_window_s:
                self._pressed_at = None
                return self._new_session("button")
            mtime = self._button_mtime()
            if mtime is not None and mtime != self._used_press_mtime \
                    and self._wall() - mtime <= self.button_window_s:
                self._used_press_mtime = mtime
                return self._new_session("button")
        return None

    def _button_mtime(self) -> float | None:
        if self.button_file is None:
            return None
        try:
            return self.button_file.stat().st_mtime
        except OSError:
            return None

    # ------------------------------------------------------------------------------ sessions

    def _new_session(self, how: str) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), self._clock() + self.session_s, how)
        self._sessions[session.token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session(self, token: str | None) -> Session | None:
        """The live session for a cookie's token (its lifetime renewed), else None."""
        if not token or len(token) > 128:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            now = self._clock()
            if now >= session.expires:
                del self._sessions[token]
                return None
            session.expires = now + self.session_s
            self._sessions.move_to_end(token)
            return session

    def end(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)
