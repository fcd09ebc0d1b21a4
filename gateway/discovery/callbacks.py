"""Calling the status callbacks the device managers are given (plain or async functions)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


async def report_status(on_status: Callable[..., Any] | None, uid: str, **fields: Any) -> None:
    """Tell ``on_status`` about a device; a status consumer's bug never ends a device session."""
    if on_status is None:
        return
    try:
        outcome = on_status(uid, **fields)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:
        log.exception("status callback failed for %s", uid)
