"""Structured logs for the gateway: one line per event, JSON when ``[log] json = true``.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` and any ``extra={...}`` fields,
so a log shipper (journald → Loki, Vector, Fluent Bit) indexes them without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.config import LogConfig

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Set up the root logger once for the process (replacing handlers a previous call installed)."""
    level = logging.getLevelName(config.level.upper())
    if not isinstance(level, int):
        raise ValueError(f"log.level: unknown level {config.level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if config.json_format else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_rpm_gateway", False):
            root.removeHandler(old)
    handler._rpm_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # paho logs every packet at DEBUG; keep it to warnings unless asked for.
    logging.getLogger("paho").setLevel(max(level, logging.WARNING))
