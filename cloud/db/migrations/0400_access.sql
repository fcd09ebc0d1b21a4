-- Clinician API access: care teams and their members, the patient's consents, the audit log.
-- Consent is the patient's: a care team sees a patient's data only through an active consent row
-- (not revoked, not expired) whose scopes cover what is asked. Revocation is a timestamp, so the
-- next request already sees it and the history of who could see what is kept.

CREATE TABLE care_teams (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE care_team_members (
    care_team_id text NOT NULL REFERENCES care_teams (id),
    subject      text NOT NULL,            -- the token's "sub"
    role         text NOT NULL CHECK (role IN ('clinician', 'care_team')),
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (care_team_id, subject)
);

CREATE TABLE consents (
    id           bigserial PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients (id),
    care_team_id text NOT NULL REFERENCES care_teams (id),
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['readings', 'alerts', 'twin']::text[] AND cardinality(scopes) > 0),
    granted_at   timestamptz NOT NULL DEFAULT now(),
    granted_by   text NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    revoked_by   text,
    CHECK (expires_at IS NULL OR expires_at > granted_at)
);
-- The authorisation check and the panel both start from "active consents of these care teams".
CREATE INDEX consents_team_active ON consents (care_team_id, patient_id) WHERE revoked_at IS NULL;
CREATE INDEX consents_patient ON consents (patient_id, granted_at DESC);

-- One row per request that touched patient data, naming every patient it touched (one for a record,
-- thousands for a panel), so a panel view costs one insert and each patient still finds it.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    subject     text NOT NULL,
    role        text NOT NULL,
    care_teams  text[] NOT NULL DEFAULT '{}',
    action      text NOT NULL,             -- "GET /v1/patients/{patient_id}/readings"
    patient_ids text[] NOT NULL,           -- not foreign keys: a denied request may name no real patient
    outcome     text NOT NULL,             -- "allowed", "not_found", "forbidden", "unauthenticated", "error", ...
    status      smallint,
    request_id  text NOT NULL
);
CREATE INDEX audit_log_patients ON audit_log USING gin (patient_ids);

-- Audit is append-only, like the twin's history.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
