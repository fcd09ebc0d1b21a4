"""ANT+ heart-rate straps through an ANT USB stick (serial message protocol).

Session: reset the stick, give it the ANT+ network key (from config ``[usb] ant_network_key``: the
key is distributed by ANT Wireless and never hard-coded), assign channel 0 as a receive channel,
set its channel id (device type 120; the device number learnt from an earlier session, else 0 =
any strap), period 8070, RF 57 (2457 MHz), open it. Each step must be answered by a channel response
with code 0. Then broadcasts (4 Hz) become heart-rate measurements, batched as the BLE heart-rate
driver does (:class:`gateway.drivers.heart_rate_window.HeartRateWindow`: one reading per cadence). The
strap's channel id is learnt with a channel-id request and kept in the device state; it names the
strap (``ant:<device number>:<transmission type>``). A strap leaving range ends its window; the
channel is reopened to search again for as long as the stick is plugged in.

Byte formats live in ``gateway.codecs.ant``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from gateway.codecs.ant import (
    ANT_PLUS_FREQUENCY,
    CHANNEL_TYPE_RECEIVE,
    EVENT_CHANNEL_CLOSED,
    EVENT_RX_FAIL_GO_TO_SEARCH,
    EVENT_RX_SEARCH_TIMEOUT,
    HRM_DEVICE_TYPE,
    HRM_PERIOD,
    MSG_ASSIGN_CHANNEL,
    MSG_BROADCAST,
    MSG_CHANNEL_EVENT,
    MSG_CHANNEL_ID,
    MSG_CHANNEL_PERIOD,
    MSG_CLOSE_CHANNEL,
    MSG_NETWORK_KEY,
    MSG_OPEN_CHANNEL,
    MSG_REQUEST,
    MSG_RESET,
    MSG_RF_FREQUENCY,
    MSG_STARTUP,
    SYNC,
    AntMessage,
    ChannelId,
    broadcast_channel_id,
    encode_message,
    heart_rate_measurement,
    parse_channel_event,
    parse_channel_id,
    parse_heart_rate_page,
    parse_message,
)
from gateway.codecs.common import DecodeError, NoReadingError
from gateway.drivers.base import DeviceInfo, DeviceTimeoutError, DriverError, SessionResult
from gateway.drivers.heart_rate_window import HeartRateWindow
from gateway.drivers.serial_port import ProtocolError, SerialDriver, SerialLink

log = logging.getLogger(__name__)

CHANNEL = 0
NETWORK = 0
# The longest message a stick sends (broadcast with extended data and RSSI/timestamp) is well under this.
MAX_MESSAGE_DATA = 32
MAX_BAD_IN_A_ROW = 20
STATE_KEY = "ant_hrm_channel_id"


class AntConfigError(DriverError):
    """The ANT+ network key is missing or malformed in the configuration."""


def parse_network_key(text: str | None) -> bytes:
    if not text:
        raise AntConfigError(
            "usb.ant_network_key is not set: the ANT+ network key (16 hex digits) is distributed by "
            "ANT Wireless to adopters; put it in the gateway config"
        )
    cleaned = text.replace(":", "").replace(" ", "")
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise AntConfigError("usb.ant_network_key must be 16 hex digits") from None
    if len(key) != 8:
        raise AntConfigError(f"usb.ant_network_key must be 8 bytes, got {len(key)}")
    return key


class AntHeartRateDriver(SerialDriver):
    profile = "serial.ant_hrm"
    default_baudrate = 115200

    async def session(self, link: SerialLink) -> SessionResult:
        key = parse_network_key(self.options.get("network_key"))
        reply_s = float(self.options.get("reply_timeout_s", 2.0))
        window = HeartRateWindow(float(self.options.get("cadence_s", 60.0)))
        max_readings = self.options.get("max_readings")
        stick_uid = self.device.uid
        learnt = None if self.options.get("pair_any") else self.state.get(stick_uid, STATE_KEY)
        strap_id = ChannelId(*learnt) if learnt else None
        self._bad_in_a_row = 0
        self._link = link
        await self._reset(reply_s)
        device_number = strap_id.device_number if strap_id else 0
        transmission_type = strap_id.transmission_type if strap_id else 0
        await self._command(MSG_NETWORK_KEY, bytes([NETWORK]) + key, reply_s, "set network key")
        await self._command(MSG_ASSIGN_CHANNEL, bytes([CHANNEL, CHANNEL_TYPE_RECEIVE, NETWORK]), reply_s,
                            "assign channel")
        await self._command(
            MSG_CHANNEL_ID,
            bytes([CHANNEL]) + device_number.to_bytes(2, "little") + bytes([HRM_DEVICE_TYPE, transmission_type]),
            reply_s, "set channel id",
        )
        await self._command(MSG_CHANNEL_PERIOD, bytes([CHANNEL]) + HRM_PERIOD.to_bytes(2, "little"), reply_s,
                            "set channel period")
        await self._command(MSG_RF_FREQUENCY, bytes([CHANNEL, ANT_PLUS_FREQUENCY]), reply_s, "set RF frequency")
        await self._command(MSG_OPEN_CHANNEL, bytes([CHANNEL]), reply_s, "open channel")

        strap: DeviceInfo | None = self._strap_device(strap_id) if strap_id else None
        asked_id = False
        last_count: int | None = None
        losses = 0
        readings = 0
        battery: int | None = None
        notes: list[str] = []
        try:
            while max_readings is None or readings < int(max_readings):
                try:
                    message = await self._next_message(float(self.options.get("idle_timeout_s", 3600.0)))
                except DeviceTimeoutError:
                    continue
                if message.message_id == MSG_BROADCAST and len(message.payload) >= 9:
                    extended = broadcast_channel_id(message)
                    if extended is not None and strap is None:
                        strap = self._learn(stick_uid, extended)
                    if strap is None:
                        if not asked_id:
                            await link.write(encode_message(MSG_REQUEST, bytes([CHANNEL, MSG_CHANNEL_ID])))
                            asked_id = True
                        continue
                    page = parse_heart_rate_page(message.payload[1:9])
                    if page.battery_level is not None:
                        battery = page.battery_level
                    new_beat = page.beat_count != last_count
                    last_count = page.beat_count
                    try:
                        measurement = heart_rate_measurement(page, message.raw, new_beat=new_beat)
                    except NoReadingError:
                        continue
                    closed = window.add(measurement, datetime.now(UTC))
                    if closed is not None:
                        await self.sink(strap, closed, None)
                        readings += 1
                elif message.message_id == MSG_CHANNEL_ID and strap is None:
                    channel_id = parse_channel_id(message)
                    if channel_id.device_number != 0:
                        strap = self._learn(stick_uid, channel_id)
                    else:  # the stick had not synchronised yet: ask again on the next broadcast
                        asked_id = False
                elif message.message_id == MSG_CHANNEL_EVENT:
                    event = parse_channel_event(message)
                    if event.is_response:
                        continue
                    if event.code == EVENT_RX_FAIL_GO_TO_SEARCH:
                        losses += 1
                    elif event.code in (EVENT_RX_SEARCH_TIMEOUT, EVENT_CHANNEL_CLOSED):
                        readings += await self._flush(window, strap)
                        if event.code == EVENT_CHANNEL_CLOSED:
                            # No strap in range: keep searching for as long as the stick is plugged in.
                            await link.write(encode_message(MSG_OPEN_CHANNEL, bytes([CHANNEL])))
        except DriverError:
            # A pulled stick: what the open window holds was completely received; keep it.
            await self._flush(window, strap)
            raise
        readings += await self._flush(window, strap)
        await link.write(encode_message(MSG_CLOSE_CHANNEL, bytes([CHANNEL])))
        if losses:
            notes.append(f"strap lost {losses} time(s); searched again")
        return SessionResult(measurements=readings, battery=battery, notes=notes)

    def _strap_device(self, channel_id: ChannelId) -> DeviceInfo:
        return DeviceInfo(
            uid=channel_id.uid, transport="usb", profile=self.profile, model="ANT+ heart-rate monitor",
            serial=str(channel_id.device_number),
        )

    def _learn(self, stick_uid: str, channel_id: ChannelId) -> DeviceInfo:
        self.state.set(stick_uid, STATE_KEY, [channel_id.device_number, channel_id.device_type,
                                              channel_id.transmission_type])
        log.info("%s: paired with heart-rate strap %s", stick_uid, channel_id.uid)
        return self._strap_device(channel_id)

    async def _flush(self, window: HeartRateWindow, strap: DeviceInfo | None) -> int:
        closed = window.flush(datetime.now(UTC))
        if closed is None or strap is None:
            return 0
        await self.sink(strap, closed, None)
        return 1

    async def _reset(self, wait_s: float) -> None:
        await self._link.write(encode_message(MSG_RESET, b"\x00"))
        # ANT sticks send a start-up message after a reset; some older firmware does not. Either way the
        # stick needs a moment before it takes commands.
        deadline = asyncio.get_running_loop().time() + min(wait_s, 1.0)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                message = await self._next_message(remaining)
            except DeviceTimeoutError:
                return
            if message.message_id == MSG_STARTUP:
                return

    async def _command(self, message_id: int, payload: bytes, wait_s: float, step: str) -> None:
        await self._link.write(encode_message(message_id, payload))
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await self._next_message(max(remaining, 0.001))
            except DeviceTimeoutError:
                raise DeviceTimeoutError(f"{self.port_path}: ANT stick did not answer '{step}' (wrong baud rate?)") \
                    from None
            if message.message_id != MSG_CHANNEL_EVENT:
                continue
            event = parse_channel_event(message)
            if event.message_id == message_id:
                if not event.ok:
                    raise ProtocolError(f"{self.port_path}: ANT stick refused '{step}': {event.describe()}")
                return

    async def _next_message(self, wait_s: float) -> AntMessage:
        """The next well-formed message; noise and bad checksums are skipped (resynchronising on SYNC)."""
        link = self._link
        while True:
            byte = await link.read_exactly(1, wait_s)
            if byte[0] != SYNC:
                self._noise()
                continue
            length = (await link.read_exactly(1, wait_s))[0]
            if length > MAX_MESSAGE_DATA:
                link.unread(bytes([length]))
                self._noise()
                continue
            rest = await link.read_exactly(length + 2, wait_s)
            raw = bytes([SYNC, length]) + rest
            try:
                message = parse_message(raw)
            except DecodeError as err:
                log.debug("%s: dropped %s: %s", self.port_path, raw.hex(), err)
                link.unread(raw[1:])  # a false SYNC inside noise: look again from the next byte
                self._noise()
                continue
            self._bad_in_a_row = 0
            return message

    def _noise(self) -> None:
        self._bad_in_a_row += 1
        if self._bad_in_a_row > MAX_BAD_IN_A_ROW * 8:
            raise ProtocolError(
                f"{self.port_path}: no valid ANT message in {self._bad_in_a_row} bytes at {self.settings} "
                "(wrong baud rate?)"
            )
