"""``rpm-gateway``: decode a frame, scan and enrol devices, run the gateway.

Every failure a user can cause exits 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, GatewayConfig, load_config, local_document, merge_documents, parse_config
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
        ("pair", "open a pairing window, list the devices waiting to be confirmed, confirm or ignore them"),
        ("run", "run the gateway: discovery, device sessions, outbox and uplink"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", help="gateway TOML file (default: built-in defaults)")
        if name in ("scan", "pair"):
            command.add_argument("--seconds", type=float, default=10.0 if name == "scan" else 120.0)
        if name == "pair":  # issue 19: candidates are confirmed one by one, never swept in
            command.add_argument("--confirm", nargs="+", default=[], metavar="N",
                                 help="confirm candidates by number (3:2 = number 3 as user 2) or uid")
            command.add_argument("--ignore", nargs="+", default=[], metavar="N", help="ignore candidates (not mine)")
    # ---- issue 19, provisioning (H10)
    sub.choices["run"].add_argument("--bootstrap-url", help="the cloud's bootstrap endpoint: with no broker "
                                    "settings, the gateway waits to be claimed and gets them from there")
    identity = sub.add_parser("identity", help="print this gateway's id and claim code (made on first use)")
    identity.add_argument("--config", help="gateway TOML file (default: built-in defaults)")
    # ----
    unpair = sub.add_parser("unpair", help="forget a device: it is not read any more; its readings stay")
    unpair.add_argument("uid", help="e.g. ble:C0:FF:EE:00:00:01 (as rpm-gateway pair lists it)")
    unpair.add_argument("--config", help="gateway TOML file (default: built-in defaults)")
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
        if getattr(args, "bootstrap_url", None):
            config = parse_config(merge_documents(local_document(config),
                                                  {"provisioning": {"bootstrap_url": args.bootstrap_url}}))
        if args.command == "run":
            from gateway.runtime import check_startup

            check_startup(config)
    except ConfigError as err:
        print(f"error: config: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.command == "identity":
        return _print_identity(config)
    if args.command == "scan":
        from gateway.discovery.scan import run_scan

        return run_scan(config, args.seconds)
    if args.command == "pair":
        from gateway.discovery.scan import run_pair

        ask = input if sys.stdin.isatty() and not (args.confirm or args.ignore) else None
        return run_pair(config, args.seconds, confirm=args.confirm, ignore=args.ignore, ask=ask)
    if args.command == "unpair":
        from gateway.discovery.scan import run_unpair

        return run_unpair(config, args.uid)
    from gateway.runtime import run_gateway

    return run_gateway(config)


def _print_identity(config: GatewayConfig) -> int:
    """``rpm-gateway identity``: the id and claim code to print on the box (or read to the care team)."""
    from gateway.provisioning.files import ProvisioningError
    from gateway.provisioning.identity import load_or_create_identity

    try:
        identity = load_or_create_identity(config.data_dir)
    except ProvisioningError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    gateway_id = config.gateway_id if "gateway_id" in config.model_fields_set else identity.gateway_id
    print(f"gateway id: {gateway_id}")
    print(f"claim code: {identity.claim_code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
