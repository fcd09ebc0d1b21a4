"""From a device record to a contract Reading: normalisation, the intake (quarantine), decode."""
