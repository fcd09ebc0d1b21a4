"""CPU time per stored reading, per component, over a benchmark's load run (issue 23, item 1).

Throughput on a shared box says little; CPU time per reading says how many cores a fleet needs. A
:class:`CpuMeter` reads user + system time from ``/proc/<pid>/stat`` at the start of the run, every
``SAMPLE_S`` during it and at its end, for each component's processes:

- ``ingest``: the ``rpm-cloud ingest`` process and every descendant (its worker processes);
- ``postgres_ingest``: the PostgreSQL backends whose ``application_name`` is the one ingest was started
  with (:data:`INGEST_APPLICATION`), so the benchmark's own counting queries are not charged to ingest;
- ``postgres_other``: autovacuum workers on the benchmark's database plus the instance-wide WAL
  writer, checkpointer and background writer. Those serve every database on the server, so on a
  machine running other tests this figure includes their work: read it as an upper bound;
- ``broker``: the mosquitto process;
- ``load_generator``: ``rpm-sim load``'s publisher processes, children of this process that exit
  before the run ends, measured exactly by ``getrusage(RUSAGE_CHILDREN)`` (which counts children
  once they are reaped, so nothing else may be started and reaped during the window);
- ``bench_harness``: this process itself (the run's orchestration, the storage queries' client side
  and this meter): the cost of measuring, not of the system measured.

The sampled components are counted up to the first sample after the run's last commit (see
:meth:`CpuMeter.report`): the publishers may wait long after it for acks, and ingest idling meanwhile
is not work per reading. The load generator's figure, read once its processes are reaped, includes
that wait (its publishers poll their connections until every batch is acked or the settle time ends).

Processes are found again at every sample (a worker restarted, a backend opened late), keyed by pid
and start time so a reused pid is not mistaken for the old process. A process that exits between
two samples loses at most its last ``SAMPLE_S`` of CPU (the children measured by rusage excepted).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SAMPLE_S = 0.5
INGEST_APPLICATION = "rpm-bench-ingest"
"""``application_name`` ingest's connections carry in a benchmark (set in its database URL)."""
METER_APPLICATION = "rpm-bench-cpu-meter"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_BACKGROUND = ("walwriter", "checkpointer", "background writer")

ProcessKey = tuple[int, int]
"""(pid, start time in clock ticks since boot): one process, even if its pid is later reused."""


def with_application_name(database_url: str, name: str) -> str:
    """``database_url`` whose connections announce themselves as ``name`` in ``pg_stat_activity``."""
    return f"{database_url}{'&' if '?' in database_url else '?'}application_name={name}"


def process_cpu(pid: int) -> tuple[ProcessKey, float] | None:
    """The process's own user + system CPU seconds (not its children's), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Fields after the command name, which is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
    return (pid, starttime), (utime + stime) / _TICKS_PER_S


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def postgres_finders(
    database_url: str, application: str = INGEST_APPLICATION
) -> tuple[Callable[[], list[int]], Callable[[], list[int]], Callable[[], None]]:
    """Finders for ``postgres_ingest`` (the backends of connections named ``application``) and
    ``postgres_other``, over one connection of their own, and its close."""
    import psycopg

    conn = psycopg.connect(with_application_name(database_url, METER_APPLICATION), autocommit=True)
    lock = threading.Lock()

    def ingest() -> list[int]:
        with lock:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
            ).fetchall()
        return [row[0] for row in rows]

    def other() -> list[int]:
        with lock:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = ANY(%s)"
                " OR (backend_type = 'autovacuum worker' AND datname = current_database())",
                (list(_BACKGROUND),),
            ).fetchall()
        return [row[0] for row in rows]

    return ingest, other, conn.close


class CpuMeter:
    """CPU seconds per component between :meth:`start` and :meth:`stop` (see the module docstring)."""

    def __init__(self, components: dict[str, Callable[[], Iterable[int]]]) -> None:
        self._components = components
        self._first: dict[str, dict[ProcessKey, float]] = {name: {} for name in components}
        self._last: dict[str, dict[ProcessKey, float]] = {name: {} for name in components}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._began = 0.0
        self._wall_s = 0.0
        self._children_s = 0.0
        self._self_s = 0.0
        self._series: list[tuple[float, dict[str, float]]] = []
        """(wall-clock time, CPU seconds per component so far) at every sample."""

    def _sample(self, *, initial: bool = False) -> None:
        for name, find in self._components.items():
            try:
                pids = list(find())
            except Exception:  # a finder's query failed mid-run (database busy): the next sample retries
                continue
            first, last = self._first[name], self._last[name]
            for pid in pids:
                seen = process_cpu(pid)
                if seen is None:
                    continue
                key, cpu = seen
                # A process found after the start began inside the window: all of its CPU is the run's.
                first.setdefault(key, cpu if initial else 0.0)
                last[key] = cpu
        totals = {
            name: sum(cpu - self._first[name][key] for key, cpu in self._last[name].items())
            for name in self._components
        }
        self._series.append((time.time(), totals))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def start(self) -> CpuMeter:
        self._began = time.monotonic()
        usage, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        self._children_s = usage.ru_utime + usage.ru_stime
        self._self_s = own.ru_utime + own.ru_stime
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        usage, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        self._children_s = usage.ru_utime + usage.ru_stime - self._children_s
        self._self_s = own.ru_utime + own.ru_stime - self._self_s
        self._wall_s = time.monotonic() - self._began

    def _cut(self, until: float | None) -> tuple[float, dict[str, float]]:
        """The first sample at or after ``until`` (wall clock), else the last one."""
        if until is not None:
            for at, totals in self._series:
                if at >= until:
                    return at, totals
        return self._series[-1]

    def seconds(self, until: float | None = None) -> dict[str, float]:
        """CPU seconds per component from the start to the first sample after ``until`` (default: the
        whole window); the load generator and the harness always over the whole window (after :meth:`stop`)."""
        spent = dict(self._cut(until)[1])
        spent["load_generator"] = self._children_s
        spent["bench_harness"] = self._self_s
        return spent

    def report(self, stored: int, last_commit_at: float | None = None) -> dict[str, Any]:
        """The figures for a benchmark's JSON line: µs of CPU per stored reading, CPU seconds, the window.

        Given the last reading's commit time, the sampled components are counted up to the first sample
        after it (within ``SAMPLE_S``, time enough for its acks): the idle tail while the publishers
        wait out their settle time is not charged to the readings."""
        spent = self.seconds(last_commit_at)
        cut_at = self._cut(last_commit_at)[0]
        per_reading = {name: round(cpu * 1e6 / stored, 1) if stored else None for name, cpu in spent.items()}
        return {
            "cpu_us_per_reading": per_reading,
            "cpu_s": {name: round(cpu, 2) for name, cpu in spent.items()},
            "cpu_window_s": round(self._wall_s, 2),
            "cpu_sampled_s": round(cut_at - self._series[0][0], 2),
            "cpu_processes": {name: len(self._last[name]) for name in self._components},
        }
