"""Cloud ingest: MQTT consumer, validation, batch writer, dead letters, acks (``rpm-cloud ingest``)."""
