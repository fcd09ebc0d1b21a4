-- Push to an EHR (issue 22 item 3; cloud/ehr_push): PHD transaction Bundles sent to one configured FHIR
-- endpoint from a durable outbox. Nothing here touches the ingest path: no trigger, no index on readings.
--
-- ehr_push_cursor: the watermark, (stored_at, reading_id) of the last reading the claimer looked at. The
--   claimer reads readings past it, up to a horizon no uncommitted insert can be older than, through the
--   existing readings_gateway_stored index (one probe per gateway), queues those of patients whose consent
--   allows the push, and moves the watermark in the same transaction.
-- ehr_push_outbox: one row per queued reading: pending -> batched -> sent, or parked (its batch was refused),
--   or withheld (consent no longer allowed it when its batch was built).
-- ehr_push_batches: one transaction Bundle, stored as sent so that a resend after a crash is the same Bundle
--   (conditional create makes it harmless); 'sending' until the server's answer is recorded, in the same
--   transaction that marks its readings sent. A worker holds a batch under a lease; a worker that dies
--   leaves it to the next one when the lease lapses.

CREATE TABLE ehr_push_cursor (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row: one endpoint per deployment
    stored_at   timestamptz NOT NULL DEFAULT '-infinity',
    reading_id  text NOT NULL DEFAULT '',
    advanced_at timestamptz
);
INSERT INTO ehr_push_cursor DEFAULT VALUES;

CREATE TABLE ehr_push_batches (
    id              bigserial PRIMARY KEY,
    state           text NOT NULL DEFAULT 'sending' CHECK (state IN ('sending', 'sent', 'parked')),
    bundle          jsonb,                    -- the Bundle as sent; dropped once the answer is recorded
    entry_readings  text[] NOT NULL,          -- per Bundle entry, the reading it carries (NULL: Patient, Device)
    readings        integer NOT NULL,
    entries         integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    worker          text,
    lease_until     timestamptz,
    last_error      text,                     -- why the last attempt failed (network, 5xx, 429, token)
    http_status     integer,
    outcome         text,                     -- the server's OperationOutcome, as text, of a parked batch
    created         integer,                  -- entries the server created (201) ...
    matched         integer,                  -- ... and those its conditional create found already there (200)
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    parked_at       timestamptz
);
CREATE INDEX ehr_push_batches_unsent ON ehr_push_batches (next_attempt_at) WHERE state = 'sending';
CREATE INDEX ehr_push_batches_parked ON ehr_push_batches (parked_at) WHERE state = 'parked';

CREATE TABLE ehr_push_outbox (
    reading_id text PRIMARY KEY,
    patient_id text NOT NULL,
    stored_at  timestamptz NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT now(),
    state      text NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'batched', 'sent', 'parked', 'withheld')),
    batch_id   bigint REFERENCES ehr_push_batches (id),
    sent_at    timestamptz,
    locations  text[],                        -- where the server keeps this reading's Observations
    CHECK ((state IN ('batched', 'sent', 'parked')) = (batch_id IS NOT NULL))
);
CREATE INDEX ehr_push_outbox_pending ON ehr_push_outbox (stored_at, reading_id) WHERE state = 'pending';
CREATE INDEX ehr_push_outbox_batch ON ehr_push_outbox (batch_id) WHERE batch_id IS NOT NULL;
