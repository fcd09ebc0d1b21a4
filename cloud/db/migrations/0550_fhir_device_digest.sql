-- /fhir/Device/{id} names a device by a digest of its uid: index that digest so reading one Device is an
-- index lookup, not a hash of every device's uid. text::bytea is the uid's bytes in the database
-- encoding (UTF8 here, as cloud/api/queries.py's _DIGEST assumes), and every function is immutable.
CREATE INDEX IF NOT EXISTS devices_fhir_digest ON devices ((left(encode(sha256(uid::bytea), 'hex'), 32)));
CREATE INDEX IF NOT EXISTS devices_fhir_gateway_digest
    ON devices ((left(encode(sha256(bound_gateway_id::bytea), 'hex'), 32))) WHERE bound_gateway_id IS NOT NULL;
