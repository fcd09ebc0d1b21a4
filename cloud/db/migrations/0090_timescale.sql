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
--
-- Two orders reach this file. On a new database it runs right after 0002. On a database that began on
-- plain PostgreSQL and turned TimescaleDB on later (deploy/SCALING.md step 1) it runs after every later
-- migration, with data in place: then 0420's statement triggers with transition tables exist, which
-- create_hypertable refuses ("triggers with transition tables are not supported on hypertables"). They
-- are dropped here and replaced, in this same transaction, by row-level triggers (0425's function), so
-- no value is stored between the two without marking its day stale.
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Row-level twin of 0420's observation_day_mark_stale (hypertables allow row triggers). Late-bound: on
-- a new database observation_day_stale does not exist yet, and the triggers come with 0425.
CREATE OR REPLACE FUNCTION observation_day_mark_stale_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Not in key order like the statement trigger: an ingest transaction first locks the twin rows of
    -- its patients (cloud/twin/queries.py), and the key starts with the patient, so two transactions
    -- marking the same keys are already serialised by then.
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.patient_id IS NOT NULL THEN
        INSERT INTO observation_day_stale (patient_id, metric, day)
        VALUES (OLD.patient_id, OLD.metric, (OLD.measured_at AT TIME ZONE 'UTC')::date) ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.patient_id IS NOT NULL THEN
        INSERT INTO observation_day_stale (patient_id, metric, day)
        VALUES (NEW.patient_id, NEW.metric, (NEW.measured_at AT TIME ZONE 'UTC')::date) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

-- Same trigger names as 0420 (cloud/api/queries.py day_stats_maintained looks for the insert one), one
-- row trigger in place of the two update ones. Idempotent: 0425 calls it again on a new database.
CREATE OR REPLACE FUNCTION observation_day_stale_row_triggers() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('observation_day_stale') IS NULL THEN
        RETURN;  -- 0420 not applied yet
    END IF;
    DROP TRIGGER IF EXISTS observations_day_stale_insert ON observations;
    DROP TRIGGER IF EXISTS observations_day_stale_update_new ON observations;
    DROP TRIGGER IF EXISTS observations_day_stale_update_old ON observations;
    DROP TRIGGER IF EXISTS observations_day_stale_update ON observations;
    DROP TRIGGER IF EXISTS observations_day_stale_delete ON observations;
    CREATE TRIGGER observations_day_stale_insert AFTER INSERT ON observations
        FOR EACH ROW WHEN (NEW.patient_id IS NOT NULL) EXECUTE FUNCTION observation_day_mark_stale_row();
    CREATE TRIGGER observations_day_stale_update AFTER UPDATE OF patient_id, metric, measured_at, value, flags
        ON observations FOR EACH ROW EXECUTE FUNCTION observation_day_mark_stale_row();
    -- drop_chunks (retention) fires no trigger: day statistics of dropped days are not touched here.
    CREATE TRIGGER observations_day_stale_delete AFTER DELETE ON observations
        FOR EACH ROW WHEN (OLD.patient_id IS NOT NULL) EXECUTE FUNCTION observation_day_mark_stale_row();
END;
$$;

-- Populated plain database: the transition-table triggers must go before create_hypertable.
DROP TRIGGER IF EXISTS observations_day_stale_insert ON observations;
DROP TRIGGER IF EXISTS observations_day_stale_update_new ON observations;
DROP TRIGGER IF EXISTS observations_day_stale_update_old ON observations;
DROP TRIGGER IF EXISTS observations_day_stale_delete ON observations;

SELECT create_hypertable('observations', 'measured_at', chunk_time_interval => interval '7 days',
                         migrate_data => true, if_not_exists => true);

SELECT observation_day_stale_row_triggers();

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
