"""More requests in flight than the API has database connections: every one is answered, none starves.

Each request audits its access on a second connection after its handler ran; the handler's own
connection must be back in the pool by then, or a burst deadlocks the pool until it times out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cloud.api.app import create_app
from cloud.settings import CloudSettings
from tests.cloud.api.conftest import DEV_KEY, seed_patient
from tests.cloud.api.ui_live_server import LiveServer

pytestmark = pytest.mark.integration


def test_a_burst_larger_than_the_pool_is_served(database_url: str, conn, auth, unique_id: str) -> None:
    patient = f"{unique_id}-burst"
    seed_patient(conn, patient)
    headers = auth("patient", patient=patient)
    settings = CloudSettings(database_url=database_url, jwt_dev_key=DEV_KEY, api_pool_max=2)
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: http.get(f"/v1/patients/{patient}/readings", headers=headers),
                                      range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert max(r.elapsed.total_seconds() for r in responses) < 5
