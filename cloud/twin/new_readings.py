"""Newly stored readings folded into each patient's twin, in the transaction that stored them.

Called by ``cloud.effects.apply_new_readings``, which has locked the patients' twin rows and read the
batch's history once (:func:`history_window` says what the twin needs of it): one ``reading_added``
event per reading, in measured order, and a ``baselines_computed`` event for the metrics it touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cloud.db.readings import StoredReading
from cloud.twin import baselines, queries, service
from gateway.metrics import EXCLUDED_FLAGS, METRICS


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


def history_window(stored: Sequence[StoredReading]) -> baselines.HistoryWindow | None:
    """What the baselines of these readings need: their patients' scalar metrics from a baseline window
    before the oldest up to the newest (None: no scalar value, no baseline)."""
    mine = [s for s in stored if s.patient_id]
    metrics = frozenset(
        name
        for s in mine
        for name, v in s.reading.values.items()
        if not METRICS[name].is_list and not isinstance(v.value, list)
    )
    if not metrics:
        return None
    since = min(s.reading.measured_at for s in mine) - timedelta(days=baselines.DEFAULT_WINDOW_DAYS)
    until = max(s.reading.measured_at for s in mine)
    return baselines.HistoryWindow(frozenset(s.patient_id for s in mine if s.patient_id), metrics, since, until)


def record_readings(
    conn: Any, stored: Sequence[StoredReading], history: baselines.History, locked: Mapping[str, tuple[int, dict]]
) -> None:
    """Append the readings' events to their patients' twins.

    ``history`` covers at least :func:`history_window` of ``stored``; ``locked`` is what
    ``service.lock`` returned for their patients earlier in this transaction.
    """
    mine = [s for s in stored if s.patient_id]
    if not mine:
        return
    devices = queries.device_details(conn, sorted({s.reading.device.uid for s in mine}))
    events: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for item in sorted(mine, key=lambda s: (s.patient_id or "", s.reading.measured_at)):
        profile, battery = devices.get(item.reading.device.uid, (None, None))
        events[item.patient_id or ""].append(("reading_added", reading_event(item, profile, battery)))
    for patient_id, data in baselines_event(history, mine).items():
        events[patient_id].append(("baselines_computed", data))
    service.append_events(conn, events, locked=locked)


def baselines_event(history: baselines.History, stored: Sequence[StoredReading]) -> dict[str, dict[str, Any]]:
    """``baselines_computed`` data per patient for the scalar metrics these readings touched, as of the
    newest of them (late readings do not move a baseline back in time).

    """
    as_of: dict[tuple[str, str], datetime] = {}
    for item in stored:
        if not item.patient_id or item.late or EXCLUDED_FLAGS & set(item.reading.flags):
            continue
        for name, value in item.reading.values.items():
            if METRICS[name].is_list or isinstance(value.value, list):
                continue
            key = (item.patient_id, name)
            as_of[key] = max(item.reading.measured_at, as_of.get(key, item.reading.measured_at))
    computed: dict[str, dict[str, Any]] = defaultdict(dict)
    for (patient_id, metric), when in sorted(as_of.items()):
        baseline = baselines.compute_baseline(history.get((patient_id, metric), baselines.EMPTY), when)
        if baseline is not None:
            computed[patient_id][metric] = baseline.as_dict()
    return {patient_id: {"baselines": values} for patient_id, values in computed.items()}
