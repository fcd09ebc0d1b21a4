"""The simulated pulse oximeter's Record Access Control Point (PLXS 1.0 section 3.4), through bleak's
BleakClient with the sim backend: the answers the RACP server it shares with the glucose meter gives
for the one operator PLXS defines, and for everything else."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from bleak import BleakClient
from bleak.exc import BleakGATTProtocolError

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import RACP
from firmware_sims.ble.oximeter import PLX_SPOT_CHECK, PulseOximeter, SpotCheckRecord

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 14, 7, 5, 9)
REPORT = enc.RACP_REPORT_STORED_RECORDS


def oximeter(address: str, n: int = 3) -> PulseOximeter:
    records = [SpotCheckRecord(95 + i % 3, 60 + i, timestamp=T + timedelta(minutes=i)) for i in range(n)]
    device = PulseOximeter(address, records)
    AIR.add(device)
    return device


Events = asyncio.Queue[tuple[str, bytes]]


async def ask(client: BleakClient, queue: Events, request: bytes) -> tuple[list[bytes], bytes]:
    """Write one RACP request; the spot-checks indicated before the RACP answer, and the answer."""
    await client.write_gatt_char(RACP, request, response=True)
    frames = []
    while True:
        kind, data = await asyncio.wait_for(queue.get(), 2)
        if kind == "racp":
            return frames, data
        frames.append(data)


def run_requests(address: str, *requests: bytes) -> list[tuple[list[bytes], bytes]]:
    async def session() -> list[tuple[list[bytes], bytes]]:
        queue: Events = asyncio.Queue()
        async with BleakClient(address, backend=SimBleakClient) as client:
            await client.start_notify(PLX_SPOT_CHECK, lambda c, d: queue.put_nowait(("spot", bytes(d))))
            await client.start_notify(RACP, lambda c, d: queue.put_nowait(("racp", bytes(d))))
            return [await ask(client, queue, request) for request in requests]

    return asyncio.run(session())


def test_all_records_are_counted_reported_then_deleted() -> None:
    device = oximeter("AA:00:00:00:41:01")
    stored = [record.encode() for record in device.records]
    count, report, delete, after, recount = run_requests(
        "AA:00:00:00:41:01",
        enc.encode_racp_request(enc.RACP_REPORT_NUMBER_OF_RECORDS, enc.OPERATOR_ALL),
        enc.encode_racp_request(enc.RACP_REPORT_STORED_RECORDS, enc.OPERATOR_ALL),
        enc.encode_racp_request(enc.RACP_DELETE_STORED_RECORDS, enc.OPERATOR_ALL),
        enc.encode_racp_request(enc.RACP_REPORT_STORED_RECORDS, enc.OPERATOR_ALL),
        enc.encode_racp_request(enc.RACP_REPORT_NUMBER_OF_RECORDS, enc.OPERATOR_ALL),
    )
    assert count == ([], enc.encode_racp_number_of_records(3))
    assert report == (stored, enc.encode_racp_response(enc.RACP_REPORT_STORED_RECORDS, enc.RESPONSE_SUCCESS))
    assert delete == ([], enc.encode_racp_response(enc.RACP_DELETE_STORED_RECORDS, enc.RESPONSE_SUCCESS))
    assert after == ([], enc.encode_racp_response(enc.RACP_REPORT_STORED_RECORDS, enc.RESPONSE_NO_RECORDS_FOUND))
    assert recount == ([], enc.encode_racp_number_of_records(0))
    assert device.records == []


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        # Spot-check records carry no sequence number: "all records" is the only operator PLXS defines.
        (enc.encode_racp_request(REPORT, enc.OPERATOR_FIRST), enc.RESPONSE_OPERATOR_NOT_SUPPORTED),
        (enc.encode_racp_report_greater_or_equal(1), enc.RESPONSE_OPERATOR_NOT_SUPPORTED),
        (enc.encode_racp_request(REPORT, enc.OPERATOR_NULL), enc.RESPONSE_INVALID_OPERATOR),
        (enc.encode_racp_request(REPORT, enc.OPERATOR_ALL, b"\x01"), enc.RESPONSE_INVALID_OPERAND),
        (bytes([REPORT]), enc.RESPONSE_INVALID_OPERAND),
        (enc.encode_racp_request(0x7F, enc.OPERATOR_ALL), enc.RESPONSE_OP_CODE_NOT_SUPPORTED),
    ],
)
def test_a_request_the_oximeter_cannot_serve_is_answered_with_its_reason(request_bytes: bytes, answer: int) -> None:
    device = oximeter("AA:00:00:00:42:01")
    ((frames, response),) = run_requests("AA:00:00:00:42:01", request_bytes)
    assert frames == []
    assert response == enc.encode_racp_response(request_bytes[0], answer)
    assert len(device.records) == 3 and device.requests == [request_bytes]


def test_abort_succeeds_and_a_write_without_indications_is_refused() -> None:
    oximeter("AA:00:00:00:43:01")
    ((_, aborted),) = run_requests("AA:00:00:00:43:01", enc.encode_racp_request(enc.RACP_ABORT, enc.OPERATOR_NULL))
    assert aborted == enc.encode_racp_response(enc.RACP_ABORT, enc.RESPONSE_SUCCESS)

    async def unsubscribed() -> None:
        async with BleakClient("AA:00:00:00:43:01", backend=SimBleakClient) as client:
            await client.write_gatt_char(RACP, enc.encode_racp_request(1, enc.OPERATOR_ALL), response=True)

    with pytest.raises(BleakGATTProtocolError) as err:
        asyncio.run(unsubscribed())
    assert err.value.code == 0xFD
