-- Review is part of an alert's lifecycle. A hypertensive crisis can open and resolve inside one
-- gateway sync; resolving says the numbers came back, not that anyone saw them. Alerts whose severity
-- is critical (or whose rule asks for it) therefore stay "pending review" after they resolve, until a
-- person acknowledges them. The database, not the code paths that write alerts, holds the rule:
--   * review_required is derived here from the severity and the rule, and once true stays true;
--   * who reviewed and when are set together;
--   * a review is withdrawn only when the alert opens again (a new episode needs a new look).

ALTER TABLE alert_rules ADD COLUMN requires_review boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN alert_rules.requires_review IS
    'Alerts of this rule need a person''s review even when not critical (critical ones always do)';

ALTER TABLE alerts
    ADD COLUMN review_required boolean NOT NULL DEFAULT false,
    ADD COLUMN reviewed_at     timestamptz,
    ADD COLUMN reviewed_by     text,
    ADD CONSTRAINT alerts_review_who_and_when CHECK ((reviewed_at IS NULL) = (reviewed_by IS NULL)),
    ADD COLUMN review_state    text GENERATED ALWAYS AS (
        CASE WHEN reviewed_at IS NOT NULL THEN 'reviewed'
             WHEN review_required THEN 'pending'
             ELSE 'not_required' END) STORED;

-- Alerts from before review existed: acknowledged ones were reviewed by whoever acknowledged them;
-- a person who resolved one saw it. Critical alerts resolved by the system in the last 7 days stay
-- pending (a care team should still see last week's unseen crisis); older ones are marked reviewed by
-- this migration rather than flooding the inbox with history nobody can act on any more.
UPDATE alerts SET review_required = true WHERE severity = 'critical';
UPDATE alerts SET reviewed_at = acknowledged_at, reviewed_by = acknowledged_by
 WHERE acknowledged_at IS NOT NULL AND acknowledged_by IS NOT NULL;
UPDATE alerts SET reviewed_at = resolved_at, reviewed_by = resolved_by
 WHERE reviewed_at IS NULL AND status = 'resolved' AND resolved_by IS NOT NULL AND resolved_by <> 'system';
UPDATE alerts SET reviewed_at = resolved_at, reviewed_by = 'migration 0560 (resolved before review existed)'
 WHERE reviewed_at IS NULL AND status = 'resolved' AND resolved_at < now() - interval '7 days';

CREATE FUNCTION alerts_review_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.review_required AND NOT NEW.review_required THEN
            RAISE EXCEPTION 'alert % needs a review; that cannot be switched off', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.reviewed_at IS NOT NULL AND NEW.reviewed_at IS NULL
           AND NOT (OLD.status = 'resolved' AND NEW.status <> 'resolved') THEN
            RAISE EXCEPTION 'alert % was reviewed; only re-opening it withdraws the review', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF NOT NEW.review_required THEN
        NEW.review_required := NEW.severity = 'critical'
            OR EXISTS (SELECT 1 FROM alert_rules r WHERE r.id = NEW.rule_id AND r.requires_review);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alerts_review BEFORE INSERT OR UPDATE ON alerts
    FOR EACH ROW EXECUTE FUNCTION alerts_review_rules();

ALTER TABLE alert_events DROP CONSTRAINT alert_events_event_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_event_check
    CHECK (event IN ('opened', 'updated', 'reopened', 'acknowledged', 'resolved', 'comment', 'reviewed'));

-- What needs a person: open and nobody acknowledged it, or resolved before anyone reviewed it.
-- The inbox, the panel and escalation ask this; it is small however long the history grows.
CREATE INDEX alerts_needs_human ON alerts (patient_id, opened_at DESC)
    WHERE status = 'open' OR review_state = 'pending';

-- The twin hears of reviews: a resolved alert pending review stays on the twin until reviewed.
ALTER TABLE twin_events DROP CONSTRAINT twin_events_event_type_check;
ALTER TABLE twin_events ADD CONSTRAINT twin_events_event_type_check CHECK (event_type IN (
    'reading_added', 'baselines_computed', 'alert_opened', 'alert_updated', 'alert_acknowledged',
    'alert_resolved', 'alert_reviewed', 'threshold_changed', 'device_assigned'));
