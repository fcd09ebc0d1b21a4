-- The clinician panel's row per patient, kept from the digital twin by a trigger: the latest value of
-- each metric, the reading days that adherence counts (at most 31: the 30-day period), and the
-- reference categories, small and un-TOASTed, so a panel of 10 000 patients never unpacks 10 000 twin
-- states. The twin stays the source of truth; this is a projection of it.

CREATE TABLE patient_panel (
    patient_id   text PRIMARY KEY REFERENCES patients (id),
    -- Ascending, so "days since X" is a binary search (width_bucket), not an unnest per patient.
    reading_days date[] NOT NULL DEFAULT '{}',
    -- json, not jsonb: kept as text, so the panel copies it into its answer without re-rendering.
    latest       json NOT NULL DEFAULT '{}',    -- {metric: {value, measured_at}}
    categories   json NOT NULL DEFAULT '{}',    -- {blood_pressure, glucose, bmi}: category names
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION patient_panel_from_twin() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Written defensively: this runs inside ingest's transaction, and a failure here would roll back
    -- the readings. Anything unexpected in the state is skipped, never raised.
    INSERT INTO patient_panel AS pp (patient_id, reading_days, latest, categories, updated_at)
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
        now())
    ON CONFLICT (patient_id) DO UPDATE
        SET reading_days = EXCLUDED.reading_days, latest = EXCLUDED.latest, categories = EXCLUDED.categories,
            updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END;
$$;

CREATE TRIGGER twins_feed_patient_panel AFTER INSERT OR UPDATE OF state ON twins
    FOR EACH ROW EXECUTE FUNCTION patient_panel_from_twin();

-- Twins that exist already.
UPDATE twins SET state = state;
