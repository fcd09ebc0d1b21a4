"""Child process for the kill -9 test: puts readings one by one and prints each id once put returned
(i.e. once committed). The parent SIGKILLs it mid-stream and checks the outbox on disk."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reading_factory import bp_reading

from gateway.store.outbox import Outbox


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    outbox = Outbox(path)
    readings = [bp_reading(i) for i in range(count)]
    print("ready", flush=True)
    for reading in readings:
        outbox.put(reading)
        print(reading.id, flush=True)


if __name__ == "__main__":
    main()
