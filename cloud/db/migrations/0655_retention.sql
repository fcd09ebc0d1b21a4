-- Retention (cloud/db/retention.py) deletes readings older than RPM_RETENTION_DAYS. Days with data
-- (programme_device_days, 0620) are the evidence behind billed programme periods: they are kept when the
-- readings behind them go. 0620's delete trigger recounts a patient's days from the readings left, which
-- would erase those days and, once per batch, rebuild every day of every patient in it; a retention pass
-- marks its transactions with the setting rpm.retention_pass, and the trigger leaves the days alone there.
-- Any other delete of readings recounts as before.
CREATE OR REPLACE FUNCTION programme_days_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('rpm.retention_pass', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM programme_days_rebuild(t.patient_id, t.devices)
       FROM (SELECT patient_id, array_agg(DISTINCT device_uid) AS devices FROM changed_rows
              WHERE patient_id IS NOT NULL GROUP BY patient_id ORDER BY patient_id) AS t;
    RETURN NULL;
END $$;

-- Dead letters are deleted by received_at in batches (dead_letters_time serves it); readings go by
-- patient through readings_patient_time, observations by reading id (observations_reading): no new index
-- on the ingest path.
