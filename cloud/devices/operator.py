"""What the device commands run on the server (``rpm-cloud assign``, ``rpm-cloud rebind``) share: who the
operator is for the audit log, and how a refused change or an unreachable database ends the command."""

from __future__ import annotations

import getpass
from collections.abc import Callable

import psycopg

from cloud.db.pool import failure_line


def os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container: still audited, as unknown
        return "unknown"


def exit_code_of(command: Callable[[], int], refused: type[Exception]) -> int:
    """Run ``command``; a change the rules refuse (``refused``) or a database that cannot be reached is
    one line on standard output and exit 2 (scripts read these commands' output)."""
    try:
        return command()
    except refused as err:
        print(f"error: {err}")
        return 2
    except psycopg.OperationalError as err:
        print(f"error: {failure_line(err)}")
        return 2
