"""Ingest hook: fold newly stored readings into each patient's twin, in ingest's transaction.

Registered in ``cloud.hooks.IN_TRANSACTION_HOOKS`` before the alerts' hook: it locks the patients'
twin rows first (in patient order), so the alerts evaluated next see one writer per patient.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cloud.hooks import Notification, StoredReading
from cloud.twin import baselines, queries, service
from cloud.twin.state import EXCLUDED_FLAGS
from gateway.metrics import METRICS


def reading_event(item: StoredReading, profile: str | None, battery: int | None) -> dict[str, Any]:
    reading = item.reading
    return {
        "reading_id": reading.id,
        "kind": str(reading.kind),
        "measured_at": reading.measured_at,
        "received_at": reading.received_at,
        "values": {name: v.value for name, v in reading.values.items()},
        "units": {name: v.unit for name, v in reading.values.items()},
        "flags": list(reading.flags),
        "device_uid": reading.device.uid,
        "profile": profile or reading.device.profile,
        "battery": battery,
        "late": item.late,
    }


def on_readings_stored(conn: Any, stored: Sequence[StoredReading]) -> Sequence[Notification]:
    mine = [s for s in stored if s.patient_id]
    if not mine:
        return ()
    locked = service.lock(conn, [s.patient_id for s in mine if s.patient_id])
    devices = queries.device_details(conn, sorted({s.reading.device.uid for s in mine}))
    events: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    # Baselines are recomputed for the scalar metrics these readings touched, as of the newest value.
    as_of: dict[tuple[str, str], datetime] = {}
    for item in sorted(mine, key=lambda s: (s.patient_id, s.reading.measured_at)):
        patient_id = item.patient_id or ""
        profile, battery = devices.get(item.reading.device.uid, (None, None))
        events[patient_id].append(("reading_added", reading_event(item, profile, battery)))
        if EXCLUDED_FLAGS & set(item.reading.flags):
            continue
        latest = (locked[patient_id][1] or {}).get("latest", {})
        for name, value in item.reading.values.items():
            if METRICS[name].is_list or isinstance(value.value, list):
                continue
            key = (patient_id, name)
            candidates = [item.reading.measured_at, as_of.get(key)]
            if name in latest:
                candidates.append(datetime.fromisoformat(latest[name]["measured_at"]))
            as_of[key] = max(c for c in candidates if c is not None)
    if as_of:
        since = min(as_of.values()) - timedelta(days=baselines.DEFAULT_WINDOW_DAYS)
        history = baselines.load_history(conn, sorted({p for p, _ in as_of}), {m for _, m in as_of},
                                         since, max(as_of.values()))
        computed: dict[str, dict[str, Any]] = defaultdict(dict)
        for (patient_id, metric), when in sorted(as_of.items()):
            baseline = baselines.compute_baseline(history.get((patient_id, metric), []), when)
            if baseline is not None:
                computed[patient_id][metric] = baseline.as_dict()
        for patient_id, values in computed.items():
            events[patient_id].append(("baselines_computed", {"baselines": values}))
    service.append_events(conn, events)
    return ()
