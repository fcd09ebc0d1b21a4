-- The digital twin: one versioned state record per patient and its append-only event history.
-- The state is a pure fold of the events (cloud/twin/state.py), so replaying the events of a patient
-- rebuilds the stored state exactly; version = number of events applied.

CREATE TABLE twins (
    patient_id text PRIMARY KEY REFERENCES patients (id),
    version    bigint NOT NULL DEFAULT 0,
    state      jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE twin_events (
    patient_id text NOT NULL REFERENCES patients (id),
    version    bigint NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    event_type text NOT NULL CHECK (event_type IN (
        'reading_added', 'baselines_computed', 'alert_opened', 'alert_updated', 'alert_acknowledged',
        'alert_resolved', 'threshold_changed', 'device_assigned')),
    data       jsonb NOT NULL,
    PRIMARY KEY (patient_id, version)
);

-- Append-only: history is never rewritten.
CREATE FUNCTION twin_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'twin_events is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER twin_events_no_update BEFORE UPDATE OR DELETE ON twin_events
    FOR EACH ROW EXECUTE FUNCTION twin_events_append_only();
