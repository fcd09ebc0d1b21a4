"""Glucose meters that upload their memory over ASTM E1381/E1394 (Contour family and lab devices).

The meter is the sender: it offers ENQ, the gateway answers ACK, then each frame is checked and
ACKed (or NAKed: the meter repeats it, up to 6 times) until EOT. Byte formats live in
``gateway.codecs.astm``; this module is the session (E1381 §6: establishment, transfer, termination).

Every download carries the whole memory; readings get deterministic ids from the meter's serial,
the result's own time and value, so a second download adds nothing. A result is committed to the
sink *before* its frame is ACKed: a cable pulled mid-transfer loses nothing already acknowledged,
and a half-received record is never sent. A result that cannot become a reading (it does not decode,
or the contract refuses its value) is committed to the device quarantine instead and ACKed the same
way, so one bad result never stops the transfer of those after it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from gateway.codecs.astm import (
    ACK,
    ENQ,
    EOT,
    NAK,
    STX,
    AstmRecord,
    Delimiters,
    RecordAssembler,
    decode_result,
    parse_frame,
    parse_header,
    parse_record,
)
from gateway.codecs.common import DecodeError, NoReadingError
from gateway.drivers.base import (
    EARLIEST_PLAUSIBLE,
    ClockCheck,
    DeviceNotAdmittedError,
    DeviceTimeoutError,
    SessionResult,
    gateway_now,
    undecodable,
)
from gateway.drivers.serial_port import ProtocolError, SerialDriver, SerialLink

log = logging.getLogger(__name__)

MAX_RETRIES = 6
"""E1381 §6.3.4.2: a sender gives up on a frame after six NAKs."""
# An E1381 frame is at most 247 bytes; allow noise in front of the STX before calling it garbage.
MAX_FRAME_BYTES = 512


class AstmMeterDriver(SerialDriver):
    profile = "serial.astm"
    default_baudrate = 9600
    identifies_itself = True

    async def session(self, link: SerialLink) -> SessionResult:
        establish_s = float(self.options.get("establish_timeout_s", 30.0))
        # E1381 §6.5.2: a receiver waits 30 s for the next frame; meters are faster, we stay patient.
        frame_s = float(self.options.get("frame_timeout_s", 30.0))
        noise = await self._establish(link, establish_s)
        notes: list[str] = []
        if noise:
            notes.append(f"ignored {noise} byte(s) of noise before ENQ")
        assembler = RecordAssembler()
        delimiters = Delimiters()
        clock: ClockCheck | None = None
        expected_number = 1
        last_good: int | None = None
        retries = 0
        sent = 0
        skipped = 0
        while True:
            data = await self._next_frame(link, frame_s)
            if data == bytes([EOT]):
                if retries:
                    raise ProtocolError(
                        f"{self.port_path}: the meter ended the transfer after {retries} rejected frame(s); "
                        f"{sent} reading(s) kept"
                    )
                break
            try:
                frame = parse_frame(data)
                if frame.number != expected_number:
                    if frame.number == last_good:  # our ACK was lost and the meter repeated the frame
                        await link.write(bytes([ACK]))
                        continue
                    raise ProtocolError(f"frame number {frame.number}, expected {expected_number}")
            except (DecodeError, ProtocolError) as err:
                retries += 1
                log.warning("%s: NAK frame %d (%s), try %d of %d", self.port_path, expected_number, err, retries,
                            MAX_RETRIES)
                if retries > MAX_RETRIES:
                    raise ProtocolError(f"{self.port_path}: frame {expected_number} bad {retries} times: {err}") \
                        from err
                await link.write(bytes([NAK]))
                continue
            retries = 0
            for text in assembler.add(frame):
                try:
                    record = parse_record(text, delimiters)
                    if record.kind == "H":
                        header = parse_header(record)
                except DecodeError as err:
                    if not text.startswith("H"):
                        raise  # parse_record refuses only empty texts and headers
                    # Without its header a transfer has no meter identity to file readings under.
                    raise ProtocolError(f"{self.port_path}: header record does not decode: {err}") from err
                if record.kind == "H":
                    delimiters = header.delimiters
                    clock = self._clock_from(header.device_time)
                    try:
                        self.identify(header.serial, model=header.sender_name)
                    except DeviceNotAdmittedError:
                        # E1381 §6.3.5 receiver interrupt: EOT in place of the ACK asks the meter to stop
                        # (it keeps its memory). Nothing of a meter nobody confirmed is taken.
                        await link.write(bytes([EOT]))
                        raise
                    continue
                outcome = await self._deliver(record, delimiters, clock, frame.number)
                sent += outcome
                skipped += outcome == 0 and record.kind == "R"
            # Every record this frame completed is committed (stored or quarantined): only now the ACK
            # that lets the meter move on.
            await link.write(bytes([ACK]))
            last_good = frame.number
            expected_number = (expected_number + 1) % 8
        if assembler.incomplete:
            notes.append("the transfer ended inside a record; that record was dropped")
        if skipped:
            notes.append(f"{skipped} result record(s) were not patient glucose readings and were skipped")
        return SessionResult(measurements=sent, clock=clock, notes=notes)

    async def _establish(self, link: SerialLink, wait_s: float) -> int:
        """Wait for the meter's ENQ and ACK it; return how many noise bytes came before it."""
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + wait_s
        noise = 0
        while True:
            try:
                chunk = await link.read_some(max(deadline - loop_time(), 0.001))
            except DeviceTimeoutError:
                if noise:
                    raise ProtocolError(
                        f"{self.port_path}: {noise} byte(s) but no ENQ within {wait_s:g} s "
                        f"(wrong baud rate {self.settings}, or not an ASTM device?)"
                    ) from None
                raise
            index = chunk.find(bytes([ENQ]))
            if index < 0:
                noise += len(chunk)
                continue
            noise += index
            rest = chunk[index + 1 :].lstrip(bytes([ENQ]))
            if rest:  # the meter started already (it took an earlier ACK of ours): put the bytes back
                link.unread(rest)
            await link.write(bytes([ACK]))
            return noise

    async def _next_frame(self, link: SerialLink, wait_s: float) -> bytes:
        """The next frame (STX .. LF), or EOT. Noise between frames is dropped; a repeated ENQ is ACKed."""
        skipped = 0
        while True:
            byte = await link.read_exactly(1, wait_s)
            if byte[0] == STX:
                rest = await link.read_until(b"\n", wait_s, limit=MAX_FRAME_BYTES)
                return byte + rest
            if byte[0] == EOT:
                return byte
            if byte[0] == ENQ:  # our ACK to the ENQ got lost
                await link.write(bytes([ACK]))
                continue
            skipped += 1
            if skipped > MAX_FRAME_BYTES:
                raise ProtocolError(f"{self.port_path}: {skipped} bytes of noise between frames")

    def _clock_from(self, device_time: datetime | None) -> ClockCheck:
        unset = device_time is None or device_time < EARLIEST_PLAUSIBLE
        return ClockCheck(gateway_now=gateway_now(), device_now=None if unset else device_time, unset=unset)

    async def _deliver(
        self, record: AstmRecord, delimiters: Delimiters, clock: ClockCheck | None, frame_number: int
    ) -> int:
        """Commit one record to the sink (a reading, or quarantined); 1 if it was a patient result."""
        if record.kind != "R":
            return 0
        try:
            measurement = decode_result(record, delimiters)
        except NoReadingError as err:
            log.info("%s: %s", self.device.uid, err)
            return 0
        except DecodeError as err:
            # A well-framed, checksummed record the meter really sent but we cannot read: it will not
            # read better next time, so it is quarantined (placed by its E1394 sequence number, field 2)
            # and the transfer goes on.
            position = record.field(2).strip() or f"frame {frame_number}"
            await self.sink(self.device, undecodable(self.profile, record.text.encode("latin-1"), err, position), clock)
            return 0
        if measurement.details.get("control_solution"):
            return 0  # a control-solution test checks the meter, not the patient
        await self.sink(self.device, measurement, clock)
        return 1

