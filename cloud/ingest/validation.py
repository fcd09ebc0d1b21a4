"""Turn one MQTT message into readings to store, rejections to ack and dead letters to keep.

The contract (``gateway.contract.Batch``) is the only judge of what is valid. The fast path validates
the whole batch in one call; only when that fails is the batch taken apart, so one bad reading in an
otherwise good batch is rejected (and dead-lettered) on its own while its neighbours are stored.
Nothing raises out of :func:`validate_message` or :func:`validate_status`: every failure, expected
or not, becomes a :class:`DeadLetter` with its reason. Reasons and salvaged ids are made printable
(:func:`printable`) so a dead letter can always be written and an ack always serialised, whatever
the message carried.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.contract import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_BATCH,
    Batch,
    GatewayStatus,
    Identifier,
    Reading,
    Rejection,
    UtcDatetime,
    gateway_id_from_topic,
    unprintable_reason,
)

DEAD_LETTER_PAYLOAD_KEEP = 64 * 1024
"""Bytes of an oversize payload kept in its dead letter (the reason records the full size)."""
REASON_MAX = 1000

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#-]{0,127}$")
"""What a salvaged batch or reading id may look like to be echoed back (the contract's id patterns)."""


def printable(text: str, limit: int = REASON_MAX) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x00``), at most ``limit`` long:
    safe in a PostgreSQL text column and in JSON. Reasons quote what a message carried (a metric
    name, a unit), and PostgreSQL refuses NUL: an unwritable dead letter would wedge its message."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                            else f"\\u{ord(m.group()):04x}", text)


def _safe_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _SAFE_ID.match(value) else None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    payload: bytes
    gateway_id: str | None = None
    batch_id: str | None = None
    reading_id: str | None = None


@dataclass(slots=True)
class ValidatedBatch:
    """The result for one readings message. ``ack_gateway``/``batch_id`` are None when no ack is possible."""

    topic: str
    ack_gateway: str | None
    batch_id: str | None
    readings: list[Reading] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class _Envelope(BaseModel):
    """A batch with its readings left unjudged, so each reading can be judged on its own."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1]
    gateway_id: Identifier
    batch_id: Identifier
    sent_at: UtcDatetime
    readings: list[Any] = Field(min_length=1, max_length=MAX_READINGS_PER_BATCH)


def describe(err: ValidationError, limit: int = 3) -> str:
    """A short reason naming the fields at fault (the dead letter keeps the payload for the rest)."""
    parts = []
    for item in err.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch" and isinstance(item.get("input"), str):
            message = unprintable_reason(item["input"]) or message
        parts.append(f"{where}: {message}")
    more = err.error_count() - limit
    return printable("; ".join(parts) + (f" (+{more} more)" if more > 0 else ""))


def _salvage_ids(document: Any) -> tuple[str | None, list[str]]:
    """Batch id and reading ids from a document the contract refused, so the sender can be told."""
    if not isinstance(document, dict):
        return None, []
    readings = document.get("readings")
    ids = []
    if isinstance(readings, list):
        ids = [r["id"] for r in readings if isinstance(r, dict) and _safe_id(r.get("id"))]
    return _safe_id(document.get("batch_id")), ids


def validate_message(topic: str, payload: bytes) -> ValidatedBatch:
    """Judge one readings message; never raises (an unexpected error dead-letters the message)."""
    try:
        return _validate_message(topic, payload)
    except Exception as err:  # a bug or a parser limit must cost one message, never the worker
        reason = printable(f"internal error validating the message: {type(err).__name__}: {err}")
        result = ValidatedBatch(topic, None, None)
        gateway = gateway_id_from_topic(topic)
        result.dead_letters.append(DeadLetter(topic, reason, payload[:MAX_PAYLOAD_BYTES], gateway))
        return result


def _validate_message(topic: str, payload: bytes) -> ValidatedBatch:
    topic_gateway = gateway_id_from_topic(topic)
    result = ValidatedBatch(topic, None, None)
    if topic_gateway is None:
        result.dead_letters.append(DeadLetter(topic, "topic is not rpm/v1/gw/{gateway_id}/readings",
                                              payload[:DEAD_LETTER_PAYLOAD_KEEP]))
        return result
    if len(payload) > MAX_PAYLOAD_BYTES:
        result.dead_letters.append(DeadLetter(
            topic, f"payload of {len(payload)} bytes exceeds the contract's {MAX_PAYLOAD_BYTES}"
            f" (first {DEAD_LETTER_PAYLOAD_KEEP} bytes kept)", payload[:DEAD_LETTER_PAYLOAD_KEEP], topic_gateway))
        return result
    try:
        batch = Batch.model_validate_json(payload)
    except ValidationError:
        return _validate_piecewise(topic, topic_gateway, payload)
    if batch.gateway_id != topic_gateway:
        return _wrong_gateway(topic, topic_gateway, batch.batch_id, batch.gateway_id, [r.id for r in batch.readings],
                              payload)
    result.ack_gateway, result.batch_id, result.readings = topic_gateway, batch.batch_id, list(batch.readings)
    return result


def _wrong_gateway(topic: str, topic_gateway: str, batch_id: str | None, claimed: Any, ids: list[str],
                   payload: bytes) -> ValidatedBatch:
    # The topic is the sender's authenticated identity (the broker's ACL); a batch claiming another
    # gateway is refused whole, and the sender is told so its outbox stops resending it.
    reason = printable(f"batch gateway_id {claimed!r} does not match the topic's gateway {topic_gateway!r}")
    result = ValidatedBatch(topic, topic_gateway if batch_id else None, batch_id)
    result.rejected = [Rejection(id=i, reason=reason) for i in ids]
    result.dead_letters.append(DeadLetter(topic, reason, payload, topic_gateway, batch_id))
    return result


def _validate_piecewise(topic: str, topic_gateway: str, payload: bytes) -> ValidatedBatch:
    result = ValidatedBatch(topic, None, None)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        result.dead_letters.append(DeadLetter(topic, printable(f"not JSON: {err}"), payload, topic_gateway))
        return result
    try:
        envelope = _Envelope.model_validate(document)
    except ValidationError as err:
        batch_id, ids = _salvage_ids(document)
        reason = f"invalid batch: {describe(err)}"
        if batch_id is not None and gateway_id_from_topic(topic) is not None:
            result.ack_gateway, result.batch_id = topic_gateway, batch_id
            result.rejected = [Rejection(id=i, reason=reason) for i in ids]
        result.dead_letters.append(DeadLetter(topic, reason, payload, topic_gateway, batch_id))
        return result
    if envelope.gateway_id != topic_gateway:
        _, ids = _salvage_ids(document)
        return _wrong_gateway(topic, topic_gateway, envelope.batch_id, envelope.gateway_id, ids, payload)
    result.ack_gateway, result.batch_id = topic_gateway, envelope.batch_id
    for index, item in enumerate(envelope.readings):
        try:
            result.readings.append(Reading.model_validate(item))
        except ValidationError as err:
            reading_id = _safe_id(item.get("id")) if isinstance(item, dict) else None
            reason = f"readings[{index}] invalid: {describe(err)}"
            result.rejected.append(Rejection(id=reading_id or f"#{index}", reason=reason))
            result.dead_letters.append(DeadLetter(
                topic, reason, _reading_bytes(item), topic_gateway, envelope.batch_id, reading_id))
    return result


def _reading_bytes(item: Any) -> bytes:
    # ensure_ascii: a lone surrogate the JSON carried stays an escape, so the bytes can always be written.
    try:
        return json.dumps(item, default=str).encode()
    except (ValueError, RecursionError):
        return printable(repr(item), DEAD_LETTER_PAYLOAD_KEEP).encode()


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    gateway_id: str
    status: GatewayStatus


def validate_status(topic: str, payload: bytes) -> StatusUpdate | DeadLetter:
    """Judge one (often retained) gateway status; never raises, so a poisoned retained status costs
    one dead letter per subscription, never a worker."""
    try:
        return _validate_status(topic, payload)
    except Exception as err:
        return DeadLetter(topic, printable(f"internal error validating the status: {type(err).__name__}: {err}"),
                          payload[:MAX_PAYLOAD_BYTES], gateway_id_from_topic(topic))


def _validate_status(topic: str, payload: bytes) -> StatusUpdate | DeadLetter:
    topic_gateway = gateway_id_from_topic(topic)
    if topic_gateway is None or len(payload) > MAX_PAYLOAD_BYTES:
        return DeadLetter(topic, "status message with a bad topic or oversize payload",
                          payload[:DEAD_LETTER_PAYLOAD_KEEP])
    try:
        status = GatewayStatus.model_validate_json(payload)
    except ValidationError as err:
        return DeadLetter(topic, f"invalid gateway status: {describe(err)}", payload, topic_gateway)
    if status.gateway_id != topic_gateway:
        return DeadLetter(topic, f"status gateway_id {status.gateway_id!r} does not match the topic", payload,
                          topic_gateway)
    return StatusUpdate(topic_gateway, status)
