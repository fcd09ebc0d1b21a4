"""``rpm-gateway decode --profile PROFILE HEX``: decode one captured frame and print one JSON object.

The output form is fixed by ``specs/metrics.md``: values in canonical units (with the original where
converted), the device's own time, user index, sequence number and flags.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from gateway.codecs.common import DecodeError, Measurement
from gateway.metrics import UnknownUnitError
from gateway.profiles import CODECS, CodecEntry
from gateway.readings.normalise import canonical_values

# Every frame type the profile table (gateway.profiles) names, by its ``--profile`` name.
PROFILES: Mapping[str, CodecEntry] = CODECS
MODEL_PROFILES = frozenset(name for name, entry in CODECS.items() if entry.takes_model)
"""Profiles whose decoder takes a model name (it selects the record layout)."""


class UnknownProfileError(DecodeError):
    pass


def codec_for(profile: str) -> CodecEntry:
    try:
        return PROFILES[profile]
    except KeyError:
        raise UnknownProfileError(f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILES))}") from None


def decoder_for(profile: str) -> Callable[..., Measurement]:
    return codec_for(profile).decode


def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise DecodeError(f"not hex: {text!r}") from None


def measurement_json(profile: str, measurement: Measurement) -> dict[str, Any]:
    values = {}
    for name, value in canonical_values(measurement).items():
        rendered: dict[str, Any] = {"value": value.value, "unit": value.unit}
        if value.original_unit is not None:
            rendered["original_value"] = value.original_value
            rendered["original_unit"] = value.original_unit
        values[name] = rendered
    result: dict[str, Any] = {
        "profile": profile,
        "kind": measurement.kind,
        "values": values,
        "device_time": measurement.device_time.isoformat() if measurement.device_time else None,
        "user_index": measurement.user_index,
        "sequence": measurement.sequence,
        "flags": list(measurement.flags),
    }
    if measurement.details:
        result["details"] = {k: _jsonable(v) for k, v in measurement.details.items()}
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def decode_to_json(profile: str, hex_text: str, model: str | None = None) -> dict[str, Any]:
    codec = codec_for(profile)
    data = parse_hex(hex_text)
    measurement = codec.decode(data, model=model) if codec.takes_model else codec.decode(data)
    return measurement_json(profile, measurement)


def run(profile: str, hex_text: str, model: str | None = None) -> int:
    """The CLI's decode command: JSON on stdout and 0, or one line on stderr and 2."""
    try:
        result = decode_to_json(profile, hex_text, model)
    except (DecodeError, UnknownUnitError) as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # a codec bug must still not print a traceback at the user
        print(
            f"error: internal error in the {profile} decoder: {type(err).__name__}: {_one_line(str(err))}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result))
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())
