"""A gateway process for fault tests: the real runtime (outbox, uplink, status) fed by a simulated
device that delivers stored records ``START``..``START+COUNT-1`` through the sink at ``RATE``/s.

Prints ``stored <sequence>`` once the sink returned (committed), ``fed`` when done, and exits 0 on
SIGTERM after the runtime's drain. A restarted child re-reads the same records (a device whose
memory still holds them): ids are deterministic, so the cloud must end with each one once.

    python gateway_child.py CONFIG.toml START COUNT RATE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reading_factory import bp_measurement, cuff

from gateway.config import load_config
from gateway.ops.logging_setup import configure_logging
from gateway.runtime import Gateway


async def main(config_path: str, start: int, count: int, rate: float) -> int:
    config = load_config(config_path)
    configure_logging(config.log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(config, start_devices=False)
    await gateway.start()
    device = cuff(f"ble:{config.gateway_id}-cuff")
    try:
        for sequence in range(start, start + count):
            if stop.is_set():
                break
            await gateway.sink(device, bp_measurement(sequence), None)
            print(f"stored {sequence}", flush=True)
            if rate > 0:
                await asyncio.sleep(1 / rate)
        print("fed", flush=True)
        await stop.wait()
    finally:
        await gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))))
