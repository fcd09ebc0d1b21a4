-- The adherence rule: warn while a patient can still reach the readings on 16 days of a 30-day period
-- that CPT 99454 (RPM device supply) requires, i.e. before the period is lost, not after.

ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_rule_type_check;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_rule_type_check
    CHECK (rule_type IN ('threshold', 'average', 'rate', 'baseline', 'missing_data', 'adherence'));

INSERT INTO alert_rules (id, rule_type, reading_kind, conditions, params, severity, margin, resolve_after,
                         suppression_minutes, description, source) VALUES
('adherence_16_days', 'adherence', 'any', '[]',
 '{"required_days": 16, "period_days": 30, "buffer_days": 3}',
 'info', 0, 1, 0,
 'At risk of fewer than 16 days with readings in the 30-day period (periods counted from enrolment)',
 'CMS RPM billing: CPT 99454 needs readings on at least 16 days of 30; from 2026 CPT 99445 covers 2-15 days');
