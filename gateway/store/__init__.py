"""Store and forward: the outbox on disk, its salvage and disk budget, acked positions, the uplink."""
