-- FHIR Bulk Data export (issue 22 item 4; cloud/fhir_bulk): the durable job table a worker thread of the
-- API claims from with FOR UPDATE SKIP LOCKED, the patients each job may export (decided at kick-off from
-- the caller's consents), and the files of a finished job.
--
-- A job is 'running' only while its worker renews lease_until; a worker that died (killed, restarted)
-- stops renewing, and the next claim takes the job again from the start (attempts + 1) or, past the
-- attempt limit, fails it. A job becomes 'complete' in the one transaction that lists its files, after
-- they were renamed from their temporary names: no row, no file handed out.

CREATE TABLE bulk_export_jobs (
    id               uuid PRIMARY KEY,
    owner_subject    text NOT NULL,            -- the token's "sub": only it sees the job and its files
    owner_role       text NOT NULL,
    level            text NOT NULL CHECK (level IN ('group', 'patient')),
    group_id         text,                     -- the care team of a Group export
    care_teams       text[] NOT NULL DEFAULT '{}',  -- the caller's teams (token) whose consents decide what is seen
    own_patient      text,                     -- a patient's own export
    types            text[] NOT NULL CHECK (cardinality(types) > 0),
    since            timestamptz,
    request_url      text NOT NULL,
    transaction_time timestamptz NOT NULL DEFAULT now(),
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'complete', 'failed', 'cancelled', 'expired')),
    attempts         integer NOT NULL DEFAULT 0,
    worker           text,
    lease_until      timestamptz,
    progress         text,
    error            text,
    directory        text NOT NULL,            -- where its files are written (RPM_BULK_EXPORT_DIR at kick-off)
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    CHECK ((level = 'group') = (group_id IS NOT NULL))
);
-- The claim looks only at jobs not finished; the clean-up at those whose files may still exist.
CREATE INDEX bulk_export_jobs_open ON bulk_export_jobs (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX bulk_export_jobs_expiry ON bulk_export_jobs (expires_at) WHERE state IN ('complete', 'failed', 'cancelled');
CREATE INDEX bulk_export_jobs_owner ON bulk_export_jobs (owner_subject, created_at DESC);

-- Who a job may export, and what: the caller's consent scopes at kick-off (readings: Patient, Device,
-- Observation; alerts: Flag), as the API decides them for each request.
CREATE TABLE bulk_export_patients (
    job_id     uuid NOT NULL REFERENCES bulk_export_jobs (id) ON DELETE CASCADE,
    patient_id text NOT NULL,
    readings   boolean NOT NULL,
    alerts     boolean NOT NULL,
    PRIMARY KEY (job_id, patient_id)
);

CREATE TABLE bulk_export_files (
    job_id        uuid NOT NULL REFERENCES bulk_export_jobs (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z]+\.ndjson$'),
    resource_type text NOT NULL,
    count         bigint NOT NULL,
    bytes         bigint NOT NULL,
    patient_ids   text[] NOT NULL,             -- whose data it holds: each download is audited against them
    PRIMARY KEY (job_id, name)
);
