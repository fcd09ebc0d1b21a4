"""Device sessions over a transport (bleak for BLE, pyserial for USB). Drivers never parse bytes:
they call codecs, and hand each decoded measurement to a :class:`~gateway.drivers.base.MeasurementSink`."""
