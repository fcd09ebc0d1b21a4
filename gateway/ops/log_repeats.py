"""One traceback per error, then one line with a counter: a device session that crashes every few
seconds on the same full disk must not bury the log (and wear the SD card) in identical tracebacks.

:class:`RepeatedTracebacks` is a handler filter: the first record carrying an exception logs its
traceback whole; a record with the same logger, exception type and raising line within
``window_s`` keeps its message but loses the traceback and gains ``[same error, seen N times;
traceback logged once]``. The message itself may differ (counts, addresses): the place the error was
raised is what makes it "the same".
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

MAX_KEYS = 1000


class RepeatedTracebacks(logging.Filter):
    def __init__(self, window_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, str, str, int], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        error = record.exc_info[1]
        frames = traceback.extract_tb(error.__traceback__)
        where = frames[-1] if frames else None
        key = (record.name, type(error).__qualname__, where.filename if where else "",
               (where.lineno or 0) if where else 0)
        now = self._clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[1] > self.window_s:
            if len(self._seen) >= MAX_KEYS:
                self._seen.clear()
            self._seen[key] = [1, now]
            return True
        entry[0] += 1
        record.msg = (f"{record.getMessage()} [{type(error).__name__}: {error}; same error seen {int(entry[0])} "
                      "times, traceback logged once]")
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def install(logger: logging.Logger | None = None) -> RepeatedTracebacks:
    """Put one :class:`RepeatedTracebacks` on every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    shared = RepeatedTracebacks()
    for handler in target.handlers:
        if not any(isinstance(f, RepeatedTracebacks) for f in handler.filters):
            handler.addFilter(shared)
    return shared
