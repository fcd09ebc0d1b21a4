"""A patient's own baseline per metric: robust statistics (numpy median and MAD) over recent readings.

Used by the twin (``baselines`` in its state) and by the alerts' deviation rule. A baseline exists
only with enough data: at least ``min_readings`` values spanning at least ``min_days`` days inside
the window (14-30 days by default), so three readings never make a baseline.
"""

from __future__ import annotations

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
class Series:
    """One patient's values of one metric in time order: epoch seconds, values, reading ids."""

    t: np.ndarray
    v: np.ndarray
    ids: Sequence[str]

    def window(self, start: datetime, end: datetime, *, include_end: bool = True,
               exclude: str | None = None) -> np.ndarray:
        """Values measured in ``(start, end]`` (``(start, end)`` without ``include_end``), less one reading."""
        low = int(np.searchsorted(self.t, start.timestamp(), side="right"))
        high = int(np.searchsorted(self.t, end.timestamp(), side="right" if include_end else "left"))
        values = self.v[low:high]
        if exclude is not None and exclude in self.ids[low:high]:
            keep = np.fromiter((i != exclude for i in self.ids[low:high]), dtype=bool, count=high - low)
            return values[keep]
        return values

    def first_time_in(self, start: datetime, end: datetime) -> float | None:
        low = int(np.searchsorted(self.t, start.timestamp(), side="right"))
        high = int(np.searchsorted(self.t, end.timestamp(), side="right"))
        return float(self.t[low]) if high > low else None


EMPTY = Series(np.empty(0), np.empty(0), ())


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


History = dict[tuple[str, str], Series]
"""(patient_id, metric) -> the series (missing key: no values)."""


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """The history some work needs: these patients' values of these metrics measured in ``[since, until]``."""

    patient_ids: frozenset[str]
    metrics: frozenset[str]
    since: datetime
    until: datetime



def covering(*windows: HistoryWindow | None) -> HistoryWindow | None:
    """The smallest window holding all of these, so one read serves the twin and the alerts of a batch (a
    series holding more than a rule looks at is harmless: every use takes a window of it)."""
    given = [w for w in windows if w is not None]
    if not given:
        return None
    return HistoryWindow(frozenset().union(*(w.patient_ids for w in given)),
                         frozenset().union(*(w.metrics for w in given)),
                         min(w.since for w in given), max(w.until for w in given))


def load_history(conn: Any, patient_ids: Sequence[str], metrics: Iterable[str], since: datetime,
                 until: datetime) -> History:
    """Patient values of ``metrics`` measured in ``[since, until]``, excluding non-patient readings."""
    metric_list = sorted(set(metrics))
    if not patient_ids or not metric_list:
        return {}
    return {
        (patient_id, metric): in_time_order(times, values, ids)
        for patient_id, metric, times, values, ids in queries.patient_series(
            conn, list(patient_ids), metric_list, since, until)
    }


def in_time_order(times: Sequence[float], values: Sequence[float], ids: Sequence[str]) -> Series:
    """A series sorted by time, then reading id where two share an instant (so the order never
    depends on how the database happened to return them)."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    steps = np.diff(t)
    # The usual cases cost no per-value Python: the index (measured_at DESC) gives each series newest
    # first, or the plan gives it in order.
    if bool(np.all(steps > 0)):
        return Series(t, v, list(ids))
    if bool(np.all(steps < 0)):
        return Series(t[::-1], v[::-1], list(ids)[::-1])
    order = np.lexsort((np.asarray(ids, dtype=str), t))
    return Series(t[order], v[order], [ids[i] for i in order])


def read_window(conn: Any, window: HistoryWindow | None) -> History:
    """The history ``window`` asks for (nothing asked: none)."""
    if window is None:
        return {}
    return load_history(conn, sorted(window.patient_ids), window.metrics, window.since, window.until)


def _median(values: np.ndarray) -> float:
    # np.median's generic reduction machinery costs more than the sort on these small arrays.
    ordered = np.sort(values)
    n = len(ordered)
    return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)


def compute_baseline(series: Series, as_of: datetime, *, window_days: int = DEFAULT_WINDOW_DAYS,
                     min_days: int = DEFAULT_MIN_DAYS, min_readings: int = DEFAULT_MIN_READINGS,
                     exclude_reading: str | None = None) -> Baseline | None:
    """Median/MAD of the values in ``(as_of - window_days, as_of]``; None without enough data."""
    start = as_of - timedelta(days=window_days)
    values = series.window(start, as_of, exclude=exclude_reading)
    if len(values) < min_readings:
        return None
    first = series.first_time_in(start, as_of)
    span_days = (as_of.timestamp() - (first if first is not None else as_of.timestamp())) / 86400
    if span_days < min_days:
        return None
    median = _median(values)
    mad = _median(np.abs(values - median))
    return Baseline(median, mad, len(values), span_days, window_days, as_of)
