"""What makes two copies of one reading id the same record: :func:`content_sha`.

A reading id is deterministic and predictable (``gateway.contract.compute_reading_id``), so the cloud
cannot take "id already stored" to mean "already have it": a copy with other content is an *id
conflict*, never acked as a duplicate. The hash covers the record's own content, what the device
said: device uid, kind, user index, the device's own time, its sequence number, the values (value,
unit, original value and unit) and the raw frame. It leaves out what legitimately differs between
two honest copies of one record: ``measured_at`` and the clock judgement (they move when the
gateway's estimate of the device clock moves), flags (``clock_unset`` and ``out_of_plausible_range``
are the gateway's judgement), ``received_at``, the batch, and the device's descriptive strings
(model, serial, manufacturer, profile: a firmware update or a cleaner may change them).
"""

from __future__ import annotations

import hashlib

from gateway.contract import Reading

_NONE = "\x1d"
"""Stands for None. The contract refuses control characters in every string a reading carries, so
neither this nor the separator can occur inside a field: the joined text is unambiguous."""
_SEP = "\x1f"


def _number(value: float | list[float] | None) -> str:
    # 128 and 128.0 are the same value: the hash must not depend on how a sender spelled it.
    if value is None:
        return _NONE
    if isinstance(value, list):
        return ",".join([repr(float(v)) for v in value])
    return repr(float(value))


def content_sha(reading: Reading) -> str:
    """32 hex digits of SHA-256 over the reading's content (see the module docstring). On ingest's hot
    path (once per reading), hence fields joined by a separator rather than a JSON document."""
    parts = [reading.device.uid, str(reading.kind), _NONE if reading.user_index is None else str(reading.user_index),
             reading.device_time.isoformat() if reading.device_time else _NONE,
             _NONE if reading.sequence is None else str(reading.sequence), reading.raw]
    values = reading.values
    for name in sorted(values):
        value = values[name]
        parts += (name, _number(value.value), value.unit, _number(value.original_value),
                  _NONE if value.original_unit is None else value.original_unit)
    return hashlib.sha256(_SEP.join(parts).encode()).hexdigest()[:32]
