-- requires: timescaledb
-- TimescaleDB path (runs only where the extension is available; plain PostgreSQL skips it and the
-- schema from 0001/0002 answers every query the same way).
--
-- * observations becomes a hypertable (7-day chunks) migrated in place;
-- * compression segmented by patient and metric after `rpm.compress_after_days` (CloudSettings
--   compress_after_days, set by `rpm-cloud migrate` for this session; default 7);
-- * retention after `rpm.retention_days` (CloudSettings retention_days) when set, else none;
-- * observations_hourly / observations_daily become real-time continuous aggregates with the same
--   columns as the plain views (their UTC date_trunc buckets equal time_bucket buckets).
--
-- Why observations and not readings: readings is keyed by the gateway's reading id alone (the
-- idempotence key); a hypertable's unique keys must include the time column, so readings stays a
-- plain table and observations, inserted only for new readings, carries the time series.
CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('observations', 'measured_at', chunk_time_interval => interval '7 days',
                         migrate_data => true, if_not_exists => true);

ALTER TABLE observations SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'patient_id, metric',
    timescaledb.compress_orderby = 'measured_at DESC'
);
SELECT add_compression_policy('observations',
       make_interval(days => coalesce(nullif(current_setting('rpm.compress_after_days', true), ''), '7')::int),
       if_not_exists => true);

DO $$
DECLARE
    days text := nullif(current_setting('rpm.retention_days', true), '');
BEGIN
    IF days IS NOT NULL THEN
        PERFORM add_retention_policy('observations', make_interval(days => days::int), if_not_exists => true);
    END IF;
END $$;

DROP VIEW observations_hourly;
DROP VIEW observations_daily;

-- WITH NO DATA: a continuous aggregate created with data cannot be created inside a transaction;
-- the refresh policies fill them, and real-time aggregation answers for the unmaterialised part.
CREATE MATERIALIZED VIEW observations_hourly WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT patient_id,
       metric,
       time_bucket(interval '1 hour', measured_at) AS bucket,
       count(value)                                AS n,
       avg(value)                                  AS mean,
       min(value)                                  AS min,
       max(value)                                  AS max
FROM observations
WHERE value IS NOT NULL
GROUP BY patient_id, metric, time_bucket(interval '1 hour', measured_at)
WITH NO DATA;

CREATE MATERIALIZED VIEW observations_daily WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT patient_id,
       metric,
       time_bucket(interval '1 day', measured_at) AS bucket,
       count(value)                               AS n,
       avg(value)                                 AS mean,
       min(value)                                 AS min,
       max(value)                                 AS max
FROM observations
WHERE value IS NOT NULL
GROUP BY patient_id, metric, time_bucket(interval '1 day', measured_at)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('observations_hourly', start_offset => interval '3 days',
       end_offset => interval '1 hour', schedule_interval => interval '30 minutes', if_not_exists => true);
SELECT add_continuous_aggregate_policy('observations_daily', start_offset => interval '30 days',
       end_offset => interval '1 day', schedule_interval => interval '6 hours', if_not_exists => true);
