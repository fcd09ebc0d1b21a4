-- Writes through the API (and `rpm-cloud assign`) are audited with what they changed: a device
-- moved between patients names the device, the user index and every patient whose assignment it
-- closed or overrode. Kept beside the row, not in action, so the action stays the route template
-- that groups requests. Shown in the administrators' log only: it can name other patients.
ALTER TABLE audit_log ADD COLUMN detail jsonb;
