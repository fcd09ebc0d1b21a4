"""Turn one MQTT message into readings to store, rejections to ack and dead letters to keep.

The contract (``gateway.contract.Batch``) is the only judge of what is valid. The fast path validates
the whole batch in one call; only when that fails is the batch taken apart, so one bad reading in an
otherwise good batch is rejected (and dead-lettered) on its own while its neighbours are stored.
Nothing raises out of :func:`validate_message`: every failure becomes a :class:`DeadLetter`.
"""

from __future__ import annotations

import json
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
)

DEAD_LETTER_PAYLOAD_KEEP = 64 * 1024
"""Bytes of an oversize payload kept in its dead letter (the reason records the full size)."""


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
        parts.append(f"{where}: {item['msg']}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _salvage_ids(document: Any) -> tuple[str | None, list[str]]:
    """Batch id and reading ids from a document the contract refused, so the sender can be told."""
    if not isinstance(document, dict):
        return None, []
    batch_id = document.get("batch_id")
    readings = document.get("readings")
    ids = []
    if isinstance(readings, list):
        ids = [r["id"] for r in readings
               if isinstance(r, dict) and isinstance(r.get("id"), str) and len(r["id"]) <= 128]
    return (batch_id if isinstance(batch_id, str) and len(batch_id) <= 128 else None), ids


def validate_message(topic: str, payload: bytes) -> ValidatedBatch:
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
    reason = f"batch gateway_id {claimed!r} does not match the topic's gateway {topic_gateway!r}"
    result = ValidatedBatch(topic, topic_gateway if batch_id else None, batch_id)
    result.rejected = [Rejection(id=i, reason=reason) for i in ids]
    result.dead_letters.append(DeadLetter(topic, reason, payload, topic_gateway, batch_id))
    return result


def _validate_piecewise(topic: str, topic_gateway: str, payload: bytes) -> ValidatedBatch:
    result = ValidatedBatch(topic, None, None)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        result.dead_letters.append(DeadLetter(topic, f"not JSON: {err}", payload, topic_gateway))
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
            reading_id = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
            reason = f"readings[{index}] invalid: {describe(err)}"
            result.rejected.append(Rejection(id=reading_id or f"#{index}", reason=reason))
            result.dead_letters.append(DeadLetter(
                topic, reason, json.dumps(item, default=str).encode(), topic_gateway, envelope.batch_id,
                reading_id[:128] if reading_id else None))
    return result


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    gateway_id: str
    status: GatewayStatus


def validate_status(topic: str, payload: bytes) -> StatusUpdate | DeadLetter:
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
