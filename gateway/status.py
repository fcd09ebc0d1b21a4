"""The gateway's status: what the care team's dashboard shows about a home (contract ``GatewayStatus``).

Published retained on ``rpm/v1/gw/{gateway_id}/status`` every ``status_interval_s`` and whenever
something a person would act on changes: online/offline, a device's error or battery, the outbox
filling up, readings quarantined, the uplink's error. The last will (set by the uplink at connect)
is the same document with ``online: false``, so a gateway that loses power shows as offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gateway import __version__
from gateway.contract import DeviceStatus, GatewayStatus, now_utc
from gateway.outbox import Outbox

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
    ) -> None:
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.interval_s = interval_s
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
        stats = self.outbox.stats()
        devices = []
        for uid, entry in sorted(self._devices.items()):
            try:
                devices.append(DeviceStatus(uid=uid, **entry))
            except ValidationError:
                devices.append(DeviceStatus(uid=uid, profile=str(entry.get("profile", "unknown"))))
        return GatewayStatus(
            gateway_id=self.gateway_id,
            online=online,
            at=now_utc(),
            version=__version__,
            devices=devices,
            outbox_depth=stats.depth,
            outbox_oldest_age_s=stats.oldest_age_s,
            outbox_full=stats.full,
            quarantined=stats.quarantined,
            uplink_error=self._uplink_error(),
        )

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
    devices = tuple((d.uid, d.profile, d.battery, d.error, _minute(d.last_seen)) for d in status.devices)
    return (status.online, devices, status.outbox_full, status.quarantined, status.uplink_error)


def _minute(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y%m%d%H%M")
