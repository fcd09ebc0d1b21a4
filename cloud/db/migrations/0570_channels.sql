-- Notification channels (issue 17): e-mail over SMTP and an HTTP SMS/voice provider beside webhooks and
-- MQTT in the one delivery outbox, every attempt kept, and single-use deep links from the messages.
--
-- An outbox row says what to send to whom: the channel, the address (e-mail address, phone number),
-- who it is for (recipient: a care-team member's subject or 'patient:<id>'; audience), what message
-- (kind), and for escalation which escalation and step queued it. max_attempts bounds the retries of
-- one row (NULL: the sender's default): escalation gives a dead channel few tries so the next step
-- is reached instead of a retry schedule that runs for a day.

ALTER TABLE alert_deliveries DROP CONSTRAINT alert_deliveries_channel_check;
ALTER TABLE alert_deliveries ADD CONSTRAINT alert_deliveries_channel_check
    CHECK (channel IN ('webhook', 'mqtt', 'email', 'provider'));

ALTER TABLE alert_deliveries
    ADD COLUMN address       text,
    ADD COLUMN recipient     text,
    ADD COLUMN audience      text CHECK (audience IN ('care_team', 'patient')),
    ADD COLUMN kind          text,
    ADD COLUMN escalation_id bigint,          -- the foreign key comes with the escalation tables (0580)
    ADD COLUMN step          integer CHECK (step >= 0),
    ADD COLUMN max_attempts  integer CHECK (max_attempts >= 1),
    -- A message to a person needs somewhere to go; webhooks and MQTT carry theirs elsewhere.
    ADD CONSTRAINT alert_deliveries_address_check CHECK (channel NOT IN ('email', 'provider') OR address IS NOT NULL);
COMMENT ON COLUMN alert_deliveries.recipient IS 'care-team member subject, or patient:<patient_id>';
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id, id);
CREATE INDEX alert_deliveries_escalation ON alert_deliveries (escalation_id, step) WHERE escalation_id IS NOT NULL;

-- Every attempt: the alert shows what was tried, when, and why it failed. Attempt numbers come from
-- the claim (alert_deliveries.attempts), so a sender whose lease ran out and the one that took over
-- never write the same number.
CREATE TABLE delivery_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES alert_deliveries (id),
    attempt     integer NOT NULL CHECK (attempt >= 1),
    at          timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'failed')),
    error       text,
    duration_ms integer CHECK (duration_ms >= 0),
    UNIQUE (delivery_id, attempt),
    CHECK ((outcome = 'failed') = (error IS NOT NULL))
);

-- Deep links in messages: a random token travels in the message, only its SHA-256 is stored (a copy
-- of the database yields no usable link). Opening one needs a signed-in care-team member with access
-- to the alert's patient; it is used once and expires.
CREATE TABLE alert_links (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    alert_id   bigint NOT NULL REFERENCES alerts (id),
    recipient  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    used_by    text,
    CHECK (expires_at > created_at),
    CHECK ((used_at IS NULL) = (used_by IS NULL))
);
CREATE INDEX alert_links_alert ON alert_links (alert_id);
