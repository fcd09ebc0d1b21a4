-- RPM programme reports (issue 25): programme rules as data, enrolment episodes, clinician time, and the
-- days each device transmitted, counted in the patient's own days.
--
-- What counts as a day with data: a reading the device transmitted itself (entry_method 'device', the
-- only way readings reach the cloud today: the gateway over MQTT), assigned to the patient, not flagged
-- as no patient value (gateway.metrics.EXCLUDED_FLAGS: control solution, failed measurement, demo data,
-- ...), on its measured local date in the patient's time zone (DST-correct: AT TIME ZONE with the zone
-- name). A reading typed in by hand would carry entry_method 'manual' and is never counted.

-- --- how a reading was entered ------------------------------------------------------------------------

-- Nothing marked manual entry before this: every reading came from a device through a gateway, so the
-- default is 'device' (a constant default: no table rewrite). A future manual-entry path must say 'manual'.
ALTER TABLE readings ADD COLUMN entry_method text NOT NULL DEFAULT 'device'
    CONSTRAINT readings_entry_method CHECK (entry_method IN ('device', 'manual'));

-- --- programmes and their rules (rows, not code) -------------------------------------------------------

CREATE TABLE programmes (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    jurisdiction text,
    period_days  integer NOT NULL CHECK (period_days BETWEEN 1 AND 366),  -- device-supply period, anchored at enrolment
    source       text NOT NULL,
    notes        text
);

-- One row per billable code. kind:
--   device_supply: a period qualifies for the code when min_days <= distinct days with data <= max_days
--                  (one device-supply code per period: the one with the highest min_days that matches);
--   setup:         once per enrolment episode, in the episode's first period, when that period has at
--                  least min_days days with data;
--   management:    minutes per calendar month. A base code (add_on_to NULL) needs min_minutes (the
--                  highest one reached wins); an add-on (add_on_to = a base code) counts one unit per
--                  further unit_minutes past its base's min_minutes, at most max_units (NULL: no cap).
--                  requires_interactive: at least one interactive communication in the month.
CREATE TABLE programme_rules (
    programme_id         text NOT NULL REFERENCES programmes (id),
    code                 text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('setup', 'device_supply', 'management')),
    min_days             integer CHECK (min_days BETWEEN 0 AND 366),
    max_days             integer CHECK (max_days BETWEEN 0 AND 366),
    min_minutes          integer CHECK (min_minutes >= 0),
    unit_minutes         integer CHECK (unit_minutes > 0),
    max_units            integer CHECK (max_units > 0),
    add_on_to            text,
    requires_interactive boolean NOT NULL DEFAULT false,
    description          text NOT NULL,
    source               text NOT NULL,
    PRIMARY KEY (programme_id, code),
    CHECK (kind <> 'device_supply' OR (min_days IS NOT NULL AND max_days IS NOT NULL AND min_days <= max_days)),
    CHECK (kind <> 'setup' OR min_days IS NOT NULL),
    CHECK (kind <> 'management' OR (add_on_to IS NULL AND min_minutes IS NOT NULL)
                                OR (add_on_to IS NOT NULL AND unit_minutes IS NOT NULL)),
    FOREIGN KEY (programme_id, add_on_to) REFERENCES programme_rules (programme_id, code)
);

INSERT INTO programmes (id, name, jurisdiction, period_days, source, notes) VALUES
('us-cms-2026', 'US Medicare remote physiologic monitoring (CY 2026)', 'US', 30,
 'CMS, CY 2026 Physician Fee Schedule final rule (CMS-1832-F), 90 FR 49266, 5 Nov 2025, FR Doc 2025-19787, '
 'effective 1 Jan 2026 (correction CMS-1832-F2, 91 FR 12071, 12 Mar 2026); CPT descriptors (c) AMA',
 'Device supply is per 30-day period; treatment management per calendar month. The code descriptors are the '
 'AMA''s; these rows paraphrase the thresholds only.');

INSERT INTO programme_rules (programme_id, code, kind, min_days, max_days, min_minutes, unit_minutes, max_units,
                             add_on_to, requires_interactive, description, source) VALUES
('us-cms-2026', '99453', 'setup', 2, NULL, NULL, NULL, NULL, NULL, false,
 'Initial set-up and patient education on the equipment, once per episode of care',
 'CY 2026 PFS final rule (90 FR 49266): 99453 reported once per episode; from 2026 with the 2-day minimum of '
 'the device-supply codes (uncertain: see README)'),
('us-cms-2026', '99445', 'device_supply', 2, 15, NULL, NULL, NULL, NULL, false,
 'Device supply with daily recording or programmed alert transmission, 2-15 days in a 30-day period',
 'CY 2026 PFS final rule (90 FR 49266): new CPT 99445 (proposed as 99XX4), not reported with 99454 for the same period'),
('us-cms-2026', '99454', 'device_supply', 16, 30, NULL, NULL, NULL, NULL, false,
 'Device supply with daily recording or programmed alert transmission, 16-30 days in a 30-day period',
 'CY 2026 PFS final rule (90 FR 49266): 99454 kept for 16-30 days'),
('us-cms-2026', '99470', 'management', NULL, NULL, 10, NULL, NULL, NULL, true,
 'Treatment management, first 10 minutes in a calendar month, with at least one interactive communication',
 'CY 2026 PFS final rule (90 FR 49266): new CPT 99470 (proposed as 99XX5), not reported with 99457'),
('us-cms-2026', '99457', 'management', NULL, NULL, 20, NULL, NULL, NULL, true,
 'Treatment management, first 20 minutes in a calendar month, with interactive communication',
 'CY 2026 PFS final rule (90 FR 49266); CPT 99457 descriptor'),
('us-cms-2026', '99458', 'management', NULL, NULL, NULL, 20, NULL, '99457', true,
 'Treatment management, each additional 20 minutes in the calendar month (add-on to 99457)',
 'CY 2026 PFS final rule (90 FR 49266); CPT 99458 descriptor (units: no Medicare cap assumed, see README)');

-- --- enrolment episodes -------------------------------------------------------------------------------

-- The set-up date anchors the 30-day periods (day 0 = enrolled_on, a date in the patient's zone).
-- ended_on: the last day of the episode (NULL: ongoing). A patient has at most one open episode; episodes
-- of one patient never overlap (checked by cloud.programme.queries under the patient's row lock).
CREATE TABLE programme_enrolments (
    id           bigserial PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients (id),
    programme_id text NOT NULL REFERENCES programmes (id),
    enrolled_on  date NOT NULL,
    ended_on     date,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    CHECK (ended_on IS NULL OR ended_on >= enrolled_on)
);
CREATE UNIQUE INDEX programme_enrolments_one_open ON programme_enrolments (patient_id) WHERE ended_on IS NULL;
CREATE INDEX programme_enrolments_patient ON programme_enrolments (patient_id, enrolled_on);

-- --- clinician time -----------------------------------------------------------------------------------

-- One row per timed activity. A running timer has started_at and no minutes yet (one per person and
-- patient); stopping it fills minutes (whole minutes, rounded down: time is never overstated) and
-- stopped_at. performed_on is the patient's local date the activity counts on (its calendar month).
CREATE TABLE time_entries (
    id              bigserial PRIMARY KEY,
    patient_id      text NOT NULL REFERENCES patients (id),
    person          text NOT NULL,          -- the token's subject: who did it
    role            text NOT NULL,
    reason          text NOT NULL CHECK (reason IN ('alert_review', 'comment', 'call', 'data_review', 'care_plan')),
    interactive     boolean NOT NULL,       -- real-time interactive communication with the patient or caregiver
    performed_on    date NOT NULL,
    minutes         integer CHECK (minutes BETWEEN 0 AND 240),
    started_at      timestamptz,
    stopped_at      timestamptz,
    alert_id        bigint REFERENCES alerts (id),
    note            text CHECK (length(note) <= 500),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (minutes IS NOT NULL OR (started_at IS NOT NULL AND stopped_at IS NULL)),
    CHECK (stopped_at IS NULL OR (started_at IS NOT NULL AND stopped_at >= started_at))
);
CREATE UNIQUE INDEX time_entries_one_running ON time_entries (patient_id, person) WHERE minutes IS NULL;
CREATE INDEX time_entries_patient_day ON time_entries (patient_id, performed_on);

-- --- days with data: a projection of readings ---------------------------------------------------------

-- One row per patient, local day and device: the day's first transmission. Kept by statement triggers on
-- readings (one insert per ingest statement, like 0420's day stats), so a month's report of 10 000
-- patients reads at most 31 narrow rows per device instead of every reading (a continuous oximeter sends
-- hundreds a night).
CREATE TABLE programme_device_days (
    patient_id       text NOT NULL,
    day              date NOT NULL,           -- local date in tz
    device_uid       text NOT NULL,
    tz               text NOT NULL,
    first_reading_id text NOT NULL,
    first_at         timestamptz NOT NULL,
    PRIMARY KEY (patient_id, day, device_uid)
);

-- The flags that make a reading no patient value: gateway.metrics.EXCLUDED_FLAGS (a test ties the two).
CREATE FUNCTION programme_excluded_flags() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['control_solution', 'demonstration_data', 'intermediate', 'invalid_measurement',
                 'low_perfusion', 'measurement_unavailable', 'measurement_unsuccessful', 'sensor_disconnected',
                 'sensor_displaced', 'sensor_unconnected_to_user', 'testing_data']::text[]
$$;

-- The patient's zone, or UTC when there is none or PostgreSQL does not know it. Runs inside ingest's
-- transaction: an unknown zone must never raise there (it would roll the readings back).
CREATE FUNCTION programme_zone(p_tz text) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_tz IS NULL OR p_tz !~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$' THEN
        RETURN 'UTC';
    END IF;
    PERFORM now() AT TIME ZONE p_tz;
    RETURN p_tz;
EXCEPTION WHEN OTHERS THEN
    RETURN 'UTC';
END $$;

-- On ingest's hot path (one call per ingest statement; issue 23 counts ingest CPU per reading), so it does
-- as little as it can: the zone check (an exception block, i.e. a subtransaction) once per distinct zone of
-- the statement, not per patient; each key's first reading picked in memory; and only keys that are new or
-- earlier than the stored first transmission reach the INSERT. Most readings fall on a day already counted,
-- and ON CONFLICT DO UPDATE locks (writes) the existing row even when its WHERE refuses the update: the
-- NOT EXISTS probe skips those without a write. The ON CONFLICT stays for two workers racing on a new key.
-- Measured in tests/bench/test_programme_report_bench.py (with and without this trigger).
CREATE FUNCTION programme_days_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH people AS MATERIALIZED (
        -- One primary-key probe per patient of the statement (LIMIT keeps it a parameterised probe): the
        -- planner knows nothing of the transition table's size and would otherwise hash all patients.
        SELECT c.patient_id AS id, z.timezone
          FROM (SELECT DISTINCT patient_id FROM changed_rows WHERE patient_id IS NOT NULL) AS c
         CROSS JOIN LATERAL (SELECT p.timezone FROM patients p WHERE p.id = c.patient_id LIMIT 1) AS z
    ), zones AS MATERIALIZED (
        SELECT t.timezone, programme_zone(t.timezone) AS tz FROM (SELECT DISTINCT timezone FROM people) AS t
    ), zoned AS MATERIALIZED (
        -- Patient -> zone first (a few dozen rows), so the readings meet it in one hash join on the id.
        SELECT pe.id, z.tz FROM people pe JOIN zones z ON z.timezone IS NOT DISTINCT FROM pe.timezone
    ), firsts AS (
        SELECT DISTINCT ON (r.patient_id, l.day, r.device_uid) r.patient_id, l.day, r.device_uid, z.tz, r.id,
               r.measured_at
          FROM changed_rows r
          JOIN zoned z ON z.id = r.patient_id
         CROSS JOIN LATERAL (SELECT (r.measured_at AT TIME ZONE z.tz)::date AS day) l
         WHERE r.entry_method = 'device' AND NOT (r.flags && programme_excluded_flags())
         ORDER BY r.patient_id, l.day, r.device_uid, r.measured_at, r.id
    )
    -- In key order, so two ingest workers touching the same days wait for each other, never deadlock.
    INSERT INTO programme_device_days AS d (patient_id, day, device_uid, tz, first_reading_id, first_at)
    SELECT f.patient_id, f.day, f.device_uid, f.tz, f.id, f.measured_at
      FROM firsts f
     WHERE NOT EXISTS (SELECT 1 FROM programme_device_days e
                        WHERE e.patient_id = f.patient_id AND e.day = f.day AND e.device_uid = f.device_uid
                          AND e.first_at <= f.measured_at)
     ORDER BY f.patient_id, f.day, f.device_uid
    ON CONFLICT (patient_id, day, device_uid) DO UPDATE
        SET first_reading_id = EXCLUDED.first_reading_id, first_at = EXCLUDED.first_at
        WHERE EXCLUDED.first_at < d.first_at;
    RETURN NULL;
END $$;

-- Recount one patient's days (for the given devices, or all when NULL) from the readings.
CREATE FUNCTION programme_days_rebuild(p_patient text, p_devices text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    zone text := programme_zone((SELECT timezone FROM patients WHERE id = p_patient));
BEGIN
    DELETE FROM programme_device_days
     WHERE patient_id = p_patient AND (p_devices IS NULL OR device_uid = ANY(p_devices));
    INSERT INTO programme_device_days (patient_id, day, device_uid, tz, first_reading_id, first_at)
    SELECT DISTINCT ON ((r.measured_at AT TIME ZONE zone)::date, r.device_uid)
           p_patient, (r.measured_at AT TIME ZONE zone)::date, r.device_uid, zone, r.id, r.measured_at
      FROM readings r
     WHERE r.patient_id = p_patient AND (p_devices IS NULL OR r.device_uid = ANY(p_devices))
       AND r.entry_method = 'device' AND NOT (r.flags && programme_excluded_flags())
     ORDER BY (r.measured_at AT TIME ZONE zone)::date, r.device_uid, r.measured_at, r.id;
END $$;

-- An update (the assignment backfill gives queued readings a patient) recounts the devices it touched,
-- for the patients on both sides.
CREATE FUNCTION programme_days_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM programme_days_rebuild(t.patient_id, t.devices)
       FROM (SELECT patient_id, array_agg(DISTINCT device_uid) AS devices
               FROM (SELECT o.patient_id, o.device_uid FROM old_rows o
                       JOIN new_rows n ON n.id = o.id
                      WHERE o.patient_id IS DISTINCT FROM n.patient_id OR o.measured_at <> n.measured_at
                         OR o.flags <> n.flags OR o.entry_method <> n.entry_method
                     UNION
                     SELECT n.patient_id, n.device_uid FROM old_rows o
                       JOIN new_rows n ON n.id = o.id
                      WHERE o.patient_id IS DISTINCT FROM n.patient_id OR o.measured_at <> n.measured_at
                         OR o.flags <> n.flags OR o.entry_method <> n.entry_method) AS touched
              WHERE patient_id IS NOT NULL
              GROUP BY patient_id ORDER BY patient_id) AS t;
    RETURN NULL;
END $$;

CREATE FUNCTION programme_days_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM programme_days_rebuild(t.patient_id, t.devices)
       FROM (SELECT patient_id, array_agg(DISTINCT device_uid) AS devices FROM changed_rows
              WHERE patient_id IS NOT NULL GROUP BY patient_id ORDER BY patient_id) AS t;
    RETURN NULL;
END $$;

CREATE TRIGGER readings_programme_days_insert AFTER INSERT ON readings
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION programme_days_add();
CREATE TRIGGER readings_programme_days_update AFTER UPDATE ON readings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION programme_days_update();
CREATE TRIGGER readings_programme_days_delete AFTER DELETE ON readings
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION programme_days_delete();

-- A patient's zone changes: their days are cut again.
CREATE FUNCTION programme_days_zone_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM programme_days_rebuild(NEW.id, NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER patients_programme_days_zone AFTER UPDATE OF timezone ON patients
    FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone) EXECUTE FUNCTION programme_days_zone_changed();

-- Readings stored before this migration.
SELECT programme_days_rebuild(id, NULL) FROM patients WHERE id IN (SELECT DISTINCT patient_id FROM readings);

-- --- the panel's early warning ------------------------------------------------------------------------

-- For the panel row of one patient: the current 30-day period of the open episode, its days with data so
-- far, and how many more days it needs for the programme's fullest device-supply code (99454: 16) in the
-- days left (today included while it has no data yet). NULL when the patient is not enrolled today. Only called for the rows of one panel page.
CREATE FUNCTION programme_panel_status(p_patient text) RETURNS json LANGUAGE sql STABLE AS $$
    WITH e AS (
        SELECT en.programme_id, en.enrolled_on, pr.period_days, z.today,
               en.enrolled_on + ((z.today - en.enrolled_on) / pr.period_days) * pr.period_days AS period_start
          FROM programme_enrolments en
          JOIN programmes pr ON pr.id = en.programme_id
          JOIN patients p ON p.id = en.patient_id
         CROSS JOIN LATERAL (SELECT (now() AT TIME ZONE programme_zone(p.timezone))::date AS today) z
         WHERE en.patient_id = p_patient AND en.enrolled_on <= z.today
           AND (en.ended_on IS NULL OR en.ended_on >= z.today)
         ORDER BY en.enrolled_on DESC LIMIT 1
    ), s AS (
        SELECT e.*, e.period_start + e.period_days - 1 AS period_end,
               (SELECT count(DISTINCT d.day) FROM programme_device_days d
                 WHERE d.patient_id = p_patient AND d.day BETWEEN e.period_start AND e.today)::int AS days,
               EXISTS (SELECT 1 FROM programme_device_days d WHERE d.patient_id = p_patient AND d.day = e.today)
                   AS today_counted,
               (SELECT max(r.min_days) FROM programme_rules r
                 WHERE r.programme_id = e.programme_id AND r.kind = 'device_supply') AS target
          FROM e
    )
    SELECT json_build_object('programme_id', programme_id, 'period_start', period_start, 'period_end', period_end,
                             'days_with_data', days, 'target_days', target,
                             'needs_days', greatest(target - days, 0), 'days_left', days_left,
                             'reachable', greatest(target - days, 0) <= days_left)
      FROM (SELECT s.*, s.period_end - s.today + CASE WHEN s.today_counted THEN 0 ELSE 1 END AS days_left FROM s) AS f
$$;
