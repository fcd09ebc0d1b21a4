"""What every codec returns and raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway defines (see :mod:`gateway.errors`). It lives here, at the bottom of
    the gateway's layers, because codecs may import only codecs and the metric catalogue."""


class DecodeError(GatewayError, ValueError):
    """A frame could not be decoded. ``str(err)`` is one line that says what is wrong and where."""

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.offset = offset


class TruncatedError(DecodeError):
    """The frame ends before a field its flags (or its length byte) announce."""

    def __init__(self, field: str, offset: int, needed: int, length: int) -> None:
        super().__init__(
            f"truncated: {field} needs {needed} byte(s) at byte {offset}, frame has {length} bytes",
            field=field,
            offset=offset,
        )
        self.needed = needed
        self.length = length


class InvalidFieldError(DecodeError):
    """A field holds a value the specification does not allow."""

    def __init__(self, field: str, offset: int | None, reason: str) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"invalid {field}{where}: {reason}", field=field, offset=offset)


class ChecksumError(DecodeError):
    """A framed message's checksum does not match its bytes."""

    def __init__(self, expected: int | str, actual: int | str, offset: int | None = None) -> None:
        super().__init__(
            f"checksum mismatch: frame says {actual!s}, bytes give {expected!s}", field="checksum", offset=offset
        )


class NoReadingError(DecodeError):
    """A well-formed frame that carries no reading (a header record, an overload line, a status page)."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """A value in the unit the device reported (a UCUM code); ``value`` is a tuple for list metrics."""

    value: float | tuple[float, ...]
    unit: str


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Measurement:
    """One decoded measurement, in the device's own units and time.

    ``values`` maps metric names of ``gateway.metrics`` to the quantity as sent; metrics the frame
    carries as NaN/NRes are left out. ``device_time`` is the device's naive user-facing time, or None.
    ``details`` holds profile-specific facts that are not metric values (sample type, meal context).
    """

    profile: str
    kind: str
    values: Mapping[str, Quantity]
    device_time: datetime | None = None
    user_index: int | None = None
    sequence: int | None = None
    flags: tuple[str, ...] = ()
    raw: bytes = b""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _frozen(self.values))
        object.__setattr__(self, "details", _frozen(self.details))


class Reader:
    """Sequential little-endian field reader that reports truncation with the field name and offset."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedError(field, self.pos, n, len(self.data))
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def s16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little", signed=True)

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")
