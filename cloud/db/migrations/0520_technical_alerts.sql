-- Technical alerts: what a care team must hear about a patient's equipment, kept apart from clinical
-- alerts. A device whose records the gateway could not turn into readings (quarantined at the
-- gateway: out-of-range values, undecodable frames) and a gateway whose storage is full are problems
-- a nurse can act on (replace the cuff, call the patient), but they say nothing about the patient's
-- health, so they carry category 'technical' and never page like a crisis.

ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_rule_type_check;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_rule_type_check
    CHECK (rule_type IN ('threshold', 'average', 'rate', 'baseline', 'missing_data', 'adherence', 'technical'));
ALTER TABLE alert_rules ADD COLUMN category text NOT NULL DEFAULT 'clinical'
    CHECK (category IN ('clinical', 'technical'));

-- Copied from the rule when the alert is made, so every reader of alerts (API, panel, twin) can tell
-- the two apart without a join, and no insert path can forget it.
ALTER TABLE alerts ADD COLUMN category text NOT NULL DEFAULT 'clinical'
    CHECK (category IN ('clinical', 'technical'));
CREATE FUNCTION alerts_category_from_rule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT r.category INTO NEW.category FROM alert_rules r WHERE r.id = NEW.rule_id;
    RETURN NEW;
END $$;
CREATE TRIGGER alerts_category BEFORE INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION alerts_category_from_rule();

-- The count the device's gateway last reported (GatewayStatus.devices[].quarantined): an increase is
-- news; the same count again is not.
ALTER TABLE devices ADD COLUMN quarantined_records integer NOT NULL DEFAULT 0;

INSERT INTO alert_rules (id, rule_type, reading_kind, conditions, params, severity, margin, resolve_after,
                         suppression_minutes, description, source, category) VALUES
('device_unreadable_records', 'technical', 'any', '[]', '{}', 'warning', 0, 1, 0,
 'A device sent records the gateway could not turn into readings (kept at the gateway with their bytes)',
 'Gateway quarantine (GatewayStatus.devices[].quarantined); resolved by the care team once the device is checked',
 'technical'),
('gateway_storage_full', 'technical', 'any', '[]', '{}', 'warning', 0, 1, 0,
 'The home gateway''s storage is full: new readings cannot be saved until it uploads or is replaced',
 'Gateway status (outbox_full); resolves by itself when the gateway reports space again',
 'technical');
