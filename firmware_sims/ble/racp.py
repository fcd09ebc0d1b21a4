"""The Record Access Control Point server a simulated peripheral with stored records runs.

The procedure is the one GLS 1.0 section 3.108 and PLXS 1.0 section 3.4 share: the collector must
enable RACP indications before writing a request (else "Client Characteristic Configuration
Descriptor improperly configured"); "abort operation" cancels the running procedure and succeeds;
any other request while one runs is "procedure already in progress"; report, report-number and
delete are answered over the records the operator selects. What a profile filters by and how it
sends a record differ: a subclass says which records an operator and operand select
(:meth:`RacpServer._select`), how selected records are deleted (:meth:`RacpServer._delete`) and how
they are reported (:meth:`RacpServer._report`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.gatt import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_ALREADY_IN_PROGRESS,
    RACP,
    GattError,
    Link,
    LinkLost,
    Peripheral,
)


class RacpServer(Peripheral):
    """A peripheral whose RACP characteristic is served by ``_racp_write`` (one procedure at a time).

    ``requests`` keeps every request written, in order, for tests to inspect.
    """

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self.requests: list[bytes] = []
        self._procedure: asyncio.Task[None] | None = None

    def on_connect(self, link: Link) -> None:
        self._procedure = None

    def _select(self, operator: int, operand: bytes) -> tuple[list[Any], int | None]:
        """The records ``operator`` and ``operand`` select, or an RACP response code saying why none."""
        raise NotImplementedError

    def _delete(self, selected: list[Any]) -> None:
        raise NotImplementedError

    async def _report(self, link: Link, op: int, selected: list[Any]) -> None:
        """Send the selected records and the final response (if the transfer got that far)."""
        raise NotImplementedError

    def _racp_write(self, data: bytes) -> None:
        link = self.link
        if link is None:
            return
        if RACP not in link.subscriptions:
            raise GattError(ATT_CCCD_IMPROPERLY_CONFIGURED, "RACP indications are not enabled")
        self.requests.append(bytes(data))
        if self.faults.silent_after_connect:
            return
        op = data[0] if data else 0
        if op == enc.RACP_ABORT:
            if self._procedure is not None:
                self._procedure.cancel()
            self.spawn(link.send(RACP, enc.encode_racp_response(enc.RACP_ABORT, enc.RESPONSE_SUCCESS)))
            return
        if self._procedure is not None and not self._procedure.done():
            raise GattError(ATT_PROCEDURE_ALREADY_IN_PROGRESS, "an RACP procedure is running")
        self._procedure = asyncio.get_running_loop().create_task(self._run_procedure(link, bytes(data)))
        self._tasks.add(self._procedure)
        self._procedure.add_done_callback(self._tasks.discard)

    async def _run_procedure(self, link: Link, data: bytes) -> None:
        try:
            await self._answer(link, data)
        except LinkLost:
            pass

    async def _answer(self, link: Link, data: bytes) -> None:
        if len(data) < 2:
            await link.send(RACP, enc.encode_racp_response(data[0] if data else 0, enc.RESPONSE_INVALID_OPERAND))
            return
        op, operator, operand = data[0], data[1], data[2:]
        if op not in (enc.RACP_REPORT_STORED_RECORDS, enc.RACP_REPORT_NUMBER_OF_RECORDS,
                      enc.RACP_DELETE_STORED_RECORDS):
            await link.send(RACP, enc.encode_racp_response(op, enc.RESPONSE_OP_CODE_NOT_SUPPORTED))
            return
        selected, error = self._select(operator, operand)
        if error is not None:
            await link.send(RACP, enc.encode_racp_response(op, error))
            return
        if op == enc.RACP_REPORT_NUMBER_OF_RECORDS:
            await link.send(RACP, enc.encode_racp_number_of_records(len(selected)))
            return
        if not selected:
            await link.send(RACP, enc.encode_racp_response(op, enc.RESPONSE_NO_RECORDS_FOUND))
            return
        if op == enc.RACP_DELETE_STORED_RECORDS:
            self._delete(selected)
            await link.send(RACP, enc.encode_racp_response(op, enc.RESPONSE_SUCCESS))
            return
        await self._report(link, op, selected)
