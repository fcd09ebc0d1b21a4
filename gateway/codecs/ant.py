"""ANT serial messages (host ↔ USB stick) and ANT+ heart-rate monitor data pages.

Follows ``specs/serial-protocols.md`` section 3, which summarises "ANT Message Protocol and Usage"
rev 5.1 (§7.1 message structure ``SYNC LEN ID DATA CHECKSUM``, checksum = XOR of every byte from SYNC
through the last data byte; §9.5 message ids: 0x4A reset, 0x46 set network key, 0x42 assign channel,
0x51 channel id, 0x43 channel period, 0x45 RF frequency, 0x4B open channel, 0x4D request message,
0x40 channel response/event, 0x4E broadcast data, 0x6F start-up; §7.1.1 extended data with flag
byte 0x80) and the "ANT+ Device Profile: Heart Rate" rev 2.x (§5: every data page carries bytes 4-5
heart-beat event time in 1/1024 s, byte 6 heart-beat count, byte 7 computed heart rate, 0 =
invalid; byte 0 bit 7 toggles every 4 messages; page 4 bytes 2-3 previous heart-beat event time;
page 7 byte 1 battery level).

Pure: bytes in, messages/pages/measurements out; the network key comes from the caller (config).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codecs.common import (
    ChecksumError,
    InvalidFieldError,
    Measurement,
    NoReadingError,
    Quantity,
    TruncatedError,
)

PROFILE = "serial.ant_hrm"
SYNC = 0xA4

MSG_CHANNEL_EVENT = 0x40
MSG_ASSIGN_CHANNEL = 0x42
MSG_CHANNEL_PERIOD = 0x43
MSG_RF_FREQUENCY = 0x45
MSG_NETWORK_KEY = 0x46
MSG_RESET = 0x4A
MSG_OPEN_CHANNEL = 0x4B
MSG_CLOSE_CHANNEL = 0x4C
MSG_REQUEST = 0x4D
MSG_BROADCAST = 0x4E
MSG_CHANNEL_ID = 0x51
MSG_STARTUP = 0x6F

CHANNEL_TYPE_RECEIVE = 0x00
HRM_DEVICE_TYPE = 120
HRM_PERIOD = 8070
"""Counts of 1/32768 s: 4.06 Hz, the HRM profile's full message rate."""
ANT_PLUS_FREQUENCY = 57
"""2400 + 57 = 2457 MHz."""

RESPONSE_NO_ERROR = 0x00
EVENT_RX_SEARCH_TIMEOUT = 0x01
EVENT_RX_FAIL = 0x02
EVENT_CHANNEL_CLOSED = 0x07
EVENT_RX_FAIL_GO_TO_SEARCH = 0x08
CHANNEL_IN_WRONG_STATE = 0x15
CHANNEL_NOT_OPENED = 0x16
INVALID_MESSAGE = 0x28

EVENT_NAMES = {
    RESPONSE_NO_ERROR: "no error",
    EVENT_RX_SEARCH_TIMEOUT: "search timed out",
    EVENT_RX_FAIL: "missed a message",
    EVENT_CHANNEL_CLOSED: "channel closed",
    EVENT_RX_FAIL_GO_TO_SEARCH: "lost the device, searching",
    CHANNEL_IN_WRONG_STATE: "channel in wrong state",
    CHANNEL_NOT_OPENED: "channel not opened",
    INVALID_MESSAGE: "invalid message",
}

_HRM_PAGE_NAMES = {
    0: "default", 1: "cumulative_operating_time", 2: "manufacturer_information", 3: "product_information",
    4: "previous_heart_beat", 5: "swim_interval", 6: "capabilities", 7: "battery_status",
}


def checksum(data: bytes) -> int:
    """XOR of every byte given (SYNC through the last data byte)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def encode_message(message_id: int, payload: bytes) -> bytes:
    body = bytes([SYNC, len(payload), message_id]) + bytes(payload)
    return body + bytes([checksum(body)])


@dataclass(frozen=True, slots=True)
class AntMessage:
    message_id: int
    payload: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChannelId:
    device_number: int
    device_type: int
    transmission_type: int

    @property
    def uid(self) -> str:
        return f"ant:{self.device_number}:{self.transmission_type}"


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A 0x40 message: a response to a command (``message_id`` = that command) or an RF event (1)."""

    channel: int
    message_id: int
    code: int

    @property
    def is_response(self) -> bool:
        return self.message_id != 0x01

    @property
    def ok(self) -> bool:
        return self.code == RESPONSE_NO_ERROR

    def describe(self) -> str:
        name = EVENT_NAMES.get(self.code, f"code 0x{self.code:02x}")
        what = f"reply to 0x{self.message_id:02x}" if self.is_response else "event"
        return f"channel {self.channel} {what}: {name}"


@dataclass(frozen=True, slots=True)
class HeartRatePage:
    page: int
    toggle: bool
    event_time: int
    """Heart-beat event time, 1/1024 s, wraps at 65536."""
    beat_count: int
    """Heart-beat count, wraps at 256."""
    heart_rate: int
    """Computed heart rate, beats/min; 0 = invalid."""
    previous_event_time: int | None = None
    battery_level: int | None = None
    manufacturer_id: int | None = None
    serial: int | None = None


def message_length_at(buffer: bytes | bytearray, start: int) -> int | None:
    """Total length of the message whose SYNC is at ``start``, or None if the length byte has not arrived."""
    if start + 1 >= len(buffer):
        return None
    return buffer[start + 1] + 4


def parse_message(data: bytes) -> AntMessage:
    """One message, SYNC through checksum, checked."""
    data = bytes(data)
    if not data:
        raise TruncatedError("sync", 0, 1, 0)
    if data[0] != SYNC:
        raise InvalidFieldError("sync", 0, f"expected 0xa4, got 0x{data[0]:02x}")
    if len(data) < 4:
        raise TruncatedError("length", len(data), 4 - len(data), len(data))
    length = data[1]
    if len(data) < length + 4:
        raise TruncatedError("data", 3, length + 1, len(data))
    if len(data) > length + 4:
        raise InvalidFieldError("length", 1, f"says {length} data bytes, message has {len(data) - 4}")
    expected = checksum(data[:-1])
    if data[-1] != expected:
        raise ChecksumError(f"0x{expected:02x}", f"0x{data[-1]:02x}", offset=len(data) - 1)
    return AntMessage(data[2], data[3:-1], data)


def parse_channel_event(message: AntMessage) -> ChannelEvent:
    if message.message_id != MSG_CHANNEL_EVENT:
        raise InvalidFieldError("message_id", 2, f"expected 0x40, got 0x{message.message_id:02x}")
    if len(message.payload) < 3:
        raise TruncatedError("channel_event", 3, 3, len(message.raw))
    return ChannelEvent(*message.payload[:3])


def parse_channel_id(message: AntMessage) -> ChannelId:
    """A 0x51 reply (channel, device number LE, device type, transmission type)."""
    if message.message_id != MSG_CHANNEL_ID:
        raise InvalidFieldError("message_id", 2, f"expected 0x51, got 0x{message.message_id:02x}")
    if len(message.payload) < 5:
        raise TruncatedError("channel_id", 3, 5, len(message.raw))
    payload = message.payload
    return ChannelId(int.from_bytes(payload[1:3], "little"), payload[3] & 0x7F, payload[4])


def broadcast_channel_id(message: AntMessage) -> ChannelId | None:
    """The sender's channel id where the stick appends extended data (flag 0x80) to a broadcast."""
    payload = message.payload
    if message.message_id == MSG_BROADCAST and len(payload) >= 14 and payload[9] & 0x80:
        return ChannelId(int.from_bytes(payload[10:12], "little"), payload[12] & 0x7F, payload[13])
    return None


def parse_heart_rate_page(page_bytes: bytes) -> HeartRatePage:
    """The 8 data bytes of an HRM broadcast (ANT+ HRM profile §5)."""
    if len(page_bytes) < 8:
        raise TruncatedError("hrm_page", len(page_bytes), 8, len(page_bytes))
    page = page_bytes[0] & 0x7F
    common = {
        "page": page,
        "toggle": bool(page_bytes[0] & 0x80),
        "event_time": int.from_bytes(page_bytes[4:6], "little"),
        "beat_count": page_bytes[6],
        "heart_rate": page_bytes[7],
    }
    if page == 4:
        return HeartRatePage(**common, previous_event_time=int.from_bytes(page_bytes[2:4], "little"))
    if page == 7:
        level = page_bytes[1]
        return HeartRatePage(**common, battery_level=None if level == 0xFF else level)
    if page == 2:
        return HeartRatePage(
            **common, manufacturer_id=page_bytes[1], serial=int.from_bytes(page_bytes[2:4], "little")
        )
    return HeartRatePage(**common)


def heart_rate_measurement(page: HeartRatePage, raw: bytes, *, new_beat: bool = True) -> Measurement:
    """One HRM page as a heart-rate Measurement (no device time: the strap has no clock).

    The strap repeats a beat's data in every message until the next beat (4 messages a second, about
    one beat): a caller that saw the same beat count before passes ``new_beat=False`` so the RR
    interval is counted once.
    """
    if page.heart_rate == 0:
        raise NoReadingError("no reading: computed heart rate 0 (the strap marks it invalid)")
    values: dict[str, Quantity] = {"heart_rate": Quantity(float(page.heart_rate), "/min")}
    if new_beat and page.previous_event_time is not None and page.event_time != page.previous_event_time:
        rr = (page.event_time - page.previous_event_time) % 65536
        values["rr_intervals"] = Quantity((float(rr),), "s/1024")
    details: dict[str, object] = {
        "page": _HRM_PAGE_NAMES.get(page.page, page.page),
        "beat_count": page.beat_count,
        "event_time": page.event_time,
    }
    if page.battery_level is not None:
        details["battery_level"] = page.battery_level
    return Measurement(profile=PROFILE, kind="heart_rate", values=values, raw=raw, details=details)


def decode_message_reading(data: bytes) -> Measurement:
    """``rpm-gateway decode --profile serial.ant_hrm``: one ANT broadcast message with an HRM page."""
    message = parse_message(data)
    if message.message_id == MSG_CHANNEL_EVENT:
        event = parse_channel_event(message)
        raise NoReadingError(f"no reading: a channel response/event ({event.describe()})")
    if message.message_id != MSG_BROADCAST:
        raise NoReadingError(f"no reading: message 0x{message.message_id:02x} is not broadcast data (0x4e)")
    if len(message.payload) < 9:
        raise TruncatedError("broadcast_data", 3, 9, len(message.raw))
    return heart_rate_measurement(parse_heart_rate_page(message.payload[1:9]), bytes(data))
