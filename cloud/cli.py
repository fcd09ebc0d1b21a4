"""``rpm-cloud``: migrate the database, run ingest workers, the API, the alert scheduler; mint dev tokens.

Each command lives in the module that owns it, which provides ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("cloud.db.migrate", "apply the database migrations (safe to run twice, and concurrently)"),
    "ingest": ("cloud.ingest.service", "consume gateway readings from MQTT and store them"),
    "api": ("cloud.api.server", "serve the clinician HTTP API"),
    "token": ("cloud.api.tokens", "mint a development bearer token"),
    "scheduler": ("cloud.alerts.scheduler", "evaluate time-based alert rules and deliver webhooks"),
    "assign": ("cloud.db.assign", "assign a device (and user index) to a patient"),
    "rebind": ("cloud.db.binding", "move a device's binding to another gateway (audited)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpm-cloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
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
