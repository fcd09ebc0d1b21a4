-- Daily statistics per patient and metric in the patient's own days (time zone), percentiles included,
-- so a year's daily trend reads 365 rows instead of 105 120. Kept lazily: a statement trigger marks the
-- (patient, metric, UTC day) of every changed value stale -- one small insert per ingest statement --
-- and the API recomputes the stale days (and their neighbours, for time zones) when it next reads them.
-- Exact, not approximate: each day is computed from all its values (cloud/api/queries.py).
--
-- TimescaleDB does not allow transition tables on hypertables; where observations is one, these
-- triggers are not created here and 0425 creates row-level ones instead (0090 swaps them on a plain
-- database that turns TimescaleDB on later).

CREATE TABLE observation_day_stats (
    patient_id  text NOT NULL,
    metric      text NOT NULL,
    tz          text NOT NULL,               -- the patient's time zone the days were cut in
    day         date NOT NULL,
    count       integer NOT NULL,
    mean        double precision,
    min         double precision,
    max         double precision,
    sd          double precision,
    percentiles double precision[],          -- at cloud.api.queries.PERCENTILES
    PRIMARY KEY (patient_id, metric, tz, day)
);

CREATE TABLE observation_day_stale (
    patient_id text NOT NULL,
    metric     text NOT NULL,
    day        date NOT NULL,                -- UTC day of a changed value
    PRIMARY KEY (patient_id, metric, day)
);

CREATE FUNCTION observation_day_mark_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In key order: two ingest workers marking overlapping days then wait on each other, never deadlock.
    INSERT INTO observation_day_stale (patient_id, metric, day)
    SELECT DISTINCT patient_id, metric, (measured_at AT TIME ZONE 'UTC')::date FROM changed_rows
     WHERE patient_id IS NOT NULL
     ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    hypertable boolean := false;
BEGIN
    IF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
        -- Dynamic: without TimescaleDB the view does not exist and a static reference would not plan.
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables'
                ' WHERE hypertable_name = ''observations'')' INTO hypertable;
    END IF;
    IF hypertable THEN
        RAISE NOTICE 'observations is a hypertable: daily statistics are computed from raw values';
        RETURN;
    END IF;
    CREATE TRIGGER observations_day_stale_insert AFTER INSERT ON observations
        REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_day_mark_stale();
    -- An assignment backfill moves values from no patient (or another) to a patient: both sides change.
    CREATE TRIGGER observations_day_stale_update_new AFTER UPDATE ON observations
        REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_day_mark_stale();
    CREATE TRIGGER observations_day_stale_update_old AFTER UPDATE ON observations
        REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_day_mark_stale();
    CREATE TRIGGER observations_day_stale_delete AFTER DELETE ON observations
        REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION observation_day_mark_stale();
END $$;

-- Values stored before this migration: everything is stale once.
INSERT INTO observation_day_stale (patient_id, metric, day)
SELECT DISTINCT patient_id, metric, (measured_at AT TIME ZONE 'UTC')::date FROM observations
 WHERE patient_id IS NOT NULL
ON CONFLICT DO NOTHING;
