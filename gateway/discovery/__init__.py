"""Finding devices: BLE scanning and USB port watching, the enrolment store, scan and pair."""
