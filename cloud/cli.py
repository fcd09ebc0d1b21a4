"""``rpm-cloud``: migrate the database, run ingest workers, the API, the alert scheduler; mint dev tokens.

Each command lives in the module that owns it, which provides ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from cloud.errors import CloudError
from cloud.logging_setup import configure_logging
from cloud.settings import CloudSettings

COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("cloud.db.migrate", "apply the database migrations (safe to run twice, and concurrently)"),
    "ingest": ("cloud.ingest.service", "consume gateway readings from MQTT and store them"),
    "api": ("cloud.api.server", "serve the clinician HTTP API"),
    "token": ("cloud.api.tokens", "mint a development bearer token"),
    "scheduler": ("cloud.alerts.scheduler", "evaluate time-based alert rules and deliver webhooks"),
    "assign": ("cloud.devices.assignment", "assign a device (and user index) to a patient"),
    "rebind": ("cloud.devices.binding", "move a device's binding to another gateway (audited)"),
    "ehr-push": ("cloud.ehr_push.worker", "push PHD transaction Bundles to the configured EHR (FHIR, SMART backend)"),
    "storage": ("cloud.db.storage", "show the storage backend, sizes, compression and retention policy"),
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
    try:
        # Once, before the command runs: every cloud process logs the same way (RPM_LOG_FORMAT, RPM_LOG_LEVEL).
        configure_logging(args.command)
        return int(args.handler(args) or 0)
    except ValidationError as err:
        if err.title != CloudSettings.__name__:
            raise
        # A bad RPM_* variable: one line naming it, exit 2 like a bad gateway config.
        problems = "; ".join(f"RPM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        print(f"error: settings: {problems}", file=sys.stderr)
        return 2
    except CloudError as err:
        # What a command leaves unhandled: one line, and the exit code an uncaught error always had (the
        # traceback at RPM_LOG_LEVEL=DEBUG).
        logging.getLogger(__name__).debug("rpm-cloud %s failed", args.command, exc_info=err)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
