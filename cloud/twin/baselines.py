"""A patient's own baseline per metric: robust statistics (numpy median and MAD) over recent readings.

Used by the twin (``baselines`` in its state) and by the alerts' deviation rule. A baseline exists
only with enough data: at least ``min_readings`` values spanning at least ``min_days`` days inside
the window (14-30 days by default), so three readings never make a baseline.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from cloud.twin import queries

MAD_TO_SD = 1.4826
"""Scale factor making the MAD a consistent estimator of the SD for normal data."""
DEFAULT_WINDOW_DAYS = 30
DEFAULT_MIN_DAYS = 14
DEFAULT_MIN_READINGS = 14


@dataclass(frozen=True, slots=True)
class Point:
    measured_at: datetime
    value: float
    reading_id: str


@dataclass(frozen=True, slots=True)
class Baseline:
    median: float
    mad: float
    n: int
    span_days: float
    window_days: int
    as_of: datetime

    def robust_z(self, value: float, min_scale: float = 0.0) -> float:
        """(value - median) / (1.4826 MAD), with the scale floored so a flat history is not infinitely tight."""
        scale = max(MAD_TO_SD * self.mad, min_scale, 1e-9)
        return (value - self.median) / scale

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 4),
            "mad": round(self.mad, 4),
            "n": self.n,
            "span_days": round(self.span_days, 2),
            "window_days": self.window_days,
            "as_of": self.as_of.isoformat(),
        }


History = dict[tuple[str, str], list[Point]]
"""(patient_id, metric) -> points in time order."""


def load_history(conn: Any, patient_ids: Sequence[str], metrics: Iterable[str], since: datetime,
                 until: datetime) -> History:
    """Patient values of ``metrics`` measured in ``[since, until]``, excluding non-patient readings."""
    history: History = defaultdict(list)
    metric_list = sorted(set(metrics))
    if not patient_ids or not metric_list:
        return history
    for patient_id, metric, measured_at, value, reading_id in queries.patient_values(
        conn, list(patient_ids), metric_list, since, until
    ):
        history[(patient_id, metric)].append(Point(measured_at, value, reading_id))
    return history


def _time(point: Point) -> datetime:
    return point.measured_at


def _median(values: np.ndarray) -> float:
    # np.median's generic reduction machinery costs more than the sort on these small arrays.
    ordered = np.sort(values)
    n = len(ordered)
    return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)


def compute_baseline(points: Sequence[Point], as_of: datetime, *, window_days: int = DEFAULT_WINDOW_DAYS,
                     min_days: int = DEFAULT_MIN_DAYS, min_readings: int = DEFAULT_MIN_READINGS,
                     exclude_reading: str | None = None) -> Baseline | None:
    """Median/MAD of the time-ordered points in ``(as_of - window_days, as_of]``; None without enough data."""
    # Points are in time order: cut the window by bisection rather than scanning the whole history.
    low = bisect_right(points, as_of - timedelta(days=window_days), key=_time)
    high = bisect_right(points, as_of, key=_time)
    chosen = [p for p in points[low:high] if p.reading_id != exclude_reading]
    if len(chosen) < min_readings:
        return None
    span_days = (as_of - min(p.measured_at for p in chosen)).total_seconds() / 86400
    if span_days < min_days:
        return None
    values = np.fromiter((p.value for p in chosen), dtype=float, count=len(chosen))
    median = _median(values)
    mad = _median(np.abs(values - median))
    return Baseline(median, mad, len(chosen), span_days, window_days, as_of)
