"""The gateway's status: what the care team's dashboard shows about a home (contract ``GatewayStatus``).

Published retained on ``rpm/v1/gw/{gateway_id}/status`` every ``status_interval_s`` and whenever
something a person would act on changes: online/offline, a device's error or battery, the outbox
filling up, readings quarantined (by the cloud, or device records the gateway could not read, counted
per device), the uplink's error. The last will (set by the uplink at connect)
is the same document with ``online: false``, so a gateway that loses power shows as offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gateway import __version__
from gateway.contract import Candidate, ConfigStatus, DeviceStatus, GatewayStatus, now_utc
from gateway.store.disk import describe
from gateway.store.outbox import Outbox, OutboxError, OutboxStats

log = logging.getLogger(__name__)

# Several changes in quick succession (a device session's updates) make one publication.
MIN_CHANGE_INTERVAL_S = 1.0
_DEVICE_FIELDS = ("profile", "last_seen", "battery", "clock_offset_s", "error")


class StatusBoard:
    """Collects device, outbox and uplink facts; builds and publishes :class:`GatewayStatus`."""

    def __init__(
        self,
        gateway_id: str,
        outbox: Outbox,
        *,
        uplink_error: Callable[[], str | None] = lambda: None,
        publish: Callable[[str], None] | None = None,
        interval_s: float = 60.0,
        component_errors: Callable[[], dict[str, str]] = dict,
        storage_notice: Callable[[], str | None] = lambda: None,
        config_state: Callable[[], ConfigStatus | None] = lambda: None,
        candidates: Callable[[], list[Candidate]] = list,
    ) -> None:
        """``config_state``: the running remote config version and the last rejection (issue 19)."""
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.interval_s = interval_s
        self._component_errors = component_errors
        self._storage_notice = storage_notice
        self._config_state = config_state
        self._candidates = candidates  # issue 19 (H11): devices waiting to be confirmed
        self._uplink_error = uplink_error
        self._publish = publish
        self._devices: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self._last_signature: tuple[Any, ...] | None = None
        self.published = 0

    # --------------------------------------------------------------------------- facts in

    def device_update(self, uid: str, **fields: Any) -> None:
        """The ``on_status(uid, **fields)`` callback device managers call: ``profile``, ``last_seen``,
        ``battery``, ``clock_offset_s``, ``error`` (None clears it). Unknown fields are ignored."""
        entry = self._devices.setdefault(uid, {"profile": "unknown"})
        for name, value in fields.items():
            if name not in _DEVICE_FIELDS:
                log.debug("status: ignoring unknown device field %s for %s", name, uid)
                continue
            if name == "profile" and value is None:
                continue
            try:
                DeviceStatus(uid=uid, **{**entry, name: value})
            except ValidationError as err:
                # A bad value from a driver must not take the status down: keep the last good one.
                log.warning("status: device %s sent an invalid %s (%r): %s", uid, name, value,
                            err.errors()[0]["msg"])
                continue
            entry[name] = value
        self.changed()

    def changed(self) -> None:
        """Something may have changed: re-check and publish if it did (soon, not immediately)."""
        with contextlib.suppress(RuntimeError):
            self._changed.set()

    # --------------------------------------------------------------------------- status out

    def snapshot(self, *, online: bool = True) -> GatewayStatus:
        stats = self._outbox_stats()
        # Counted from the durable device quarantine, so the counts survive a restart; a device with
        # quarantined records shows even before it is seen again. Storage that cannot be read shows
        # no counts rather than no status.
        try:
            counts = self.outbox.quarantined_record_counts()
        except (OutboxError, sqlite3.Error):
            counts = {}
        devices = []
        for uid in sorted(self._devices.keys() | counts.keys()):
            entry = self._devices.get(uid) or {"profile": counts[uid][0]}
            quarantined = counts.get(uid, ("", 0))[1]
            try:
                devices.append(DeviceStatus(uid=uid, **entry, quarantined=quarantined))
            except ValidationError:
                devices.append(DeviceStatus(uid=uid, profile=str(entry.get("profile", "unknown")),
                                            quarantined=quarantined))
        return GatewayStatus(
            gateway_id=self.gateway_id,
            online=online,
            at=now_utc(),
            version=__version__,
            devices=devices,
            outbox_depth=stats.depth,
            outbox_oldest_age_s=stats.oldest_age_s,
            outbox_full=stats.full,
            # Both kinds: readings the cloud refused and device records the gateway could not read.
            quarantined=stats.quarantined + stats.device_quarantined,
            uplink_error=self._uplink_error(),
            storage_state=stats.state,
            # What is wrong now comes first; what happened at start (a damaged outbox) while all is well.
            storage_message=stats.message or self._storage_notice(),
            storage_bytes=stats.bytes_used,
            storage_budget_bytes=stats.budget_bytes,
            storage_free_bytes=stats.free_bytes,
            readings_lost=stats.lost + stats.dropped + stats.expired,
            readings_waiting_on_devices=stats.waiting_on_devices,
            component_errors=dict(self._component_errors()),
            config=self._config_state(),
            candidates=self._candidate_list(),
        )

    def _candidate_list(self) -> list[Candidate]:
        # The enrolment store is SQLite too: a store that cannot be read shows no candidates, not no status.
        try:
            return self._candidates()
        except sqlite3.Error as err:
            log.warning("status: candidates unreadable: %s", err)
            return []

    def forget_device(self, uid: str) -> None:
        """An unpaired device leaves the status (its quarantine counts, if any, keep it listed)."""
        if self._devices.pop(uid, None) is not None:
            self.changed()

    def _outbox_stats(self) -> OutboxStats:
        """The outbox's facts; a storage that cannot even be read still gives a status that says so."""
        try:
            return self.outbox.stats()
        except (OutboxError, sqlite3.Error) as err:
            return OutboxStats(depth=self.outbox.depth(), oldest_age_s=None, quarantined=0, full=True, dropped=0,
                               refused=0, state="unwritable", message=f"Storage unreadable: {describe(err)}")

    def offline_payload(self) -> str:
        """The last will and the goodbye: this gateway's status with ``online: false``."""
        return self.snapshot(online=False).model_dump_json(exclude_none=True)

    def publish_now(self) -> GatewayStatus:
        status = self.snapshot()
        self._last_signature = _signature(status)
        if self._publish is not None:
            self._publish(status.model_dump_json(exclude_none=True))
            self.published += 1
        return status

    async def run(self) -> None:
        """Publish on the interval, and on a meaningful change (at most once a second)."""
        self.publish_now()
        next_periodic = time.monotonic() + self.interval_s
        while True:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, next_periodic - time.monotonic()))
            if time.monotonic() >= next_periodic:
                self.publish_now()
                next_periodic = time.monotonic() + self.interval_s
                continue
            await asyncio.sleep(MIN_CHANGE_INTERVAL_S)
            status = self.snapshot()
            if _signature(status) != self._last_signature:
                self.publish_now()


def _signature(status: GatewayStatus) -> tuple[Any, ...]:
    """What counts as a change worth publishing at once (depth and ages move all the time)."""
    devices = tuple((d.uid, d.profile, d.battery, d.error, d.quarantined, _minute(d.last_seen))
                    for d in status.devices)
    return (status.online, devices, status.outbox_full, status.quarantined, status.uplink_error,
            status.storage_state, status.storage_message if status.storage_state == "ok" else None,
            status.readings_lost > 0, tuple(sorted(status.component_errors.items())), status.config,
            tuple(c.uid for c in status.candidates))


def _minute(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y%m%d%H%M")
