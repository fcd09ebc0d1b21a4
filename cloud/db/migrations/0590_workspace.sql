-- The care-team workspace (issue 18): what the triage panel filters and sorts on, who an alert is
-- assigned to, and a notification per alert event for the live stream.
--
-- patient_panel (0410) stays a maintained projection: the panel of 10 000 patients reads one narrow
-- row per patient and never joins alerts per request. Its alert columns are kept by triggers on
-- alerts (the source of truth for alerts; the twin only mirrors them), its last reading by the twin
-- trigger of 0410. Lock order on every write path: twins, then alerts, then patient_panel.

ALTER TABLE patient_panel
    ADD COLUMN open_critical   integer NOT NULL DEFAULT 0,   -- not resolved (open or acknowledged), by severity
    ADD COLUMN open_warning    integer NOT NULL DEFAULT 0,
    ADD COLUMN open_info       integer NOT NULL DEFAULT 0,
    ADD COLUMN unacknowledged  integer NOT NULL DEFAULT 0,   -- status 'open': nobody acknowledged it
    ADD COLUMN needs_review    integer NOT NULL DEFAULT 0,   -- resolved before anyone reviewed it (0560)
    ADD COLUMN missing_data    integer NOT NULL DEFAULT 0,   -- not resolved, of a missing_data rule
    ADD COLUMN device_problem  integer NOT NULL DEFAULT 0,   -- not resolved, category technical (0520)
    ADD COLUMN last_reading_at timestamptz;                  -- newest measured_at of the twin's latest values

-- --- alert counts ---------------------------------------------------------------------------------

CREATE FUNCTION patient_panel_count_alerts(p_patient text, p_create boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_create THEN
        INSERT INTO patient_panel (patient_id) VALUES (p_patient) ON CONFLICT (patient_id) DO NOTHING;
    END IF;
    -- Lock first, count after. The count is a statement of its own, so under read committed it sees
    -- every alert change committed by whoever held the row before us: two transactions changing
    -- alerts of one patient never write each other's stale counts.
    PERFORM 1 FROM patient_panel WHERE patient_id = p_patient FOR UPDATE;
    UPDATE patient_panel pp
       SET (open_critical, open_warning, open_info, unacknowledged, needs_review, missing_data, device_problem) = (
           SELECT count(*) FILTER (WHERE a.status <> 'resolved' AND a.severity = 'critical'),
                  count(*) FILTER (WHERE a.status <> 'resolved' AND a.severity = 'warning'),
                  count(*) FILTER (WHERE a.status <> 'resolved' AND a.severity = 'info'),
                  count(*) FILTER (WHERE a.status = 'open'),
                  count(*) FILTER (WHERE a.status = 'resolved' AND a.review_state = 'pending'),
                  count(*) FILTER (WHERE a.status <> 'resolved' AND r.rule_type = 'missing_data'),
                  count(*) FILTER (WHERE a.status <> 'resolved' AND a.category = 'technical')
             FROM alerts a LEFT JOIN alert_rules r ON r.id = a.rule_id
            -- Each arm matches a partial index (alerts_one_open_per_rule, alerts_needs_human), so a
            -- long history of resolved alerts need not be read.
            WHERE a.patient_id = p_patient AND (a.status <> 'resolved' OR a.review_state = 'pending'))
     WHERE pp.patient_id = p_patient;
END $$;

CREATE FUNCTION patient_panel_from_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM patient_panel_count_alerts(OLD.patient_id, TG_OP = 'UPDATE');
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.patient_id IS DISTINCT FROM OLD.patient_id) THEN
        PERFORM patient_panel_count_alerts(NEW.patient_id, true);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER alerts_feed_patient_panel AFTER INSERT OR DELETE ON alerts
    FOR EACH ROW EXECUTE FUNCTION patient_panel_from_alerts();
-- Most updates (another trigger of an open alert, a hysteresis streak, an assignment) change no count.
CREATE TRIGGER alerts_feed_patient_panel_on_change AFTER UPDATE ON alerts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.severity IS DISTINCT FROM NEW.severity
                       OR OLD.review_state IS DISTINCT FROM NEW.review_state
                       OR OLD.category IS DISTINCT FROM NEW.category OR OLD.rule_id IS DISTINCT FROM NEW.rule_id
                       OR OLD.patient_id IS DISTINCT FROM NEW.patient_id)
    EXECUTE FUNCTION patient_panel_from_alerts();

SELECT patient_panel_count_alerts(patient_id, true)
  FROM (SELECT DISTINCT patient_id FROM alerts WHERE status <> 'resolved' OR review_state = 'pending') AS needing;

-- --- last reading: from the twin, as the rest of the row ------------------------------------------

-- Written defensively like 0410's trigger (it runs inside ingest's transaction): only values that look
-- like ISO timestamps are read.
CREATE FUNCTION patient_panel_last_reading(state jsonb) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT max((m.value ->> 'measured_at')::timestamptz)
      FROM jsonb_each(CASE WHEN jsonb_typeof(state -> 'latest') = 'object' THEN state -> 'latest' ELSE '{}' END) AS m
     WHERE jsonb_typeof(m.value) = 'object'
       AND m.value ->> 'measured_at' ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$'
$$;

CREATE OR REPLACE FUNCTION patient_panel_from_twin() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- As in 0410, plus last_reading_at. Alert columns are the alerts triggers' and left alone here.
    INSERT INTO patient_panel AS pp (patient_id, reading_days, latest, categories, last_reading_at, updated_at)
    VALUES (
        NEW.patient_id,
        ARRAY(SELECT day FROM (
                  SELECT DISTINCT d::date AS day FROM jsonb_array_elements_text(
                      CASE WHEN jsonb_typeof(NEW.state -> 'reading_days') = 'array' THEN NEW.state -> 'reading_days'
                           ELSE '[]' END) AS d
                   WHERE d ~ '^\d{4}-\d{2}-\d{2}$' ORDER BY 1 DESC LIMIT 31) AS recent ORDER BY day),
        coalesce((SELECT jsonb_object_agg(m.key, jsonb_build_object('value', m.value -> 'value',
                                                                    'measured_at', m.value -> 'measured_at'))
                    FROM jsonb_each(CASE WHEN jsonb_typeof(NEW.state -> 'latest') = 'object'
                                         THEN NEW.state -> 'latest' ELSE '{}' END) AS m
                   WHERE jsonb_typeof(m.value) = 'object'), '{}')::json,
        jsonb_strip_nulls(jsonb_build_object(
            'blood_pressure', NEW.state #> '{categories,blood_pressure,category}',
            'glucose', NEW.state #> '{categories,glucose,range}',
            'bmi', NEW.state #> '{categories,bmi,class}'))::json,
        patient_panel_last_reading(NEW.state),
        now())
    ON CONFLICT (patient_id) DO UPDATE
        SET reading_days = EXCLUDED.reading_days, latest = EXCLUDED.latest, categories = EXCLUDED.categories,
            last_reading_at = EXCLUDED.last_reading_at, updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END;
$$;

UPDATE patient_panel pp SET last_reading_at = patient_panel_last_reading(t.state)
  FROM twins t WHERE t.patient_id = pp.patient_id;

-- --- assignment -------------------------------------------------------------------------------------

-- Who on the care team took the alert (a token subject), so two nurses do not both call the patient.
ALTER TABLE alerts
    ADD COLUMN assigned_to text,
    ADD COLUMN assigned_at timestamptz,
    ADD CONSTRAINT alerts_assigned_who_and_when CHECK ((assigned_to IS NULL) = (assigned_at IS NULL));

-- --- the live stream ----------------------------------------------------------------------------------

-- Every alert event is announced at commit on one channel; each API process listens on one connection
-- and fans out to its streams (cloud.api.alert_stream). The payload names the patient, so a stream
-- filters by consent without a query per event; it stays far below NOTIFY's 8000-byte limit.
CREATE FUNCTION alert_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rpm_alert_events', json_build_object(
                'id', NEW.id, 'alert_id', NEW.alert_id, 'patient_id', a.patient_id, 'event', NEW.event,
                'severity', a.severity, 'status', a.status, 'review_state', a.review_state,
                'at', to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text)
       FROM alerts a WHERE a.id = NEW.alert_id;
    RETURN NULL;
END $$;
CREATE TRIGGER alert_events_notify AFTER INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION alert_events_notify();
