-- Alert rules for pulse oximetry and body temperature (issue 24), as data. Sources:
-- specs/clinical-thresholds.md. Readings flagged invalid_measurement, low_perfusion, sensor_displaced,
-- demonstration_data or testing_data are stored but never judged (cloud.twin.state.EXCLUDED_FLAGS).
--
-- The SpO2 target range is a per-patient setting: the defaults below are for the usual 94-98 % target;
-- a patient at risk of hypercapnic respiratory failure (COPD, target 88-92 %) gets an override of
-- spo2_low to 86 and spo2_critical to 84 (alert_rule_overrides, conditions by metric), as the BTS
-- guideline says. The baseline rule judges the drop in points below the patient's own 7-day median
-- (params.measure = drop_below_median), so it follows each patient's own range without an override.

INSERT INTO alert_rules (id, rule_type, reading_kind, conditions, params, severity, margin, resolve_after,
                         suppression_minutes, description, source) VALUES
('spo2_low', 'threshold', 'pulse_oximetry',
 '[{"metric": "spo2", "op": "<", "value": 92}]', '{"target_range": [94, 98]}',
 'warning', 1, 2, 120,
 'Low oxygen saturation: SpO2 < 92 % (usual target 94-98 %; COPD 88-92 % target: override to < 86 %)',
 'BTS guideline for oxygen use in adults 2017; NEWS2 SpO2 scale 1 (RCP 2017)'),
('spo2_critical', 'threshold', 'pulse_oximetry',
 '[{"metric": "spo2", "op": "<=", "value": 88}]', '{"target_range": [94, 98]}',
 'critical', 1, 2, 120,
 'Severe desaturation: SpO2 <= 88 % (COPD 88-92 % target: override to <= 84 %)',
 'BTS guideline for oxygen use in adults 2017; NEWS2 SpO2 scale 1 (RCP 2017)'),
('spo2_baseline_drop', 'baseline', 'pulse_oximetry',
 '[{"metric": "spo2", "op": ">=", "value": 4}]',
 '{"measure": "drop_below_median", "window_days": 7, "min_days": 3, "min_readings": 6}',
 'warning', 1, 2, 720,
 'SpO2 >= 4 points below the patient''s own 7-day median',
 'specs/clinical-thresholds.md (drop below own baseline); BTS guideline for oxygen use 2017'),
('oximeter_pulse_abnormal', 'threshold', 'pulse_oximetry',
 '[{"metric": "spo2_pulse_rate", "op": "<", "value": 40}, {"metric": "spo2_pulse_rate", "op": ">", "value": 130}]',
 '{}', 'warning', 5, 1, 120, 'Oximeter pulse rate < 40 or > 130 /min',
 'Resting adult heart rate 60-100 /min (the resting heart-rate rules)'),
('oximeter_pulse_critical', 'threshold', 'pulse_oximetry',
 '[{"metric": "spo2_pulse_rate", "op": "<", "value": 30}, {"metric": "spo2_pulse_rate", "op": ">", "value": 150}]',
 '{}', 'critical', 5, 1, 120, 'Oximeter pulse rate < 30 or > 150 /min',
 'Resting adult heart rate 60-100 /min (the resting heart-rate rules)'),
('fever', 'threshold', 'body_temperature',
 '[{"metric": "body_temperature", "op": ">=", "value": 38.0}]', '{}',
 'warning', 0.3, 1, 720,
 'Fever: body temperature >= 38.0 Cel (after chemotherapy: override severity to critical)',
 'NEWS2 temperature bands (RCP 2017); febrile neutropenia guidance for the chemotherapy override'),
('fever_high', 'threshold', 'body_temperature',
 '[{"metric": "body_temperature", "op": ">=", "value": 39.5}]', '{}',
 'critical', 0.3, 1, 720, 'High fever: body temperature >= 39.5 Cel', 'NEWS2 temperature bands (RCP 2017)'),
('hypothermia', 'threshold', 'body_temperature',
 '[{"metric": "body_temperature", "op": "<=", "value": 35.0}]', '{}',
 'critical', 0.3, 1, 720, 'Hypothermia: body temperature <= 35.0 Cel', 'NEWS2 temperature bands (RCP 2017)');
