"""The test harness: real PostgreSQL and a real MQTT broker for every test that needs them.

PostgreSQL: ``RPM_TEST_DATABASE_URL`` if set; else 127.0.0.1:5432 if it answers; else an embedded
server from the ``pgserver`` wheel. Each test session gets its own database (dropped after);
``fresh_database_url`` gives a test its own database, cloned from a migrated template.

MQTT: ``RPM_TEST_MQTT_URL`` if set; else a private ``mosquitto`` on a free port when the binary
exists; else the ``amqtt`` broker in-process (MQTT 3.1.1 only).

``RPM_TEST_FORCE_EMBEDDED=1`` ignores local services, to rehearse a fresh machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

log = logging.getLogger("tests.harness")
FORCE_EMBEDDED = os.environ.get("RPM_TEST_FORCE_EMBEDDED") == "1"

# Ingest keeps its MQTT session for an hour by default, and a shared subscription goes on queuing a
# share of every message into a member's session while it lives. A worker a test killed or failed on
# purpose would then swallow later tests' readings (and those of the next run on the same broker) for
# that hour: in tests, sessions outlive their worker by seconds, enough for the restart tests.
os.environ.setdefault("RPM_INGEST_SESSION_EXPIRY_S", "20")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL with the right to create databases."""
    from cloud.embedded import EmbeddedPostgres, port_open

    explicit = os.environ.get("RPM_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if not FORCE_EMBEDDED and port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    # Not under pytest's basetemp: a concurrent pytest session prunes old basetemp folders, which would
    # pull the data directory out from under a running server.
    data_dir = Path(tempfile.mkdtemp(prefix="rpm-test-pg-"))
    server = EmbeddedPostgres(data_dir).start()
    log.warning("no PostgreSQL running: using an embedded one at %s", server.url)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _create_database(admin_url: str, name: str, template: str | None = None) -> str:
    import time

    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        for attempt in range(50):
            try:
                conn.execute(statement)
                break
            except psycopg.errors.ObjectInUse:
                # CREATE DATABASE ... TEMPLATE needs the template to have no other session. Closing the
                # template to connections (_seal_template) keeps TimescaleDB's per-database scheduler
                # out; this covers a session that was already in when it was sealed.
                if not template or attempt == 49:
                    raise
                _close_sessions(conn, template)
                time.sleep(0.05 * (attempt + 1))
    return _with_database(admin_url, name)


def _close_sessions(conn: object, database: str) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"  # type: ignore[attr-defined]
                 " WHERE datname = %s AND pid <> pg_backend_pid()", (database,))


def _seal_template(admin_url: str, name: str) -> None:
    """Let nobody connect to the migrated template any more. TimescaleDB starts a background scheduler in
    every database that allows connections; while it is connected, ``CREATE DATABASE ... TEMPLATE``
    fails with ObjectInUse (the clone needs the template to itself). Its launcher skips databases that
    do not allow connections, as it skips template0; on plain PostgreSQL this changes nothing."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        _close_sessions(conn, name)


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def _migrated_template(pg_admin_url: str) -> Iterator[str]:
    from cloud.db.migrate import apply_migrations

    name = f"rpm_test_tmpl_{uuid.uuid4().hex[:10]}"
    url = _create_database(pg_admin_url, name)
    apply_migrations(url)
    _seal_template(pg_admin_url, name)
    try:
        yield name
    finally:
        _drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str, _migrated_template: str) -> Iterator[str]:
    """A migrated database for the whole test session (tests use unique ids to stay apart)."""
    with _own_database(pg_admin_url, _migrated_template) as url:
        yield url


@contextmanager
def _own_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    name = f"rpm_test_{uuid.uuid4().hex[:10]}"
    url = _create_database(admin_url, name, template=template)
    try:
        yield url
    finally:
        _drop_database(admin_url, name)


@pytest.fixture
def fresh_database_url(pg_admin_url: str, _migrated_template: str) -> Iterator[str]:
    """A migrated database of this test's own, dropped after it."""
    with _own_database(pg_admin_url, _migrated_template) as url:
        yield url


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """An unmigrated database of this test's own (for migration tests)."""
    with _own_database(pg_admin_url) as url:
        yield url


@dataclass(frozen=True)
class BrokerInfo:
    host: str
    port: int
    kind: str
    """``mosquitto`` (private process), ``amqtt`` (in-process) or ``external``."""
    supports_v5: bool

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _probe_v5(host: str, port: int) -> bool:
    import threading

    import paho.mqtt.client as mqtt

    result: dict[str, bool] = {}
    done = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"probe-{uuid.uuid4().hex[:8]}"
    )

    def on_connect(client, userdata, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        result["ok"] = not reason_code.is_failure
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, 5)
        client.loop_start()
        done.wait(5)
    except OSError:
        return False
    finally:
        client.loop_stop()
        client.disconnect()
    return result.get("ok", False)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerInfo]:
    from cloud.embedded import start_amqtt, start_broker

    explicit = os.environ.get("RPM_TEST_MQTT_URL")
    if explicit:
        parts = urlsplit(explicit)
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        yield BrokerInfo(host, port, "external", _probe_v5(host, port))
        return
    broker = start_amqtt() if FORCE_EMBEDDED else start_broker()
    try:
        yield BrokerInfo(broker.host, broker.port, broker.kind, broker.supports_v5)
    finally:
        broker.stop()


@pytest.fixture
def unique_id() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(__file__).parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def private_postgres() -> Iterator:  # type: ignore[type-arg]
    """A migrated PostgreSQL of this test's own, so the test can stop it hard and start it again."""
    from cloud.db.migrate import apply_migrations
    from cloud.embedded import EmbeddedPostgres, EmbeddedServiceError

    # Outside pytest's basetemp, which a concurrent pytest session may prune under a running server.
    data_dir = Path(tempfile.mkdtemp(prefix="rpm-test-pg-"))
    try:
        server = EmbeddedPostgres(data_dir).start()
    except EmbeddedServiceError as err:
        pytest.skip(f"cannot run a private PostgreSQL: {err}")
    apply_migrations(server.url)
    yield server
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
