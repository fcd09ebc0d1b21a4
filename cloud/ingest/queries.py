"""The SQL of the batch writer (all parameterised; bulk rows go through binary COPY)."""

from __future__ import annotations

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage_readings (
    id text, device_uid text, user_index smallint, gateway_id text, batch_id text, kind text,
    measured_at timestamptz, received_at timestamptz, device_time timestamp, clock_judgement text,
    clock_offset_s double precision, sequence bigint, flags text[], late boolean, raw text, content_sha text,
    body_site text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS ingest_stage_observations (
    reading_id text, kind text, metric text, measured_at timestamptz, value double precision,
    value_list double precision[], unit text, original_value double precision, original_unit text,
    flags text[]
) ON COMMIT DELETE ROWS;
"""

COPY_READINGS = (
    "COPY ingest_stage_readings (id, device_uid, user_index, gateway_id, batch_id, kind, measured_at, received_at,"
    " device_time, clock_judgement, clock_offset_s, sequence, flags, late, raw, content_sha, body_site)"
    " FROM STDIN (FORMAT BINARY)"
)
READING_TYPES = ["text", "text", "int2", "text", "text", "text", "timestamptz", "timestamptz", "timestamp", "text",
                 "float8", "int8", "text[]", "bool", "text", "text", "text"]

COPY_OBSERVATIONS = (
    "COPY ingest_stage_observations (reading_id, kind, metric, measured_at, value, value_list, unit, original_value,"
    " original_unit, flags) FROM STDIN (FORMAT BINARY)"
)
OBSERVATION_TYPES = ["text", "text", "text", "timestamptz", "float8", "float8[]", "text", "float8", "text", "text[]"]

# One statement: insert the readings not seen before (in id order, so two workers inserting the same
# ids lock them in the same order and cannot deadlock), resolve each one's patient from the
# assignment in force at its measured_at (a user-specific assignment wins over a whole-device one),
# and insert observations for the new readings only. A replayed reading inserts nothing.
INSERT_NEW = """
WITH new AS (
    INSERT INTO readings (id, patient_id, device_uid, user_index, gateway_id, batch_id, kind, measured_at,
                          received_at, stored_at, device_time, clock_judgement, clock_offset_s, sequence, flags,
                          late, raw, content_sha, body_site)
    SELECT s.id, a.patient_id, s.device_uid, s.user_index, s.gateway_id, s.batch_id, s.kind, s.measured_at,
           s.received_at, clock_timestamp(), s.device_time, s.clock_judgement, s.clock_offset_s, s.sequence,
           s.flags, s.late, s.raw, s.content_sha, s.body_site
    FROM ingest_stage_readings s
    LEFT JOIN LATERAL (
        SELECT da.patient_id
        FROM device_assignments da
        WHERE da.device_uid = s.device_uid
          AND (da.user_index = s.user_index OR da.user_index IS NULL)
          AND da.valid_from <= s.measured_at
          AND (da.valid_to IS NULL OR s.measured_at < da.valid_to)
        ORDER BY da.user_index IS NULL, da.valid_from DESC
        LIMIT 1
    ) a ON true
    ORDER BY s.id
    ON CONFLICT (id) DO NOTHING
    RETURNING id, patient_id
), observations_added AS (
    INSERT INTO observations (reading_id, patient_id, kind, metric, measured_at, value, value_list, unit,
                              original_value, original_unit, flags)
    SELECT o.reading_id, new.patient_id, o.kind, o.metric, o.measured_at, o.value, o.value_list, o.unit,
           o.original_value, o.original_unit, o.flags
    FROM ingest_stage_observations o
    JOIN new ON new.id = o.reading_id
)
SELECT id, patient_id FROM new
"""

# Ids the insert skipped (already stored): their stored content, to tell a replay from an id conflict.
SELECT_STORED_CONTENT = """
SELECT id, content_sha, gateway_id, batch_id, device_uid FROM readings WHERE id = ANY(%s)
"""

# The binding of each device of a group: a plain read (no row lock) on the hot path.
SELECT_BINDINGS = "SELECT uid, bound_gateway_id FROM devices WHERE uid = ANY(%s)"

# First contact: bind devices with no binding yet (no row, or a row an assignment created) to the
# gateway that sent them, in uid order like UPSERT_DEVICES. A device another worker bound meanwhile
# is not returned (its row lock made us wait for that commit; the WHERE then fails): read it again.
BIND_DEVICES = """
INSERT INTO devices AS d (uid, transport, profile, model, serial, manufacturer, gateway_id, last_seen,
                          bound_gateway_id, bound_at, bound_by)
SELECT u.uid, u.transport, u.profile, u.model, u.serial, u.manufacturer, u.gateway_id, u.at, u.gateway_id, u.at,
       'first contact'
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
     AS u (uid, transport, profile, model, serial, manufacturer, gateway_id, at)
ORDER BY u.uid
ON CONFLICT (uid) DO UPDATE SET
    bound_gateway_id = excluded.bound_gateway_id, bound_at = excluded.bound_at, bound_by = excluded.bound_by
WHERE d.bound_gateway_id IS NULL
RETURNING uid, bound_gateway_id
"""

INSERT_SECURITY_EVENTS = """
INSERT INTO security_events (at, kind, gateway_id, device_uid, reading_id, detail)
VALUES (%s, %s, %s, %s, %s, %s)
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, gateway_id, batch_id, reading_id, reason, payload)
VALUES (%s, %s, %s, %s, %s, %s)
"""

# Rows in uid / id order so concurrent workers take the row locks in the same order.
UPSERT_DEVICES = """
INSERT INTO devices AS d (uid, transport, profile, model, serial, manufacturer, gateway_id, last_seen)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::timestamptz[])
ORDER BY 1
ON CONFLICT (uid) DO UPDATE SET
    transport = excluded.transport,
    profile = excluded.profile,
    model = coalesce(excluded.model, d.model),
    serial = coalesce(excluded.serial, d.serial),
    manufacturer = coalesce(excluded.manufacturer, d.manufacturer),
    gateway_id = excluded.gateway_id,
    last_seen = greatest(d.last_seen, excluded.last_seen)
"""

UPSERT_GATEWAYS = """
INSERT INTO gateways AS g (id, last_seen)
SELECT * FROM unnest(%s::text[], %s::timestamptz[])
ORDER BY 1
ON CONFLICT (id) DO UPDATE SET last_seen = greatest(g.last_seen, excluded.last_seen)
"""

UPSERT_GATEWAY_STATUS = """
INSERT INTO gateways AS g (id, last_seen, status)
VALUES (%s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    last_seen = greatest(g.last_seen, excluded.last_seen),
    status = CASE
        WHEN g.status IS NULL OR (g.status ->> 'at')::timestamptz <= (excluded.status ->> 'at')::timestamptz
        THEN excluded.status ELSE g.status END
"""
