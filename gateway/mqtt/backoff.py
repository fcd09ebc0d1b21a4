"""The one exponential backoff: how long to wait before retry ``n`` (reconnects, restarts, retries).

The loops that use it differ in what they do between attempts (an asyncio supervisor that shows the
error in the status, a writer thread that retries the same transaction, a delivery row whose next
attempt is stored in the database), so it computes the wait and leaves the loop to its caller.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Past this many doublings every delay is the cap anyway; it keeps ``factor ** n`` from overflowing a
# float after a very long outage (2.0 ** 1024 raises OverflowError).
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Retry ``n`` (1-based) waits ``first_s * factor ** (n - 1)``, at most ``max_s``, times a random
    factor drawn from ``jitter`` (low, high). Jitter spreads clients that failed together (a fleet
    whose broker restarted) so that they do not retry together; ``(1.0, 1.0)`` means none."""

    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: tuple[float, float] = (1.0, 1.0)

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``attempt``; ``rng`` returns a float in [0, 1)."""
        exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
        wait = min(self.max_s, self.first_s * self.factor**exponent)
        low, high = self.jitter
        if low == high == 1.0:
            return wait
        return wait * (low + (high - low) * rng())
