-- Core schema: patients, gateways, devices and their assignment to patients, readings (one row per
-- reading, keyed by the gateway's deterministic id so a replay is a no-op), observations (one row per
-- metric value: the time series), dead letters.

CREATE TABLE patients (
    id           text PRIMARY KEY,
    display_name text,
    birth_date   date,
    sex          text CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    timezone     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateways (
    id         text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    status     jsonb
);

CREATE TABLE devices (
    uid          text PRIMARY KEY,
    transport    text NOT NULL,
    profile      text NOT NULL,
    model        text,
    serial       text,
    manufacturer text,
    gateway_id   text,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    battery      smallint
);

-- Which patient a device (and, for multi-user cuffs and scales, which user index) belongs to, and
-- when: a cuff can move between patients. user_index NULL means every user of the device.
CREATE TABLE device_assignments (
    id         bigserial PRIMARY KEY,
    device_uid text NOT NULL REFERENCES devices (uid),
    user_index smallint,
    patient_id text NOT NULL REFERENCES patients (id),
    valid_from timestamptz NOT NULL DEFAULT '-infinity',
    valid_to   timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX device_assignments_lookup ON device_assignments (device_uid, user_index, valid_from);

CREATE TABLE readings (
    id              text PRIMARY KEY,
    patient_id      text REFERENCES patients (id),  -- NULL: device/user not assigned yet (queued)
    device_uid      text NOT NULL,
    user_index      smallint,
    gateway_id      text NOT NULL,
    batch_id        text NOT NULL,
    kind            text NOT NULL,
    measured_at     timestamptz NOT NULL,
    received_at     timestamptz,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    device_time     timestamp,
    clock_judgement text NOT NULL,
    clock_offset_s  double precision,
    sequence        bigint,
    flags           text[] NOT NULL DEFAULT '{}',
    late            boolean NOT NULL DEFAULT false,
    raw             text NOT NULL DEFAULT ''
);
CREATE INDEX readings_patient_time ON readings (patient_id, measured_at DESC);
CREATE INDEX readings_unassigned ON readings (device_uid, user_index) WHERE patient_id IS NULL;

-- The time series: one row per metric value, in the metric's canonical unit. Rows are only ever
-- inserted together with their (new) readings row, so they inherit its idempotence.
CREATE TABLE observations (
    reading_id     text NOT NULL,
    patient_id     text,
    kind           text NOT NULL,
    metric         text NOT NULL,
    measured_at    timestamptz NOT NULL,
    value          double precision,
    value_list     double precision[],
    unit           text NOT NULL,
    original_value double precision,
    original_unit  text,
    flags          text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX observations_patient_metric_time ON observations (patient_id, metric, measured_at DESC);
CREATE INDEX observations_reading ON observations (reading_id);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    gateway_id  text,
    batch_id    text,
    reading_id  text,
    reason      text NOT NULL,
    payload     bytea NOT NULL
);
CREATE INDEX dead_letters_time ON dead_letters (received_at DESC);
