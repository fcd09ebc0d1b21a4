"""``rpm-gateway``: decode a frame, scan and enrol devices, run the gateway.

Every failure a user can cause exits 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, load_config
from gateway.errors import GatewayError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpm-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    decode = sub.add_parser("decode", help="decode one captured frame and print JSON")
    decode.add_argument("--profile", required=True, help="e.g. ble.blood_pressure, serial.astm")
    decode.add_argument("--model", help="device model, where the profile's layout depends on it")
    decode.add_argument("hex", nargs="+", help="the frame as hex (spaces allowed)")

    for name, help_text in (
        ("scan", "list health devices around (BLE) and plugged in (USB), and which are enrolled"),
        ("pair", "open an enrolment window: new health devices seen in it are enrolled"),
        ("run", "run the gateway: discovery, device sessions, outbox and uplink"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", help="gateway TOML file (default: built-in defaults)")
        if name in ("scan", "pair"):
            command.add_argument("--seconds", type=float, default=10.0 if name == "scan" else 120.0)
    return parser


def _one_line(err: Exception) -> str:
    # One line whatever the message holds (a TOML error can quote the file's own text).
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except GatewayError as err:
        # What a command leaves unhandled: one line, and the exit code an uncaught error always had (the
        # traceback at the debug log level).
        logging.getLogger(__name__).debug("rpm-gateway %s failed", args.command, exc_info=err)
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace) -> int:
    if args.command == "decode":
        from gateway.readings.decode import run as run_decode

        return run_decode(args.profile, " ".join(args.hex), args.model)
    try:
        config = load_config(args.config)
        if args.command == "run":
            from gateway.runtime import check_startup

            check_startup(config)
    except ConfigError as err:
        print(f"error: config: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.command == "scan":
        from gateway.discovery.scan import run_scan

        return run_scan(config, args.seconds)
    if args.command == "pair":
        from gateway.discovery.scan import run_pair

        return run_pair(config, args.seconds)
    from gateway.runtime import run_gateway

    return run_gateway(config)


if __name__ == "__main__":
    sys.exit(main())
