-- The gateway fleet (issue 19): identities pinned on first signed poll, claims for patients, MQTT
-- credentials issued to gateways, remote config documents. Rows are closed (released_at, revoked_at),
-- never deleted, so who claimed which box for whom, and which credentials it held when, stays answerable.
-- Every change is audited in audit_log (by the API's middleware for the routes, by cloud.fleet for the
-- gateway's own signed polls, which have no bearer token).

-- The key a gateway id was first seen with. A poll for the same id with another key is refused (409)
-- until an administrator releases this row (a box whose identity.key was restored elsewhere or reset).
CREATE TABLE gateway_identities (
    id                bigserial PRIMARY KEY,
    gateway_id        text NOT NULL,
    public_key        bytea NOT NULL CHECK (length(public_key) = 32),  -- raw Ed25519
    claim_code_sha256 text NOT NULL CHECK (claim_code_sha256 ~ '^[0-9a-f]{64}$'),
    first_poll_at     timestamptz NOT NULL DEFAULT now(),
    last_poll_at      timestamptz NOT NULL DEFAULT now(),
    software_version  text,
    polled_config_version integer,          -- what the gateway said it runs in its last poll
    released_at       timestamptz,
    released_by       text
);
CREATE UNIQUE INDEX gateway_identities_current ON gateway_identities (gateway_id) WHERE released_at IS NULL;
CREATE INDEX gateway_identities_code ON gateway_identities (claim_code_sha256) WHERE released_at IS NULL;

-- Which patient (and through which care team) a gateway serves. One open claim per gateway.
CREATE TABLE gateway_claims (
    id           bigserial PRIMARY KEY,
    gateway_id   text NOT NULL,
    identity_id  bigint NOT NULL REFERENCES gateway_identities (id),
    patient_id   text NOT NULL REFERENCES patients (id),
    care_team_id text REFERENCES care_teams (id),
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    claimed_by   text NOT NULL,
    released_at  timestamptz,
    released_by  text
);
CREATE UNIQUE INDEX gateway_claims_current ON gateway_claims (gateway_id) WHERE released_at IS NULL;
CREATE INDEX gateway_claims_patient ON gateway_claims (patient_id) WHERE released_at IS NULL;

-- Wrong claim codes per caller, for the rate limit (a code has 60 bits; guessing is still to be slowed).
CREATE TABLE gateway_claim_failures (
    subject text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_claim_failures_subject ON gateway_claim_failures (subject, at);

-- Nonces of accepted polls, kept until a replay of the request could no longer pass the clock check.
CREATE TABLE gateway_poll_nonces (
    gateway_id text NOT NULL,
    nonce      text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (gateway_id, nonce)
);
CREATE INDEX gateway_poll_nonces_expiry ON gateway_poll_nonces (expires_at);

-- MQTT credentials. pending_password holds the plain password only until the gateway is seen using it
-- (a status after the answer that carried it); from then on only the mosquitto hash line is kept.
CREATE TABLE gateway_credentials (
    id                bigserial PRIMARY KEY,
    gateway_id        text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('password', 'certificate')),
    username          text NOT NULL,
    password_hash     text,                 -- mosquitto $7$ line value (PBKDF2-SHA512)
    pending_password  text,
    cert_serial       text,
    cert_fingerprint  text,                 -- SHA-256 of the DER certificate, hex
    cert_pem          text,
    not_after         timestamptz,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    issued_by         text NOT NULL,
    first_sent_at     timestamptz,          -- first bootstrap answer that carried it
    delivered_at      timestamptz,          -- first status of the gateway after that answer
    revoked_at        timestamptz,
    revoked_by        text,
    rotate_requested_at timestamptz,        -- certificates: sign a new one at the next poll
    rotate_requested_by text,
    CHECK (kind <> 'password' OR password_hash IS NOT NULL),
    CHECK (kind <> 'certificate' OR cert_pem IS NOT NULL),
    CHECK (delivered_at IS NULL OR pending_password IS NULL)
);
CREATE INDEX gateway_credentials_gateway ON gateway_credentials (gateway_id, issued_at DESC);

-- Remote config documents: every version kept. What the gateway runs is in its status (config.version).
CREATE TABLE gateway_configs (
    gateway_id   text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    document     jsonb NOT NULL,
    set_by       text NOT NULL,
    set_at       timestamptz NOT NULL DEFAULT now(),
    reason       text,
    published_at timestamptz,               -- the broker acknowledged the retained message
    PRIMARY KEY (gateway_id, version)
);

-- A credential is delivered when the gateway's status reaches the cloud after the answer that carried it
-- (the gateway can only connect with it after that answer). Then the plain password is dropped, and
-- credentials it replaced (a rotation) are marked revoked. Ingest stores status (cloud.ingest); the
-- trigger keeps this bookkeeping in the same transaction without ingest knowing about credentials.
-- The same trigger keeps when a gateway's reported presence last changed (online since / offline since).
CREATE TABLE gateway_presence (
    gateway_id text PRIMARY KEY,
    online     boolean NOT NULL,
    since      timestamptz NOT NULL
);

CREATE FUNCTION gateway_credentials_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delivered bigint;
    reported  boolean;
BEGIN
    IF NEW.status IS NULL THEN
        RETURN NEW;
    END IF;
    reported := coalesce((NEW.status ->> 'online')::boolean, false);
    INSERT INTO gateway_presence AS p (gateway_id, online, since) VALUES (NEW.id, reported, now())
    ON CONFLICT (gateway_id) DO UPDATE SET online = excluded.online, since = excluded.since
     WHERE p.online IS DISTINCT FROM excluded.online;
    IF NOT reported THEN
        RETURN NEW;
    END IF;
    WITH done AS (
        UPDATE gateway_credentials SET delivered_at = now(), pending_password = NULL
         WHERE gateway_id = NEW.id AND delivered_at IS NULL AND revoked_at IS NULL
           AND first_sent_at IS NOT NULL AND first_sent_at < now()
        RETURNING id)
    SELECT max(id) INTO delivered FROM done;
    IF delivered IS NOT NULL THEN
        UPDATE gateway_credentials SET revoked_at = now(), revoked_by = 'rotation: replaced by #' || delivered,
                                       pending_password = NULL
         WHERE gateway_id = NEW.id AND id < delivered AND revoked_at IS NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER gateways_status_delivers_credentials AFTER INSERT OR UPDATE OF status ON gateways
    FOR EACH ROW EXECUTE FUNCTION gateway_credentials_delivered();
