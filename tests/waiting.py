"""Waiting for a condition in tests: poll, return what it gave, fail with what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition", step: float = 0.02) -> T:
    """The first truthy value ``predicate`` returns; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(step)


async def eventually(predicate: Callable[[], object], within_s: float, what: str, step: float = 0.02) -> None:
    """:func:`wait_until` for a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for: {what}")
        await asyncio.sleep(step)
