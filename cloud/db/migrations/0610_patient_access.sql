-- The patient's own page (issue 20): care-team invite codes, the wrong guesses that rate-limit them,
-- first-time sign-in links, requests to close an account, and a name to show for care-team members.
--
-- Secrets are never stored: an invite code and a first-time link token are kept as the SHA-256 of
-- their normalised text, so a copy of the database opens no record. Both are single use; using one
-- is an UPDATE ... WHERE used_at IS NULL, so two requests racing for it cannot both win.

-- "Dr Ada Lovelace" in the patient's "who sees my data" and "who looked" (the token's sub otherwise).
ALTER TABLE care_team_members ADD COLUMN name text CHECK (name IS NULL OR length(name) <= 200);

CREATE TABLE care_team_invites (
    id           bigserial PRIMARY KEY,
    care_team_id text NOT NULL REFERENCES care_teams (id),
    code_hash    text NOT NULL UNIQUE,      -- sha256 hex of the 8 Crockford base32 characters, upper case
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    used_by      text,                      -- the patient record that entered it
    consent_id   bigint REFERENCES consents (id),
    CHECK (expires_at > created_at)
);

-- Every invite code a patient entered, right or wrong: wrong guesses in a recent window are the limit.
CREATE TABLE invite_code_attempts (
    id         bigserial PRIMARY KEY,
    patient_id text NOT NULL,               -- not a foreign key: the row is kept whatever happens to the record
    at         timestamptz NOT NULL DEFAULT now(),
    ok         boolean NOT NULL
);
CREATE INDEX invite_code_attempts_recent ON invite_code_attempts (patient_id, at DESC) WHERE NOT ok;

CREATE TABLE first_time_links (
    id          bigserial PRIMARY KEY,
    token_hash  text NOT NULL UNIQUE,       -- sha256 hex of the URL token
    patient_id  text NOT NULL REFERENCES patients (id),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX first_time_links_patient ON first_time_links (patient_id, created_at DESC);

-- A request to close an account is the patient's; carrying it out is the care team's and the
-- administrators' (what must be kept stays), so the row records the request and what it will do.
CREATE TABLE closure_requests (
    id           bigserial PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients (id),
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL,
    reason       text CHECK (reason IS NULL OR length(reason) <= 2000),
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'withdrawn')),
    closed_at    timestamptz
);
-- At most one pending request per patient: asking twice is the same request.
CREATE UNIQUE INDEX closure_requests_pending ON closure_requests (patient_id) WHERE status = 'pending';
