"""Apply ordered plain-SQL migrations from ``cloud/db/migrations`` and record them.

Safe to run twice (applied versions are skipped) and from two processes at once (a session-level
advisory lock serialises them). Each migration runs in its own transaction.

A file whose first line is ``-- requires: timescaledb`` runs only where that extension is available;
the schema is complete without it. Storage policy from the settings reaches the SQL as session
settings ``rpm.retention_days`` and ``rpm.compress_after_days`` (read with ``current_setting``), and
after the migrations every run makes the TimescaleDB policy jobs match them (cloud.db.storage), so a
changed ``RPM_RETENTION_DAYS`` / ``RPM_COMPRESS_AFTER_DAYS`` takes effect on the next ``migrate``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cloud.db.pool import failure_line
from cloud.db.storage import PolicyChange, apply_policies
from cloud.settings import get_settings

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary but fixed: every migrating process takes the same lock.
ADVISORY_LOCK_ID = 0x52504D_0001


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def requires(self) -> str | None:
        first = self.path.read_text().split("\n", 1)[0]
        if first.startswith("-- requires:"):
            return first.split(":", 1)[1].strip()
        return None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        migrations.append(Migration(version, name, path))
    versions = [m.version for m in migrations]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration versions in {directory}: {versions}")
    return migrations


def extension_available(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,)).fetchone()
    return row is not None


def apply_migrations(
    database_url: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    retention_days: int | None = None,
    compress_after_days: int = 7,
    policy_changes: list[PolicyChange] | None = None,
) -> list[str]:
    """Apply what is pending, then the storage policy; return the versions applied by this call (and, in
    ``policy_changes`` when given, the policies it changed)."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('rpm.retention_days', %s, false)",
                     ("" if retention_days is None else str(retention_days),))
        conn.execute("SELECT set_config('rpm.compress_after_days', %s, false)", (str(compress_after_days),))
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in discover(directory):
                if migration.version in done:
                    continue
                if migration.requires and not extension_available(conn, migration.requires):
                    log.info("skipping migration %s: extension %s not available", migration.version,
                             migration.requires)
                    continue
                with conn.transaction():
                    conn.execute(migration.path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %s_%s", migration.version, migration.name)
                applied_now.append(migration.version)
            # Under the same lock: two migrating processes never add the same policy twice.
            changes = apply_policies(conn, retention_days=retention_days, compress_after_days=compress_after_days)
            for change in changes:
                log.info("storage policy %s: %s -> %s days", change.policy, change.before_days, change.after_days)
            if policy_changes is not None:
                policy_changes.extend(changes)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_ID,))
    return applied_now


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")


def main(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = args.database_url or settings.database_url
    changes: list[PolicyChange] = []
    try:
        applied = apply_migrations(url, retention_days=settings.retention_days,
                                   compress_after_days=settings.compress_after_days, policy_changes=changes)
    except psycopg.OperationalError as err:
        print(f"error: {failure_line(err)}")
        return 2
    except ValueError as err:  # a policy setting out of range (cloud.db.storage)
        print(f"error: settings: {err}")
        return 2
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    for change in changes:
        print(f"storage policy {change.policy}: "
              f"{'none' if change.before_days is None else f'{change.before_days:g} days'} -> "
              f"{'none' if change.after_days is None else f'{change.after_days:g} days'}")
    return 0
