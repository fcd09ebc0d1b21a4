"""Prometheus metrics of ``rpm-cloud ingest``, served as ``/metrics`` on ``--health-port``.

Nothing on the message path calls prometheus_client: the writer thread keeps plain counters
(:class:`~cloud.ingest.consumer.IngestStats` and :class:`WriterMetrics`, updated once per commit),
and each worker's poll loop (every 0.2 s) copies them, with its queue and health, into a flat array
of floats (:func:`worker_values`). With ``--workers N`` those arrays are shared memory written by
the worker processes; :class:`IngestCollector` reads them at scrape time, so one scrape of the
service shows every worker, labelled ``worker``. Each service has its own registry
(:func:`ingest_registry`), never the process-global default one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

COMMIT_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# How the validation and the writer word a dead letter's reason, by its start: the label is the
# class of failure (a bounded set), the dead letter itself keeps the full reason.
_REASON_CLASSES = (
    ("not JSON", "not_json"),
    ("invalid batch", "invalid_batch"),
    ("readings[", "invalid_reading"),
    ("batch gateway_id", "gateway_mismatch"),
    ("topic is not", "bad_topic"),
    ("payload of", "oversize"),
    ("status message with", "invalid_status"),
    ("invalid gateway status", "invalid_status"),
    ("status gateway_id", "invalid_status"),
    ("not stored", "not_stored"),
    ("internal error", "internal_error"),
)
SECURITY_EVENT = "security_event"
"""A reading refused in the transaction: its device is bound to another gateway, or its id is stored
with other content (each is also a security event)."""
DEAD_LETTER_REASONS = (*dict.fromkeys(label for _, label in _REASON_CLASSES), SECURITY_EVENT, "other")


def reason_class(reason: str) -> str:
    """The ``reason`` label of a dead letter with this reason text."""
    for start, label in _REASON_CLASSES:
        if reason.startswith(start):
            return label
    return "other"


@dataclass(slots=True)
class WriterMetrics:
    """Kept by the writer thread, once per committed transaction."""

    commit_buckets: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_SECONDS_BUCKETS) + 1))
    """Commits per latency bucket (not cumulative; the last is beyond the largest bound)."""
    commit_seconds: float = 0.0
    dead_letters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEAD_LETTER_REASONS, 0))

    def committed(self, seconds: float, dead_letter_reasons: Iterable[str], security_events: int) -> None:
        self.commit_buckets[bisect_left(COMMIT_SECONDS_BUCKETS, seconds)] += 1
        self.commit_seconds += seconds
        for reason in dead_letter_reasons:
            self.dead_letters[reason_class(reason)] += 1
        self.dead_letters[SECURITY_EVENT] += security_events


# One worker's values, in this order (the layout of the shared arrays).
_COUNTERS = (
    ("messages", "rpm_ingest_messages", "Messages taken from the broker and committed (readings and statuses)"),
    ("readings_stored", "rpm_ingest_readings_stored", "Readings stored for the first time"),
    ("duplicates", "rpm_ingest_duplicates", "Readings already stored with the same content (replays), acked again"),
    ("commits", "rpm_ingest_commits", "Transactions committed"),
    ("database_errors", "rpm_ingest_database_errors", "Writes retried because the database was unavailable"),
    ("isolated_failures", "rpm_ingest_isolated_failures", "Groups refused by the database and written one by one"),
    ("statuses", "rpm_ingest_gateway_statuses", "Gateway status messages stored"),
    ("security_events", "rpm_ingest_security_events", "Readings refused for a foreign device or an id conflict"),
)
_GAUGES = (
    ("rpm_ingest_queue_depth", "Messages received and waiting for the writer"),
    ("rpm_ingest_in_flight", "Messages received and not yet acknowledged to the broker (queued or being written)"),
    ("rpm_ingest_worker_healthy", "1 while the worker's writer and network threads run and nothing failed"),
    ("rpm_ingest_worker_ready", "1 while the worker is healthy and subscribed"),
)
_DEAD_AT = len(_COUNTERS)
_GAUGES_AT = _DEAD_AT + len(DEAD_LETTER_REASONS)
_BUCKETS_AT = _GAUGES_AT + len(_GAUGES)
_SUM_AT = _BUCKETS_AT + len(COMMIT_SECONDS_BUCKETS) + 1
VALUES = _SUM_AT + 1
"""Length of one worker's array of values."""


def worker_values(
    stats: object, metrics: WriterMetrics, *, queue_depth: int, in_flight: int, healthy: bool, ready: bool
) -> list[float]:
    """One worker's metrics now (``stats``: its ``IngestStats``), as the flat array :class:`IngestCollector` reads."""
    values = [float(getattr(stats, name)) for name, _, _ in _COUNTERS]
    values += [float(metrics.dead_letters[reason]) for reason in DEAD_LETTER_REASONS]
    values += [float(queue_depth), float(in_flight), float(healthy), float(ready)]
    values += [float(count) for count in metrics.commit_buckets]
    values.append(metrics.commit_seconds)
    return values


class IngestCollector(Collector):
    """Reads ``(worker name, values)`` pairs at scrape time, values as :func:`worker_values` makes them."""

    def __init__(self, workers: Callable[[], Iterable[tuple[str, Sequence[float]]]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Any]:
        workers = [(name, list(values)) for name, values in self._workers()]
        for index, (_, metric, text) in enumerate(_COUNTERS):
            family = CounterMetricFamily(metric, text, labels=["worker"])
            for name, values in workers:
                family.add_metric([name], values[index])
            yield family
        dead = CounterMetricFamily(
            "rpm_ingest_dead_letters", "Dead letters written, by class of reason", labels=["worker", "reason"]
        )
        for name, values in workers:
            for offset, reason in enumerate(DEAD_LETTER_REASONS):
                dead.add_metric([name, reason], values[_DEAD_AT + offset])
        yield dead
        for offset, (metric, text) in enumerate(_GAUGES):
            family = GaugeMetricFamily(metric, text, labels=["worker"])
            for name, values in workers:
                family.add_metric([name], values[_GAUGES_AT + offset])
            yield family
        latency = HistogramMetricFamily(
            "rpm_ingest_commit_seconds", "Time to write and commit one transaction", labels=["worker"]
        )
        bounds = [*(str(b) for b in COMMIT_SECONDS_BUCKETS), "+Inf"]
        for name, values in workers:
            cumulative, buckets = 0.0, []
            for bound, count in zip(bounds, values[_BUCKETS_AT:_SUM_AT], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([name], buckets, values[_SUM_AT])
        yield latency


def ingest_registry(workers: Callable[[], Iterable[tuple[str, Sequence[float]]]]) -> CollectorRegistry:
    """A registry of its own (never the process-global default) with the workers' metrics."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(workers))
    return registry
