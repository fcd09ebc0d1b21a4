-- Ingest support: the unassigned-device queue, time-bucket views, and indexes for the writer and
-- for `rpm-cloud assign`'s backfill.
--
-- Readings from a device (or user index of a multi-user device) with no assignment covering their
-- measured_at are stored with patient_id NULL, never dropped; this view lists them for assignment.
CREATE VIEW unassigned_devices AS
SELECT r.device_uid,
       r.user_index,
       d.profile,
       d.model,
       d.serial,
       r.gateway_id,
       count(*)           AS readings,
       min(r.measured_at) AS first_measured_at,
       max(r.measured_at) AS last_measured_at,
       max(r.stored_at)   AS last_stored_at
FROM readings r
LEFT JOIN devices d ON d.uid = r.device_uid
WHERE r.patient_id IS NULL
GROUP BY r.device_uid, r.user_index, d.profile, d.model, d.serial, r.gateway_id;

-- Assignment resolution runs once per stored reading (device, user index, measured_at).
CREATE INDEX device_assignments_window ON device_assignments (device_uid, user_index, valid_from DESC)
    INCLUDE (valid_to, patient_id);

-- Backfill after an assignment updates observations by reading id (observations_reading exists);
-- readings of a gateway in a time range serve the load generator and the operator.
CREATE INDEX readings_gateway_stored ON readings (gateway_id, stored_at);

CREATE INDEX dead_letters_gateway ON dead_letters (gateway_id, received_at DESC) WHERE gateway_id IS NOT NULL;

-- Hourly and daily summaries per patient and metric. Plain PostgreSQL: ordinary views over the
-- observations index. Where TimescaleDB exists, 0090_timescale replaces them with continuous
-- aggregates of the same name and columns (real-time, so they answer the same).
CREATE VIEW observations_hourly AS
SELECT patient_id,
       metric,
       date_trunc('hour', measured_at, 'UTC') AS bucket,
       count(value)                    AS n,
       avg(value)                      AS mean,
       min(value)                      AS min,
       max(value)                      AS max
FROM observations
WHERE value IS NOT NULL
GROUP BY patient_id, metric, date_trunc('hour', measured_at, 'UTC');

CREATE VIEW observations_daily AS
SELECT patient_id,
       metric,
       date_trunc('day', measured_at, 'UTC') AS bucket,
       count(value)                   AS n,
       avg(value)                     AS mean,
       min(value)                     AS min,
       max(value)                     AS max
FROM observations
WHERE value IS NOT NULL
GROUP BY patient_id, metric, date_trunc('day', measured_at, 'UTC');
