from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ is on sys.path and holds a folder named cloud/ without __init__.py: make sure "cloud" is the
# project's package, not that namespace (same fix as tests/cloud/alerts/conftest.py).
_REPO = str(Path(__file__).resolve().parents[3])
if sys.path[0] != _REPO:
    sys.path.insert(0, _REPO)
for _name in [n for n in sys.modules if n == "cloud" or n.startswith("cloud.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

from ingest_traffic import Gateway  # noqa: E402

from cloud.ingest.consumer import IngestWorker  # noqa: E402
from cloud.settings import CloudSettings  # noqa: E402


@pytest.fixture
def ingest_settings(fresh_database_url: str, mqtt_broker) -> CloudSettings:  # type: ignore[no-untyped-def]
    return CloudSettings(database_url=fresh_database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)


@pytest.fixture
def start_worker(unique_id: str) -> Iterator[Callable[..., IngestWorker]]:
    """Start ingest workers that are stopped after the test."""
    started: list[IngestWorker] = []

    def start(settings: CloudSettings, **kwargs: object) -> IngestWorker:
        worker = IngestWorker(settings, client_id=f"ingest-{unique_id}-{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.start()
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop(drain_timeout_s=1)


@pytest.fixture
def gateway(mqtt_broker, unique_id: str) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = Gateway(mqtt_broker.host, mqtt_broker.port, f"gw-{unique_id}", v5=mqtt_broker.supports_v5)
    yield gw
    gw.close()
