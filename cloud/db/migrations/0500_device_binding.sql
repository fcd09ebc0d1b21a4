-- Devices are bound to gateways; reading ids carry their content's hash; security events.
--
-- * devices.bound_gateway_id: the gateway a device speaks through. Set by ingest on first contact
--   (an unbound device is bound to the gateway that sent it, in the storing transaction) and moved
--   only by cloud.db.binding.rebind_device (`rpm-cloud rebind`), which writes an audit_log row. A
--   reading for a device bound to another gateway is refused. devices.gateway_id stays what it was:
--   the gateway the device was last seen through.
--   Backfill: devices already seen are bound to the gateway they were last seen through. Where an
--   impostor was the last to send before this migration, `rpm-cloud rebind` corrects it (audited).
-- * readings.content_sha: the hash of what makes a record that record (cloud.ingest.identity), so a
--   reading id offered again with other content is told apart from a replay. NULL for rows stored
--   before this migration: their replays are accepted as before (no judgement possible).
-- * security_events: one row per refused attempt (a foreign device, an id conflict) with the details
--   an operator needs; the refused reading's bytes and reason go to dead_letters too, like every
--   refused input. A separate table, not a dead_letters category: its readers (operations, security
--   review, a counter or alert) ask "who tried what against which device", and keep it longer.
ALTER TABLE devices
    ADD COLUMN bound_gateway_id text,
    ADD COLUMN bound_at         timestamptz,
    ADD COLUMN bound_by         text;

UPDATE devices
   SET bound_gateway_id = gateway_id, bound_at = last_seen, bound_by = 'migration 0500: last gateway seen'
 WHERE gateway_id IS NOT NULL AND bound_gateway_id IS NULL;

ALTER TABLE readings ADD COLUMN content_sha text;

CREATE TABLE security_events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL CHECK (kind IN ('foreign_device', 'id_conflict')),
    gateway_id text,                        -- the gateway whose message it was (the topic's, authenticated)
    device_uid text,
    reading_id text,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX security_events_time ON security_events (at DESC);
CREATE INDEX security_events_device ON security_events (device_uid, at DESC);
