"""The CPU meter the ingest benchmarks print with (``tests/bench/cpu_cost.py``): fast, in the ordinary suite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.cpu_cost import CpuMeter, process_cpu, process_tree, with_application_name

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_a_process_name_with_spaces_and_parentheses_is_parsed(tmp_path: Path) -> None:
    odd = tmp_path / "a b) (c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(5)"])
    try:
        seen = process_cpu(child.pid)
        assert seen is not None and seen[0][0] == child.pid and seen[1] >= 0
    finally:
        child.kill()
        child.wait()


def test_a_gone_process_reads_as_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu(child.pid) is None


def test_the_meter_charges_each_component_its_own_cpu() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter({"idle": lambda: [idle.pid], "tree": lambda: process_tree(os.getpid())}).start()
        # A child that starts, burns 0.3 s and is reaped inside the window: the load generator's share.
        subprocess.run([sys.executable, "-c", BUSY], check=True)
        meter.stop()
        spent = meter.seconds()
    finally:
        idle.kill()
        idle.wait()
    assert spent["load_generator"] >= 0.25
    assert spent["idle"] < 0.1
    report = meter.report(stored=1000)
    assert report["cpu_us_per_reading"]["load_generator"] == pytest.approx(spent["load_generator"] * 1000, abs=0.1)
    assert report["cpu_processes"]["idle"] == 1 and report["cpu_processes"]["tree"] >= 1


def test_the_application_name_joins_an_existing_query() -> None:
    assert with_application_name("postgresql://h/db", "x") == "postgresql://h/db?application_name=x"
    assert with_application_name("postgresql://h/db?sslmode=off", "x").endswith("?sslmode=off&application_name=x")


def test_the_sampled_components_stop_at_the_last_commit() -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY.replace("0.3", "3")])
    try:
        meter = CpuMeter({"busy": lambda: [busy.pid]}).start()
        time.sleep(1.2)
        committed_at = time.time()
        time.sleep(1.2)
        meter.stop()
    finally:
        busy.kill()
        busy.wait()
    whole, cut = meter.report(stored=1), meter.report(stored=1, last_commit_at=committed_at)
    assert cut["cpu_s"]["busy"] < whole["cpu_s"]["busy"]
    assert cut["cpu_sampled_s"] < whole["cpu_sampled_s"] <= whole["cpu_window_s"] + 0.1
