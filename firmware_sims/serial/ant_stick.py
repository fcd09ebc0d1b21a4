"""A simulated ANT USB stick with an ANT+ heart-rate strap in range, on a pty.

Encoded on its own from ``specs/serial-protocols.md`` §3 (no gateway imports): serial messages
``A4 LEN ID DATA XOR``; the stick answers each configuration command with a channel response (0x40,
code 0), sends the start-up message (0x6F) after a reset, and once the channel is open and set up
as the strap expects (same network key, 2457 MHz, device type 120 or wildcard, device number 0 or
the strap's) relays the strap's broadcasts (0x4E) and answers a channel-id request (0x4D → 0x51).
A channel that cannot find the strap reports a search time-out (0x40 event 0x01) then channel
closed (0x07).

HRM pages as the ANT+ HR profile defines them: page 4 (previous beat time) in the main rotation,
background pages 2 (manufacturer), 3 (product) and 7 (battery) four times each every 65 messages,
the toggle bit flipping every four messages, bytes 4-7 beat time (1/1024 s), count, heart rate.
Time is simulated: each broadcast advances the strap's clock by one channel period (8070/32768 s)
whatever the real interval, so tests run fast.

Faults: bad checksums on every n-th broadcast, garbage bursts, the strap leaving range, a pulled cable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from firmware_sims.serial.pty_device import PtyDevice

SYNC = 0xA4
PERIOD_S = 8070 / 32768


def message(message_id: int, payload: bytes) -> bytes:
    body = bytes([SYNC, len(payload), message_id]) + payload
    xor = 0
    for byte in body:
        xor ^= byte
    return body + bytes([xor])


@dataclass
class HeartRateStrap:
    device_number: int = 12345
    transmission_type: int = 1
    network_key: bytes = bytes(8)
    """The key of the network the strap transmits on; the stick must be given the same one."""
    heart_rate: Callable[[float], float] = lambda t: 72.0
    """Beats per minute at simulated time t (seconds since the strap started)."""
    battery_percent: int = 80
    manufacturer_id: int = 1
    serial: int = 0x3039

    # Strap state (advances as it transmits).
    time_s: float = 0.0
    last_beat_s: float = 0.0
    previous_beat_s: float = 0.0
    beat_count: int = 0
    messages: int = 0
    next_beat_s: float | None = None

    def next_page(self) -> bytes:
        rate = self.heart_rate(self.time_s)
        if self.next_beat_s is None:  # the strap was beating before we listened: a beat at 0, one before
            self.previous_beat_s = -60.0 / rate if rate > 0 else 0.0
            self.next_beat_s = 60.0 / rate if rate > 0 else 1.0
        self.time_s += PERIOD_S
        rate = self.heart_rate(self.time_s)
        while rate > 0 and self.next_beat_s <= self.time_s:
            self.previous_beat_s, self.last_beat_s = self.last_beat_s, self.next_beat_s
            self.beat_count = (self.beat_count + 1) % 256
            self.next_beat_s += 60.0 / rate
        index = self.messages
        self.messages += 1
        toggle = 0x80 if (index // 4) % 2 else 0
        slot = index % 65
        event = int(self.last_beat_s * 1024) & 0xFFFF
        tail = event.to_bytes(2, "little") + bytes([self.beat_count, min(255, round(rate))])
        if 64 - 4 < slot <= 64:  # four background pages every 65 messages, cycling 2, 3, 7
            page = (2, 3, 7)[(index // 65) % 3]
            if page == 2:
                body = bytes([self.manufacturer_id]) + self.serial.to_bytes(2, "little")
            elif page == 3:
                body = bytes([1, 3, 12])  # hardware version, software version, model number
            else:
                body = bytes([self.battery_percent, 0, 0])
            return bytes([page | toggle]) + body + tail
        previous = int(self.previous_beat_s * 1024) & 0xFFFF
        return bytes([4 | toggle, 0xFF]) + previous.to_bytes(2, "little") + tail


@dataclass
class AntFaults:
    bad_checksum_every: int | None = None
    garbage_every: int | None = None
    strap_leaves_after: int | None = None
    """The strap goes out of range after this many broadcasts."""
    pull_after_broadcasts: int | None = None


@dataclass
class _Channel:
    assigned: bool = False
    network: int = 0
    device_number: int = 0
    device_type: int = 0
    transmission_type: int = 0
    period: int = 8192
    frequency: int = 66
    open: bool = False
    found: bool = False


class PtyAntStick(PtyDevice):
    baudrate = 115200

    def __init__(self, strap: HeartRateStrap | None, faults: AntFaults | None = None, *,
                 broadcast_interval: float = 0.01, search_timeout: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.strap = strap
        self.faults = faults or AntFaults()
        self.broadcast_interval = broadcast_interval
        self.search_timeout = search_timeout
        self.received: list[tuple[int, bytes]] = []
        """(message id, payload) of every well-formed host message, for tests."""
        self.broadcasts = 0

    def on_plug_in(self) -> None:
        self.keys: dict[int, bytes] = {}
        self.channels: dict[int, _Channel] = {}
        self.received = []
        self.broadcasts = 0
        self._buffer = bytearray()
        self._search_started: float | None = None
        self._clock = 0.0

    def serve(self) -> None:
        while True:
            self._handle_host(self.receive(self.broadcast_interval))
            self._clock += self.broadcast_interval
            for number, channel in self.channels.items():
                if channel.open:
                    self._radio(number, channel)

    # --- host → stick --------------------------------------------------------------------------

    def _handle_host(self, data: bytes) -> None:
        self._buffer.extend(data)
        while True:
            start = self._buffer.find(bytes([SYNC]))
            if start < 0:
                self._buffer.clear()
                return
            del self._buffer[:start]
            if len(self._buffer) < 2 or len(self._buffer) < self._buffer[1] + 4:
                return
            length = self._buffer[1]
            raw = bytes(self._buffer[: length + 4])
            xor = 0
            for byte in raw[:-1]:
                xor ^= byte
            if xor != raw[-1]:
                del self._buffer[:1]  # not a message: resynchronise on the next SYNC
                continue
            del self._buffer[: length + 4]
            self._command(raw[2], raw[3:-1])

    def _respond(self, channel: int, message_id: int, code: int = 0) -> None:
        self.send(message(0x40, bytes([channel, message_id, code])))

    def _command(self, message_id: int, payload: bytes) -> None:
        self.received.append((message_id, payload))
        channel_number = payload[0] if payload else 0
        channel = self.channels.setdefault(channel_number, _Channel()) if message_id != 0x46 else None
        if message_id == 0x4A:  # reset system
            self.keys.clear()
            self.channels.clear()
            self.sleep(0.01)
            self.send(message(0x6F, bytes([0x20])))  # start-up: reset by command
        elif message_id == 0x46 and len(payload) == 9:
            self.keys[payload[0]] = payload[1:]
            self._respond(payload[0], 0x46)
        elif message_id == 0x42 and channel is not None and len(payload) >= 3:
            channel.assigned, channel.network = True, payload[2]
            self._respond(channel_number, 0x42)
        elif message_id == 0x51 and channel is not None and len(payload) == 5:
            channel.device_number = int.from_bytes(payload[1:3], "little")
            channel.device_type, channel.transmission_type = payload[3], payload[4]
            self._respond(channel_number, 0x51)
        elif message_id == 0x43 and channel is not None and len(payload) == 3:
            channel.period = int.from_bytes(payload[1:3], "little")
            self._respond(channel_number, 0x43)
        elif message_id == 0x45 and channel is not None and len(payload) == 2:
            channel.frequency = payload[1]
            self._respond(channel_number, 0x45)
        elif message_id == 0x4B and channel is not None:
            if not channel.assigned:
                self._respond(channel_number, 0x4B, 0x15)  # channel in wrong state
                return
            channel.open, channel.found = True, False
            self._search_started = self._clock
            self._respond(channel_number, 0x4B)
        elif message_id == 0x4C and channel is not None:
            channel.open = False
            self._respond(channel_number, 0x4C)
            self._respond(channel_number, 0x01, 0x07)
        elif message_id == 0x4D and channel is not None and len(payload) == 2 and payload[1] == 0x51:
            strap = self.strap
            if channel.found and strap is not None:
                ids = strap.device_number.to_bytes(2, "little") + bytes([120, strap.transmission_type])
            else:
                ids = channel.device_number.to_bytes(2, "little") + bytes(
                    [channel.device_type, channel.transmission_type])
            self.send(message(0x51, bytes([channel_number]) + ids))
        else:
            self._respond(channel_number, message_id, 0x28)  # invalid message

    # --- strap → stick → host ------------------------------------------------------------------

    def _strap_audible(self, channel: _Channel) -> bool:
        strap = self.strap
        if strap is None:
            return False
        leaves = self.faults.strap_leaves_after
        if leaves is not None and self.broadcasts >= leaves:
            return False
        return (
            self.keys.get(channel.network) == strap.network_key
            and channel.frequency == 57
            and channel.device_type in (0, 120)
            and channel.device_number in (0, strap.device_number)
            and channel.transmission_type in (0, strap.transmission_type)
        )

    def _radio(self, number: int, channel: _Channel) -> None:
        if not self._strap_audible(channel):
            if channel.found:  # lost it: the stick says so, searches, then gives up
                channel.found = False
                self._search_started = self._clock
                self._respond(number, 0x01, 0x08)
            elif self._search_started is not None and self._clock - self._search_started >= self.search_timeout:
                channel.open = False
                self._respond(number, 0x01, 0x01)  # search timeout
                self._respond(number, 0x01, 0x07)  # channel closed
            return
        channel.found = True
        assert self.strap is not None
        page = self.strap.next_page()
        data = message(0x4E, bytes([number]) + page)
        self.broadcasts += 1
        every = self.faults.bad_checksum_every
        if every and self.broadcasts % every == 0:
            data = data[:-1] + bytes([data[-1] ^ 0x5A])
        garbage = self.faults.garbage_every
        if garbage and self.broadcasts % garbage == 0:
            self.send(b"\x00\xa4\xff\x13\x37")
        self.send(data)
        pull = self.faults.pull_after_broadcasts
        if pull is not None and self.broadcasts >= pull:
            self.pull_cable()
