"""The history the baselines read comes back unordered from the database and is put in time order here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from cloud.twin.baselines import in_time_order, load_history


@pytest.mark.unit
def test_a_series_is_sorted_by_time_then_by_reading_id_at_the_same_instant() -> None:
    series = in_time_order([30.0, 10.0, 20.0, 10.0], [3.0, 1.5, 2.0, 1.0], ["c", "b", "x", "a"])
    assert series.t.tolist() == [10.0, 10.0, 20.0, 30.0]
    assert list(series.ids) == ["a", "b", "x", "c"]
    assert series.v.tolist() == [1.0, 1.5, 2.0, 3.0]  # each value stays with its own time and id


@pytest.mark.unit
def test_without_ties_the_order_is_by_time_alone() -> None:
    series = in_time_order([5.0, 1.0, 3.0], [50.0, 10.0, 30.0], ["z", "y", "x"])
    assert series.t.tolist() == [1.0, 3.0, 5.0] and list(series.ids) == ["y", "x", "z"]
    assert series.v.tolist() == [10.0, 30.0, 50.0]


@pytest.mark.integration
def test_the_history_read_from_the_database_is_in_time_order(fresh_database_url: str) -> None:
    end = datetime(2030, 1, 15, tzinfo=UTC)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        # Inserted newest first, so the index returns them in the order the series must not keep.
        conn.execute(
            """INSERT INTO observations (reading_id, patient_id, kind, metric, measured_at, value, unit)
               SELECT 'r-' || lpad(i::text, 4, '0'), 'p-order', 'blood_pressure', 'systolic',
                      %s - make_interval(mins => 5 * (i / 2)), 100 + i %% 50, 'mm[Hg]'
                 FROM generate_series(0, 999) i""", (end,))
        history = load_history(conn, ["p-order"], ["systolic"], end - timedelta(days=14), end)
    series = history[("p-order", "systolic")]
    assert len(series.t) == 1000
    assert bool(np.all(np.diff(series.t) >= 0))
    expected = sorted(((end - timedelta(minutes=5 * (i // 2))).timestamp(), f"r-{i:04d}")
                      for i in range(1000))
    assert list(zip(series.t.tolist(), series.ids, strict=True)) == expected


@pytest.mark.unit
def test_newest_first_as_the_index_gives_it_is_reversed() -> None:
    series = in_time_order([3.0, 2.0, 1.0], [30.0, 20.0, 10.0], ["c", "b", "a"])
    assert series.t.tolist() == [1.0, 2.0, 3.0] and list(series.ids) == ["a", "b", "c"]
    assert series.v.tolist() == [10.0, 20.0, 30.0]
    ascending = in_time_order([1.0, 2.0], [1.0, 2.0], ["a", "b"])
    assert ascending.t.tolist() == [1.0, 2.0] and list(ascending.ids) == ["a", "b"]
