"""A&D-style weighing data lines (balances and weighing indicators) → body weight.

Follows ``specs/serial-protocols.md`` section 2, which summarises A&D's published output formats
(e.g. the FX-i/GX series "A&D standard format": ``ST,+00123.45  g``; the AD-4329/AD-4406 indicator
format: ``ST,GS,+0123.45kg``; overload ``OL,+9999999E+19`` / ``OL,GS,+    .  kg``; the CSV variant
separating the unit with a comma). Header ``ST`` stable, ``US`` unstable, ``OL`` overload, ``QT``
count; second header ``GS`` gross, ``NT`` net, ``TR`` tare.

Pure: one line in (with or without its CR LF), a :class:`ScaleLine` or a Measurement out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.codecs.common import InvalidFieldError, Measurement, NoReadingError, Quantity, TruncatedError

PROFILE = "serial.ad_scale"

HEADERS = {"ST": "stable", "US": "unstable", "OL": "overload", "QT": "count"}
WEIGHT_KINDS = {"GS": "gross", "NT": "net", "TR": "tare"}
# Units a patient scale reports, as UCUM codes of the metric catalogue.
_UNITS = {"kg": "kg", "lb": "[lb_av]"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


@dataclass(frozen=True, slots=True)
class ScaleLine:
    header: str
    """``ST``, ``US``, ``OL`` or ``QT``."""
    weight_kind: str | None
    """``GS``, ``NT`` or ``TR`` in the indicator form; None in the balance form."""
    value: float | None
    """The signed value; None on an overload line."""
    unit: str | None
    """The unit as printed, stripped (``kg``, ``lb``, ``g``)."""
    raw: bytes

    @property
    def stable(self) -> bool:
        return self.header == "ST"

    @property
    def overload(self) -> bool:
        return self.header == "OL"


def parse_line(data: bytes) -> ScaleLine:
    """Split one line into header(s), value and unit; an overload line has no value."""
    raw = bytes(data)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        raise InvalidFieldError("line", err.start, "not ASCII (wrong baud rate or parity?)") from None
    text = text.rstrip("\r\n")
    if len(text) < 3:
        raise TruncatedError("header", 0, 3, len(text))
    header = text[:2]
    if header not in HEADERS:
        raise InvalidFieldError("header", 0, f"expected one of {', '.join(HEADERS)}, got {header!r}")
    if text[2] != ",":
        raise InvalidFieldError("separator", 2, f"expected ',' after the header, got {text[2]!r}")
    rest, offset = text[3:], 3
    weight_kind = None
    if len(rest) >= 3 and rest[:2] in WEIGHT_KINDS and rest[2] == ",":
        weight_kind, rest, offset = rest[:2], rest[3:], 6
    # The data: sign, digits (leading zeros or spaces), a decimal point; then the unit, either padded
    # on the left (balance, 3 chars), attached (indicator, 2 chars) or after a comma (CSV variant).
    match = re.match(r"^([+-]?[0-9 .E+-]*?[0-9 .])\s*,?\s*([A-Za-z%]*)\s*$", rest)
    if match is None:
        raise InvalidFieldError("data", offset, f"cannot read a value and a unit from {rest!r}")
    number_text, unit = match.group(1).replace(" ", ""), match.group(2) or None
    if header == "OL":
        return ScaleLine(header, weight_kind, None, unit, raw)
    if not _NUMBER.match(number_text):
        raise InvalidFieldError("data", offset, f"not a number: {match.group(1)!r}")
    return ScaleLine(header, weight_kind, float(number_text), unit, raw)


def weight_quantity(line: ScaleLine) -> Quantity:
    """The line's weight in a catalogue unit; other units (g, ct, pcs) are not body weights."""
    if line.value is None:
        raise NoReadingError("no reading: overload line (the load exceeds the scale's capacity)")
    unit = _UNITS.get((line.unit or "").lower())
    if unit is None:
        raise InvalidFieldError("unit", None, f"{line.unit!r} is not a body-weight unit (set the scale to kg or lb)")
    return Quantity(line.value, unit)


def decode_line_reading(data: bytes) -> Measurement:
    """``rpm-gateway decode --profile serial.ad_scale``: one stable gross or net weight line."""
    line = parse_line(data)
    if line.overload:
        raise NoReadingError("no reading: overload line (the load exceeds the scale's capacity)")
    if line.header == "QT":
        raise NoReadingError("no reading: a count (QT) line, not a weight")
    if line.header == "US":
        raise NoReadingError("no reading: unstable weight (the scale is still settling)")
    if line.weight_kind == "TR":
        raise NoReadingError("no reading: a tare (TR) line, not the patient's weight")
    quantity = weight_quantity(line)
    flags: tuple[str, ...] = ()
    if quantity.value < 0:  # type: ignore[operator]
        raise NoReadingError(f"no reading: negative weight {quantity.value} (scale not zeroed)")
    details = {"weight_kind": WEIGHT_KINDS[line.weight_kind]} if line.weight_kind else {}
    return Measurement(
        profile=PROFILE,
        kind="body_weight",
        values={"body_weight": quantity},
        flags=flags,
        raw=line.raw,
        details=details,
    )
