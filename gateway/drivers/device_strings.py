"""Device strings (model, manufacturer, serial, firmware) as a device sends them, made safe to keep.

BLE Device Information strings are ``utf8s`` (GATT Specification Supplement) and serial headers are
whatever the firmware writes; in practice they come NUL-padded, NUL-terminated with garbage after
it, with invalid UTF-8, control characters, or far too long. Such a string must never cost a reading
(PostgreSQL refuses a NUL in text; a control character corrupts a CSV or a log line), so every driver
that reads one passes it through :func:`clean_device_string`, and :func:`gateway.readings.normalise.to_reading`
does once more for strings that came from elsewhere (USB descriptors). The cloud checks again.
"""

from __future__ import annotations

import unicodedata

MAX_DEVICE_STRING = 64
"""Characters kept; longer strings are cut (a model or serial longer than this is not one)."""

# Control (Cc), format (Cf: zero-width and bidirectional overrides that make a string display as
# something else) and lone surrogates (Cs) never belong in a device name.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def clean_device_string(value: str | bytes | bytearray | None) -> str | None:
    """The printable text of a device string, or None when nothing printable is left.

    Bytes are decoded as UTF-8 with invalid sequences replaced (U+FFFD shows a reader that the device
    sent something unreadable there); NUL and other control and format characters are dropped, any
    whitespace becomes one space, the ends are trimmed, and the result is cut to
    :data:`MAX_DEVICE_STRING` characters. Idempotent: a clean string comes back unchanged.
    """
    if value is None:
        return None
    text = bytes(value).decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else str(value)
    text = unicodedata.normalize("NFC", text)
    kept: list[str] = []
    for char in text:
        if char.isspace():
            if kept and kept[-1] != " ":
                kept.append(" ")
            continue
        if unicodedata.category(char) in _DROPPED_CATEGORIES:
            continue
        kept.append(char)
    cleaned = "".join(kept).strip()[:MAX_DEVICE_STRING].rstrip()
    return cleaned or None
