"""``rpm-sim``: simulated devices (BLE peripherals, serial devices on ptys) and the fleet load generator.

Each command's module provides ``add_arguments(parser)`` and ``main(args) -> int`` and is imported
only when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "ble": ("firmware_sims.ble.cli", "simulated BLE health peripherals (a scenario for the sim backend)"),
    "serial": ("firmware_sims.serial.cli", "a simulated USB serial device on a pseudo-terminal"),
    "load": ("firmware_sims.load", "G simulated gateways (reconnecting, re-sending what the cloud did not ack) "
                                   "publish readings; a report of loss, duplicates and latency"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rpm-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(handler=module.main)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
