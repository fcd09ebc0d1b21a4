"""The queue between ingest's MQTT callback and its writer: the present before the backlog.

After an outage every gateway sends hours of backlog at once, and a crisis measured now must not wait
behind it. Gateways send their newest readings in small messages of their own while a backlog drains
(:data:`gateway.contract.PRIORITY_PAYLOAD_BYTES`, ``gateway.store.uplink``), so the writer takes small
messages first and the large backlog messages after them. Telling them apart costs a ``len``: the
payload is not parsed on the network thread.

Small messages are taken round robin per topic (per gateway), so one gateway that floods small
messages delays its own, not every other gateway's. Every group still takes one large message when one
waits, so a steady stream of small messages slows a drain but cannot stop it.

The queue is bounded by messages: the MQTT v5 Receive Maximum asks the broker for no more, so ``put``
never blocks paho's network thread there (with MQTT 3.1.1 it does, which stops it reading the socket).
Bytes are bounded at the broker (``max_inflight_bytes`` in deploy/mosquitto): blocking the network
thread on a byte budget here would hold back every PUBACK and app-level ack with it, and the drain
with them (measured: a tenth of the throughput).

Taking out of order does not reorder the broker's acknowledgements: :class:`AckOrder` releases PUBACKs
in the order the PUBLISHes arrived (MQTT 5.0 section 4.6), while the app-level ack, which is what a
gateway waits for, leaves as soon as its message is committed.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Message(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


T = TypeVar("T", bound=Message)


class Lanes(Generic[T]):
    """A bounded two-lane queue with ``queue.Queue``'s calls (``put``, ``get``, ``task_done``, ...)."""

    def __init__(self, maxsize: int, small_max_bytes: int) -> None:
        self.maxsize = maxsize
        self.small_max_bytes = small_max_bytes
        self._small: OrderedDict[str, deque[T]] = OrderedDict()
        self._large: deque[T] = deque()
        self._count = 0
        self.unfinished_tasks = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    # -------------------------------------------------------------------------------- producer

    def put_nowait(self, item: T) -> None:
        self.put(item, block=False)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        with self._not_full:
            if not self._not_full.wait_for(lambda: self._count < self.maxsize, timeout if block else 0):
                raise queue.Full
            if len(item.payload) <= self.small_max_bytes:
                lane = self._small.get(item.topic)
                if lane is None:
                    lane = self._small[item.topic] = deque()
                lane.append(item)
            else:
                self._large.append(item)
            self._count += 1
            self.unfinished_tasks += 1
            self._not_empty.notify()

    # -------------------------------------------------------------------------------- consumer

    def get_nowait(self, *, large: bool = True) -> T:
        return self.get(block=False, large=large)

    def get(self, block: bool = True, timeout: float | None = None, *, large: bool = True) -> T:
        """The next message: a small one if any waits (round robin per topic), else a large one.

        ``large=False``: only a small one (``queue.Empty`` if none waits).
        """
        with self._not_empty:
            if not self._not_empty.wait_for(lambda: self._available(large), timeout if block else 0):
                raise queue.Empty
            return self._taken(self._take_small() if self._small else self._large.popleft())

    def get_large_nowait(self) -> T:
        """A large message if one waits, whatever waits in the small lane (``queue.Empty`` if none)."""
        with self._lock:
            if not self._large:
                raise queue.Empty
            return self._taken(self._large.popleft())

    def _taken(self, item: T) -> T:
        self._count -= 1
        self._not_full.notify()
        return item

    def _available(self, large: bool) -> bool:
        return bool(self._small) or (large and bool(self._large))

    def _take_small(self) -> T:
        topic, lane = next(iter(self._small.items()))
        item = lane.popleft()
        if lane:
            self._small.move_to_end(topic)
        else:
            del self._small[topic]
        return item

    def task_done(self) -> None:
        with self._lock:
            if self.unfinished_tasks <= 0:
                raise ValueError("task_done() called too many times")
            self.unfinished_tasks -= 1

    def qsize(self) -> int:
        with self._lock:
            return self._count

    def empty(self) -> bool:
        return self.qsize() == 0


class AckOrder:
    """PUBACKs in arrival order: ``received`` on the network thread as each PUBLISH arrives, ``done``
    on the writer thread once it is committed; :meth:`done` sends every acknowledgement that is now
    at the head of the line. Keyed by the connection's generation and the packet id, since ids are
    reused per connection and deliveries of an older connection are never acknowledged on this one."""

    def __init__(self, send: Callable[[int, int], None]) -> None:
        self._send = send
        self._line: deque[tuple[int, int, int]] = deque()
        self._done: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def received(self, generation: int, mid: int, qos: int) -> None:
        if qos > 0:
            with self._lock:
                self._line.append((generation, mid, qos))

    def done(self, deliveries: Iterator[tuple[int, int, int]], generation: int) -> int:
        """Mark these ``(generation, mid, qos)`` committed; send what can go now; return how many went."""
        sent = 0
        with self._lock:
            self._done.update((g, m) for g, m, q in deliveries if q > 0)
            line = self._line
            while line:
                head_generation, mid, qos = line[0]
                if head_generation != generation:
                    # An older connection's: never acknowledged here (the broker redelivers it).
                    line.popleft()
                    self._done.discard((head_generation, mid))
                    continue
                if (head_generation, mid) not in self._done:
                    break
                line.popleft()
                self._done.discard((head_generation, mid))
                self._send(mid, qos)
                sent += 1
        return sent

    def waiting(self) -> int:
        with self._lock:
            return len(self._line)
