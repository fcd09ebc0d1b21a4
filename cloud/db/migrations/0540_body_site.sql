-- Where on the body a reading was measured, as the device says it (a thermometer's Temperature Type,
-- HTS 3.1.1.3): the FHIR Observation's bodySite (issue 24). NULL where the device says nothing.
ALTER TABLE readings ADD COLUMN IF NOT EXISTS body_site text;
