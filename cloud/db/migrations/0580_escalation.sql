-- Escalation (issue 17, items 2 and 4): who a care team's alerts reach, in which order and when, as data;
-- the state of each alert's escalation, claimed by the scheduler with FOR UPDATE SKIP LOCKED; and the
-- patient's own opt-in to messages about their readings.
--
-- Policies are versions: replacing a team's policies retires the old rows (retired_at) instead of
-- changing them, so an escalation under way keeps the steps it started with and the audit log's
-- "what changed" can always be read against the rows it names. Contacts and on-call schedules are
-- looked up when a step is sent, so a corrected phone number or a swapped shift applies at once.

-- People a care team's messages can reach. Not an account table: the subject matches the token's "sub"
-- where the person signs in, and duties (roles) are what policies and on-call schedules name.
CREATE TABLE care_team_contacts (
    care_team_id text NOT NULL REFERENCES care_teams (id),
    subject      text NOT NULL,
    display_name text NOT NULL,
    email        text,
    phone        text,                    -- E.164, for the SMS/voice provider
    webhook_id   bigint REFERENCES webhooks (id),   -- a pager or chat integration of this person's
    roles        text[] NOT NULL DEFAULT '{}',      -- duties: nurse, physician, team_lead, ...
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL,
    PRIMARY KEY (care_team_id, subject),
    CHECK (email IS NULL OR email ~ '^[^@\s]+@[^@\s]+$'),
    CHECK (phone IS NULL OR phone ~ '^\+[1-9][0-9]{6,14}$')
);

-- Who holds a duty when. A rotation hands the duty on every rotation_hours from rotation_start, both in
-- the schedule's own zone (wall-clock: a Monday 08:00 hand-off stays at 08:00 across DST); explicit
-- shifts (also wall-clock in that zone) override the rotation while they last.
CREATE TABLE on_call_schedules (
    care_team_id   text NOT NULL REFERENCES care_teams (id),
    role           text NOT NULL,
    timezone       text NOT NULL,          -- IANA name, checked by the API (zoneinfo)
    rotation       text[] NOT NULL DEFAULT '{}',   -- subjects in turn order
    rotation_start timestamp,              -- local wall-clock time of the first hand-off
    rotation_hours integer NOT NULL DEFAULT 168 CHECK (rotation_hours > 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text NOT NULL,
    PRIMARY KEY (care_team_id, role),
    CHECK (cardinality(rotation) = 0 OR rotation_start IS NOT NULL)
);

CREATE TABLE on_call_shifts (
    id           bigserial PRIMARY KEY,
    care_team_id text NOT NULL,
    role         text NOT NULL,
    subject      text NOT NULL,
    starts_local timestamp NOT NULL,
    ends_local   timestamp NOT NULL,
    FOREIGN KEY (care_team_id, role) REFERENCES on_call_schedules (care_team_id, role) ON DELETE CASCADE,
    CHECK (ends_local > starts_local)
);
CREATE INDEX on_call_shifts_role ON on_call_shifts (care_team_id, role, starts_local);

-- A team's policies: the first active one (by position) whose filters match the alert applies.
CREATE TABLE escalation_policies (
    id                   bigserial PRIMARY KEY,
    care_team_id         text NOT NULL REFERENCES care_teams (id),
    position             integer NOT NULL CHECK (position >= 0),
    name                 text NOT NULL,
    min_severity         text NOT NULL DEFAULT 'warning' CHECK (min_severity IN ('info', 'warning', 'critical')),
    categories           text[] NOT NULL DEFAULT '{clinical}'
                         CHECK (categories <@ ARRAY['clinical', 'technical']::text[] AND cardinality(categories) > 0),
    timezone             text NOT NULL DEFAULT 'UTC',      -- of the quiet hours
    -- Non-critical notifications due inside [quiet_start, quiet_end) (local; may wrap midnight) wait for
    -- its end; critical ones bypass.
    quiet_start          time,
    quiet_end            time,
    repeat_every_minutes integer CHECK (repeat_every_minutes > 0),
    repeat_max           integer NOT NULL DEFAULT 0 CHECK (repeat_max >= 0),
    -- Alerts that opened before the team had a policy do not start escalating when one is added (that
    -- would page everyone about last month); replacements keep the first version's time.
    applies_from         timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_by           text NOT NULL,
    retired_at           timestamptz,
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL) AND (quiet_start IS NULL OR quiet_start <> quiet_end)),
    CHECK (repeat_max = 0 OR repeat_every_minutes IS NOT NULL)
);
CREATE UNIQUE INDEX escalation_policies_active ON escalation_policies (care_team_id, position) WHERE retired_at IS NULL;

-- delay_s: how long after the alert (had every earlier step gone out on time) this step is sent; the
-- engine waits the difference to the previous step from when that one was actually sent, so quiet
-- hours or a stopped scheduler do not make every later step due at once.
CREATE TABLE escalation_steps (
    policy_id   bigint NOT NULL REFERENCES escalation_policies (id),
    step        integer NOT NULL CHECK (step >= 0),
    delay_s     integer NOT NULL CHECK (delay_s >= 0),
    target_type text NOT NULL CHECK (target_type IN ('person', 'role', 'on_call')),
    target      text NOT NULL,          -- a contact's subject, or a role
    channels    text[] NOT NULL CHECK (channels <@ ARRAY['email', 'provider', 'webhook']::text[]
                                       AND cardinality(channels) > 0),
    PRIMARY KEY (policy_id, step)
);

-- One escalation per alert episode and care team (a patient may be in several teams' care; a re-opened
-- alert is a new episode and escalates again). next_step = step_count once the last step was sent; the
-- row is claimed by locking it (FOR UPDATE SKIP LOCKED) in the transaction that queues the step's
-- messages and moves it on, so a claim and its effect commit together or not at all.
CREATE TABLE alert_escalations (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    care_team_id text NOT NULL REFERENCES care_teams (id),
    policy_id    bigint NOT NULL REFERENCES escalation_policies (id),
    episode      integer NOT NULL CHECK (episode >= 0),       -- alerts.reopen_count when it started
    step_count   integer NOT NULL CHECK (step_count > 0),
    started_at   timestamptz NOT NULL,
    next_step    integer NOT NULL DEFAULT 0 CHECK (next_step >= 0 AND next_step <= step_count),
    sent_step    integer CHECK (sent_step >= 0 AND sent_step < step_count),   -- last step sent
    repeats      integer NOT NULL DEFAULT 0 CHECK (repeats >= 0),
    next_at      timestamptz,
    last_sent_at timestamptz,
    last_note    text,                                        -- why a step reached nobody, or fell back
    stopped_at   timestamptz,
    stop_reason  text CHECK (stop_reason IN ('acknowledged', 'reviewed', 'resolved', 'exhausted', 'consent_revoked')),
    UNIQUE (alert_id, care_team_id, episode),
    CHECK ((stopped_at IS NULL) = (stop_reason IS NULL)),
    CHECK (stopped_at IS NOT NULL OR next_at IS NOT NULL)
);
CREATE INDEX alert_escalations_due ON alert_escalations (next_at) WHERE stopped_at IS NULL;
CREATE INDEX alert_escalations_alert ON alert_escalations (alert_id);

ALTER TABLE alert_deliveries ADD CONSTRAINT alert_deliveries_escalation_fk
    FOREIGN KEY (escalation_id) REFERENCES alert_escalations (id);

-- Patients' own contact points: a message goes only to an address the patient (or their care team, with
-- the patient's agreement) opted in, and opting out is a timestamp so the history is kept.
CREATE TABLE patient_contacts (
    id           bigserial PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients (id),
    channel      text NOT NULL CHECK (channel IN ('email', 'provider')),
    address      text NOT NULL,
    opted_in_at  timestamptz NOT NULL,
    opted_in_by  text NOT NULL,
    opted_out_at timestamptz,
    opted_out_by text,
    CHECK ((opted_out_at IS NULL) = (opted_out_by IS NULL)),
    CHECK (channel <> 'email' OR address ~ '^[^@\s]+@[^@\s]+$'),
    CHECK (channel <> 'provider' OR address ~ '^\+[1-9][0-9]{6,14}$')
);
CREATE UNIQUE INDEX patient_contacts_active ON patient_contacts (patient_id, channel) WHERE opted_out_at IS NULL;

-- Which alerts send which patient message. delay_s after the alert opens (the alert must still be open
-- and not late); send_from / send_until: the patient's local hours (NULL: any time).
CREATE TABLE patient_message_rules (
    rule_id    text PRIMARY KEY REFERENCES alert_rules (id),
    kind       text NOT NULL CHECK (kind IN ('patient_missing_data', 'patient_repeat_reading')),
    delay_s    integer NOT NULL DEFAULT 0 CHECK (delay_s >= 0),
    context    jsonb NOT NULL DEFAULT '{}',
    send_from  time,
    send_until time,
    enabled    boolean NOT NULL DEFAULT true,
    CHECK ((send_from IS NULL) = (send_until IS NULL))
);
INSERT INTO patient_message_rules (rule_id, kind, delay_s, context, send_from, send_until) VALUES
    ('missing_blood_pressure', 'patient_missing_data', 0, '{}', '09:00', '20:00'),
    ('missing_glucose', 'patient_missing_data', 0, '{}', '09:00', '20:00'),
    ('missing_body_weight', 'patient_missing_data', 0, '{}', '09:00', '20:00'),
    -- AHA: re-measure after about 5 minutes seated before treating one high reading as a crisis.
    ('bp_crisis', 'patient_repeat_reading', 0, '{"minutes": 5}', NULL, NULL);

-- One patient message per alert episode, whichever scheduler gets there first (the primary key decides).
CREATE TABLE patient_notifications (
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    episode   integer NOT NULL,
    kind      text NOT NULL,
    queued_at timestamptz NOT NULL,
    messages  integer NOT NULL,
    PRIMARY KEY (alert_id, episode)
);
