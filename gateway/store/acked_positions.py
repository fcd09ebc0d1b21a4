"""The acked position of each device with a memory follows the cloud's acks (ARCHITECTURE point 4).

Gateway core: it listens to the outbox's acks and writes the positions drivers resume from into their
:class:`~gateway.drivers.device_state.DeviceStateStore`.
"""

from __future__ import annotations

import threading

from gateway.drivers.device_state import ACKED_SEQUENCE_KEY, CURSOR_KEYS, RECORD_ORDINAL_KEY, DeviceStateStore
from gateway.store.outbox import AckedReading, Outbox


class AckedPositions:
    """Keeps each sequence-numbered device's acked position (:data:`ACKED_SEQUENCE_KEY`) following the
    cloud: the sink reports each stored reading (:meth:`stored`), the outbox each ack (:meth:`acked`).

    The acked position is the device's download cursor (everything read, quarantined records and
    skipped control-solution tests included: they never get an ack and must not hold it back), but
    never at or past the lowest record still held: stored locally and not yet in the cloud. A held
    record the outbox no longer has and the cloud never confirmed is a *lost* one: it keeps holding the
    position until the device gives it again. Thread-safe: the uplink applies acks on a worker thread.
    """

    def __init__(self, state: DeviceStateStore, outbox: Outbox, *, cursor_keys: tuple[str, ...] = CURSOR_KEYS) -> None:
        self.state = state
        self.outbox = outbox
        self.cursor_keys = cursor_keys
        self._lock = threading.Lock()
        # Devices whose positions are the gateway's own record count (not in the reading): their acks
        # carry no sequence, so they are recognised by uid.
        self._counted = set(state.uids_with(RECORD_ORDINAL_KEY))
        state.follows_acks = True
        outbox.on_acked(self.acked)

    def stored(self, uid: str, reading_id: str, position: int, *, counted: bool = False) -> None:
        """A reading with a device position is committed (new or known): hold its position while the
        outbox has it unacked; release it where the outbox already settled it (delivered before).
        ``counted``: the position is the gateway's record count, not the reading's sequence number."""
        with self._lock:
            if counted:
                self._counted.add(uid)
            if self.outbox.contains(reading_id):
                self.state.hold(uid, position, reading_id)
            else:
                self.state.release(uid, [reading_id])

    def acked(self, confirmed: list[AckedReading]) -> None:
        """The outbox's ack listener: release what the cloud now holds and advance the acked positions."""
        by_device: dict[str, list[AckedReading]] = {}
        for item in confirmed:
            if item.device_uid is not None and (item.sequence is not None or item.device_uid in self._counted):
                by_device.setdefault(item.device_uid, []).append(item)
        for uid, items in by_device.items():
            with self._lock:
                self._advance(uid, items)

    def _advance(self, uid: str, items: list[AckedReading]) -> None:
        self.state.release(uid, [item.id for item in items])
        # The cursor is read before the held records: the sink holds a record before the driver moves
        # its cursor onto it, so a cursor seen here never runs ahead of the holds read next.
        cursor = next((value for key in self.cursor_keys if (value := self.state.get(uid, key)) is not None), None)
        held = self.state.held(uid)
        if held:
            # Settled by another path (the cloud rejected it into quarantine; an earlier ack named it).
            settled = self.outbox.settled([reading_id for _, reading_id in held])
            if settled:
                self.state.release(uid, settled)
                held = [(p, r) for p, r in held if r not in settled]
        old = self.state.get(uid, ACKED_SEQUENCE_KEY)
        known = [int(v) for v in (old, cursor, *(item.sequence for item in items)) if v is not None]
        if not known:
            return
        top = max(known)
        position = top if not held else min(top, held[0][0] - 1)
        if position != old:
            self.state.set(uid, ACKED_SEQUENCE_KEY, position)
