"""Optional local Prometheus endpoint (``metrics_port``): the gateway's health for a node exporter
scrape or a technician's curl. Values are read at scrape time from the outbox and the uplink, so
nothing on the reading path pays for metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.store.outbox import Outbox
from gateway.store.uplink import UplinkState

log = logging.getLogger(__name__)


class GatewayCollector(Collector):
    def __init__(self, outbox: Outbox, uplink_state: Callable[[], UplinkState | None],
                 device_count: Callable[[], int]) -> None:
        self._outbox = outbox
        self._uplink_state = uplink_state
        self._device_count = device_count

    def collect(self) -> Iterator[Any]:
        stats = self._outbox.stats()
        yield GaugeMetricFamily("rpm_gateway_outbox_depth", "Readings waiting for the cloud's ack", stats.depth)
        yield GaugeMetricFamily("rpm_gateway_outbox_oldest_age_seconds", "Age of the oldest unacked reading",
                                stats.oldest_age_s or 0.0)
        yield GaugeMetricFamily("rpm_gateway_outbox_full", "1 when new readings cannot be saved (a cap, the budget, "
                                "the disk)", int(stats.full))
        yield GaugeMetricFamily("rpm_gateway_quarantined", "Readings the cloud rejected", stats.quarantined)
        yield GaugeMetricFamily("rpm_gateway_device_quarantined", "Device records the gateway could not turn into "
                                "readings, kept with their bytes", stats.device_quarantined)
        yield CounterMetricFamily("rpm_gateway_device_quarantine_evicted", "Quarantined device records deleted to "
                                  "keep the newest per device", stats.device_quarantine_evicted)
        yield CounterMetricFamily("rpm_gateway_outbox_dropped", "Readings dropped by when_full=drop_oldest",
                                  stats.dropped)
        yield CounterMetricFamily("rpm_gateway_outbox_refused", "Readings of devices with memory refused for lack of "
                                  "room (they stay on the device)", stats.refused)
        yield CounterMetricFamily("rpm_gateway_readings_lost", "Readings no device will give again that could not "
                                  "be kept (live readings not saved, drop_oldest drops, max_age_days expiries)",
                                  stats.lost + stats.dropped + stats.expired)
        yield GaugeMetricFamily("rpm_gateway_storage_bytes", "Bytes the outbox files take on disk", stats.bytes_used)
        yield GaugeMetricFamily("rpm_gateway_storage_budget_bytes", "The outbox byte budget (max_bytes)",
                                stats.budget_bytes)
        if stats.free_bytes is not None:
            yield GaugeMetricFamily("rpm_gateway_storage_free_bytes", "Free bytes on the data directory's disk",
                                    stats.free_bytes)
        state = GaugeMetricFamily("rpm_gateway_storage_state", "1 for the storage state the outbox is in",
                                  labels=["state"])
        for name in ("ok", "low", "full", "unwritable"):
            state.add_metric([name], int(stats.state == name))
        yield state
        yield GaugeMetricFamily("rpm_gateway_devices", "Devices seen since start", self._device_count())
        state = self._uplink_state()
        if state is not None:
            yield GaugeMetricFamily("rpm_gateway_uplink_connected", "1 when connected to the broker",
                                    int(state.connected))
            yield GaugeMetricFamily("rpm_gateway_uplink_in_flight_readings", "Readings sent, ack awaited",
                                    state.in_flight_readings)
            yield CounterMetricFamily("rpm_gateway_batches_sent", "Batches published", state.batches_sent)
            yield CounterMetricFamily("rpm_gateway_batches_resent",
                                      "Batches offered again: no ack in time, or lost with a connection",
                                      state.batches_resent)
            yield CounterMetricFamily("rpm_gateway_readings_acked", "Readings the cloud acked", state.readings_acked)
            yield CounterMetricFamily("rpm_gateway_uplink_connects", "Successful broker connections", state.connects)


class MetricsEndpoint:
    """``start()`` serves /metrics on 127.0.0.1 by default (a home gateway exposes nothing outward)."""

    def __init__(self, port: int, collector: GatewayCollector, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server: Any = None

    def start(self) -> None:
        self._server, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
