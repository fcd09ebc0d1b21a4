-- Alerts: the rule catalogue (data, seeded from specs/clinical-thresholds.md with sources), per-patient
-- overrides set by the care team, alerts with their lifecycle (one open alert per patient and rule,
-- enforced here), their event history, webhooks and the delivery outbox.

CREATE TABLE alert_rules (
    id                  text PRIMARY KEY,
    rule_type           text NOT NULL CHECK (rule_type IN ('threshold', 'average', 'rate', 'baseline', 'missing_data')),
    reading_kind        text NOT NULL,
    -- threshold / average: any-of list of {"metric", "op" (">=", ">", "<=", "<"), "value"}.
    -- rate: one {"metric", "op": ">=", "value": delta}; baseline: one {"metric", "op": "abs>=", "value": z}.
    conditions          jsonb NOT NULL DEFAULT '[]',
    -- Type-specific settings: window_hours, window_days, min_readings, hours, profiles, ...
    params              jsonb NOT NULL DEFAULT '{}',
    severity            text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    -- Hysteresis: a reading counts as normal only when it is back past the threshold by this margin
    -- (in the metric's unit) and the alert resolves after resolve_after such readings in a row.
    margin              double precision NOT NULL DEFAULT 0,
    resolve_after       integer NOT NULL DEFAULT 1 CHECK (resolve_after >= 1),
    -- A rule that fires again within this window after resolving re-opens the same alert (episode).
    suppression_minutes integer NOT NULL DEFAULT 60 CHECK (suppression_minutes >= 0),
    enabled             boolean NOT NULL DEFAULT true,
    description         text NOT NULL,
    source              text NOT NULL
);

CREATE TABLE alert_rule_overrides (
    patient_id  text NOT NULL REFERENCES patients (id),
    rule_id     text NOT NULL REFERENCES alert_rules (id),
    enabled     boolean,
    conditions  jsonb,          -- replaces the rule's condition values metric by metric
    params      jsonb,          -- merged over the rule's params
    severity    text CHECK (severity IN ('info', 'warning', 'critical')),
    margin      double precision,
    resolve_after integer CHECK (resolve_after >= 1),
    note        text,
    set_by      text NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, rule_id)
);

CREATE TABLE alerts (
    id                 bigserial PRIMARY KEY,
    patient_id         text NOT NULL REFERENCES patients (id),
    rule_id            text NOT NULL REFERENCES alert_rules (id),
    severity           text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    status             text NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    message            text NOT NULL,
    metric             text,
    value              double precision,
    reading_id         text,
    measured_at        timestamptz,            -- of the reading that last triggered it
    late               boolean NOT NULL DEFAULT false,
    flags              text[] NOT NULL DEFAULT '{}',
    trigger_count      integer NOT NULL DEFAULT 1,
    normal_streak      integer NOT NULL DEFAULT 0,
    reopen_count       integer NOT NULL DEFAULT 0,
    opened_at          timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    acknowledged_at    timestamptz,
    acknowledged_by    text,
    resolved_at        timestamptz,
    resolved_by        text
);
-- The guarantee two ingest workers rely on: at most one alert per patient and rule not yet resolved.
CREATE UNIQUE INDEX alerts_one_open_per_rule ON alerts (patient_id, rule_id) WHERE status <> 'resolved';
CREATE INDEX alerts_patient_time ON alerts (patient_id, opened_at DESC);
CREATE INDEX alerts_status_time ON alerts (status, opened_at DESC);
CREATE INDEX alerts_recently_resolved ON alerts (patient_id, rule_id, resolved_at DESC) WHERE status = 'resolved';

CREATE TABLE alert_events (
    id        bigserial PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    at        timestamptz NOT NULL DEFAULT now(),
    event     text NOT NULL CHECK (event IN ('opened', 'updated', 'reopened', 'acknowledged', 'resolved', 'comment')),
    actor     text,                     -- who (a clinician, or 'system')
    reading_id text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

CREATE TABLE webhooks (
    id         bigserial PRIMARY KEY,
    url        text NOT NULL,
    secret     text NOT NULL,           -- HMAC-SHA256 key for the X-RPM-Signature header
    patient_id text REFERENCES patients (id),   -- NULL: every patient
    events     text[] NOT NULL DEFAULT '{open,resolved}',
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Outbox: one row per (destination, alert change), written in the same transaction as the change,
-- sent by the delivery loop with retries and exponential backoff.
CREATE TABLE alert_deliveries (
    id              bigserial PRIMARY KEY,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'mqtt')),
    webhook_id      bigint REFERENCES webhooks (id),
    topic           text,
    alert_id        bigint NOT NULL REFERENCES alerts (id),
    status          text NOT NULL,
    payload         bytea NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,        -- gave up after the last attempt
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL))
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;

-- Missing-data evaluation asks "latest reading of this kind for this patient".
CREATE INDEX readings_patient_kind_time ON readings (patient_id, kind, measured_at DESC);

-- The default catalogue. Sources: specs/clinical-thresholds.md.
INSERT INTO alert_rules (id, rule_type, reading_kind, conditions, params, severity, margin, resolve_after,
                         suppression_minutes, description, source) VALUES
('bp_crisis', 'threshold', 'blood_pressure',
 '[{"metric": "systolic", "op": ">=", "value": 180}, {"metric": "diastolic", "op": ">=", "value": 120}]', '{}',
 'critical', 10, 2, 120, 'Hypertensive crisis: systolic >= 180 or diastolic >= 120 mmHg',
 'ACC/AHA 2017 high blood pressure guideline (severe hypertension), kept by the 2025 guideline'),
('bp_hypotension', 'threshold', 'blood_pressure',
 '[{"metric": "systolic", "op": "<", "value": 90}]', '{}',
 'warning', 5, 2, 120, 'Hypotension: systolic < 90 mmHg', 'ACC/AHA 2017 high blood pressure guideline'),
('bp_stage2_average', 'average', 'blood_pressure',
 '[{"metric": "systolic", "op": ">=", "value": 140}, {"metric": "diastolic", "op": ">=", "value": 90}]',
 '{"window_days": 7, "min_readings": 4}',
 'info', 5, 1, 1440, '7-day average blood pressure in stage 2 hypertension (>= 140 or >= 90 mmHg): review',
 'ACC/AHA 2017 BP categories (stage 2 hypertension); home BP judged as an average'),
('glucose_level2_hypo', 'threshold', 'glucose',
 '[{"metric": "glucose", "op": "<", "value": 54}]', '{}',
 'critical', 5, 1, 120, 'Level 2 hypoglycaemia: glucose < 54 mg/dL',
 'ADA Standards of Care; International Consensus on Time in Range 2019'),
('glucose_hypo', 'threshold', 'glucose',
 '[{"metric": "glucose", "op": "<", "value": 70}]', '{}',
 'warning', 5, 1, 120, 'Level 1 hypoglycaemia: glucose < 70 mg/dL',
 'ADA Standards of Care; International Consensus on Time in Range 2019'),
('glucose_hyper', 'threshold', 'glucose',
 '[{"metric": "glucose", "op": ">", "value": 250}]', '{}',
 'warning', 20, 1, 120, 'Level 2 hyperglycaemia: glucose > 250 mg/dL',
 'ADA Standards of Care; International Consensus on Time in Range 2019'),
('glucose_severe_hyper', 'threshold', 'glucose',
 '[{"metric": "glucose", "op": ">", "value": 400}]', '{}',
 'critical', 30, 1, 120, 'Severe hyperglycaemia: glucose > 400 mg/dL', 'ADA Standards of Care'),
('weight_gain_24h', 'rate', 'body_weight',
 '[{"metric": "body_weight", "op": ">=", "value": 0.9}]', '{"window_hours": 24}',
 'warning', 0.3, 1, 1440, 'Weight gain >= 0.9 kg (2 lb) in 24 h (fluid retention in heart failure)',
 'HFSA/AHA heart-failure self-care patient guidance'),
('weight_gain_7d', 'rate', 'body_weight',
 '[{"metric": "body_weight", "op": ">=", "value": 2.3}]', '{"window_hours": 168}',
 'warning', 0.5, 1, 1440, 'Weight gain >= 2.3 kg (5 lb) in 7 days (fluid retention in heart failure)',
 'HFSA/AHA heart-failure self-care patient guidance'),
('pulse_low', 'threshold', 'blood_pressure',
 '[{"metric": "pulse_rate", "op": "<", "value": 40}]', '{}',
 'warning', 5, 1, 120, 'Resting pulse < 40 /min', 'Resting adult heart rate 60-100 /min'),
('pulse_high', 'threshold', 'blood_pressure',
 '[{"metric": "pulse_rate", "op": ">", "value": 130}]', '{}',
 'warning', 10, 1, 120, 'Resting pulse > 130 /min', 'Resting adult heart rate 60-100 /min'),
('pulse_critical_low', 'threshold', 'blood_pressure',
 '[{"metric": "pulse_rate", "op": "<", "value": 30}]', '{}',
 'critical', 5, 1, 120, 'Resting pulse < 30 /min', 'Resting adult heart rate 60-100 /min'),
('pulse_critical_high', 'threshold', 'blood_pressure',
 '[{"metric": "pulse_rate", "op": ">", "value": 150}]', '{}',
 'critical', 10, 1, 120, 'Resting pulse > 150 /min', 'Resting adult heart rate 60-100 /min'),
('systolic_baseline_deviation', 'baseline', 'blood_pressure',
 '[{"metric": "systolic", "op": "abs>=", "value": 3.5}]',
 '{"window_days": 30, "min_days": 14, "min_readings": 14, "min_scale": 4}',
 'info', 0.5, 2, 1440, 'Systolic pressure far from the patient''s own 14-30 day baseline (robust z >= 3.5, median/MAD)',
 'Robust z-score (Iglewicz and Hoaglin 1993) over the patient''s own readings'),
('glucose_baseline_deviation', 'baseline', 'glucose',
 '[{"metric": "glucose", "op": "abs>=", "value": 3.5}]',
 '{"window_days": 30, "min_days": 14, "min_readings": 14, "min_scale": 8}',
 'info', 0.5, 2, 1440, 'Glucose far from the patient''s own 14-30 day baseline (robust z >= 3.5, median/MAD)',
 'Robust z-score (Iglewicz and Hoaglin 1993) over the patient''s own readings'),
('weight_baseline_deviation', 'baseline', 'body_weight',
 '[{"metric": "body_weight", "op": "abs>=", "value": 3.5}]',
 '{"window_days": 30, "min_days": 14, "min_readings": 14, "min_scale": 0.3}',
 'info', 0.5, 2, 1440, 'Body weight far from the patient''s own 14-30 day baseline (robust z >= 3.5, median/MAD)',
 'Robust z-score (Iglewicz and Hoaglin 1993) over the patient''s own readings'),
('missing_blood_pressure', 'missing_data', 'blood_pressure', '[]',
 '{"hours": 48, "profiles": ["ble.blood_pressure"]}',
 'warning', 0, 1, 0, 'No blood-pressure reading for 48 h (adherence; CPT 99454 needs readings on 16 of 30 days)',
 'CMS RPM billing (CPT 99454: 16 days of 30)'),
('missing_glucose', 'missing_data', 'glucose', '[]',
 '{"hours": 48, "profiles": ["ble.glucose", "serial.astm"]}',
 'warning', 0, 1, 0, 'No glucose reading for 48 h (adherence; CPT 99454 needs readings on 16 of 30 days)',
 'CMS RPM billing (CPT 99454: 16 days of 30)'),
('missing_body_weight', 'missing_data', 'body_weight', '[]',
 '{"hours": 48, "profiles": ["ble.weight_scale", "serial.ad_scale"]}',
 'warning', 0, 1, 0, 'No body-weight reading for 48 h (adherence; CPT 99454 needs readings on 16 of 30 days)',
 'CMS RPM billing (CPT 99454: 16 days of 30)');
