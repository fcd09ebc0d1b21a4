"""The consumer a user would write instead of ``rpm-cloud ingest`` (issue 23, item 8): the yardstick
the benchmark puts beside ours, kept simple and honest.

paho (MQTT v5) + psycopg, one thread: receive batches on ``rpm/v1/gw/+/readings``, validate them with
the wire contract, and every ``FLUSH_MESSAGES`` messages or ``FLUSH_S`` seconds COPY their readings
and values into staging tables, insert what is new (a redelivered reading is a no-op), commit, then
PUBACK each message and publish each batch's app ack (the contract's ``Ack``) to its gateway. No
patients, twin, alerts, device bindings or dead letters: a plain store, in a schema of its own
(:data:`SCHEMA`) whose ``readings``/``observations`` carry the columns ``rpm-sim load`` counts by.

Run as ``python -m tests.bench.plain_consumer --mqtt-url mqtt://HOST:PORT --database-url URL``.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from pydantic import ValidationError

from gateway.contract import Ack, Batch, acks_topic

SCHEMA = "plain"
FLUSH_MESSAGES = 500
FLUSH_S = 0.02

SCHEMA_SQL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.readings (
    id text PRIMARY KEY, gateway_id text NOT NULL, device_uid text NOT NULL, user_index int, kind text NOT NULL,
    sequence bigint, measured_at timestamptz NOT NULL, received_at timestamptz, raw text,
    stored_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.observations (
    reading_id text NOT NULL REFERENCES {SCHEMA}.readings (id), metric text NOT NULL, value double precision,
    unit text NOT NULL, PRIMARY KEY (reading_id, metric));
"""


def schema_url(database_url: str) -> str:
    """``database_url`` with :data:`SCHEMA` first on the search path (where ``rpm-sim load`` then counts)."""
    return f"{database_url}{'&' if '?' in database_url else '?'}options=-csearch_path%3D{SCHEMA}"


def create_schema(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)


class PlainConsumer:
    def __init__(self, mqtt_url: str, database_url: str) -> None:
        self.conn = psycopg.connect(database_url)
        self.conn.execute(
            # Staging as the tables' columns without their constraints (a stored_at comes at insert).
            "CREATE TEMP TABLE stage_readings ON COMMIT DELETE ROWS AS SELECT * FROM readings WITH NO DATA;"
            " CREATE TEMP TABLE stage_observations ON COMMIT DELETE ROWS AS SELECT * FROM observations WITH NO DATA"
        )
        self.conn.commit()
        self.pending: list[tuple[Any, Batch | None]] = []
        self.first_pending = 0.0
        url = urlsplit(mqtt_url)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"plain-{time.time_ns()}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *_: client.subscribe("rpm/v1/gw/+/readings", qos=1)
        self.client.connect(url.hostname or "127.0.0.1", url.port or 1883)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            batch: Batch | None = Batch.model_validate_json(message.payload)
        except ValidationError:
            batch = None  # dropped (PUBACKed, never acked): a plain consumer has no dead-letter table
        if not self.pending:
            self.first_pending = time.monotonic()
        self.pending.append((message, batch))

    def flush(self) -> None:
        batches = [batch for _, batch in self.pending if batch is not None]
        with self.conn.cursor() as cur:
            with cur.copy(
                "COPY stage_readings (id, gateway_id, device_uid, user_index, kind, sequence, measured_at,"
                " received_at, raw) FROM STDIN"
            ) as copy:
                for batch in batches:
                    for r in batch.readings:
                        copy.write_row(
                            (
                                r.id,
                                batch.gateway_id,
                                r.device.uid,
                                r.user_index,
                                r.kind,
                                r.sequence,
                                r.measured_at,
                                r.received_at,
                                r.raw,
                            )
                        )
            with cur.copy("COPY stage_observations (reading_id, metric, value, unit) FROM STDIN") as copy:
                for batch in batches:
                    for r in batch.readings:
                        for metric, v in r.values.items():
                            copy.write_row((r.id, metric, None if isinstance(v.value, list) else v.value, v.unit))
            cur.execute(
                "INSERT INTO readings SELECT id, gateway_id, device_uid, user_index, kind, sequence, measured_at,"
                " received_at, raw, clock_timestamp() FROM stage_readings ON CONFLICT (id) DO NOTHING"
            )
            cur.execute("INSERT INTO observations SELECT * FROM stage_observations ON CONFLICT DO NOTHING")
        self.conn.commit()
        for message, batch in self.pending:
            self.client.ack(message.mid, message.qos)
            if batch is not None:
                ack = Ack(batch_id=batch.batch_id, accepted=[r.id for r in batch.readings])
                self.client.publish(acks_topic(batch.gateway_id), ack.model_dump_json(), qos=1)
        self.pending = []

    def run(self, stop: list[bool]) -> None:
        while not stop:
            self.client.loop(timeout=0.005)
            if self.pending and (
                len(self.pending) >= FLUSH_MESSAGES or time.monotonic() - self.first_pending >= FLUSH_S
            ):
                self.flush()
        if self.pending:
            self.flush()
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    PlainConsumer(args.mqtt_url, args.database_url).run(stop)


if __name__ == "__main__":
    main()
