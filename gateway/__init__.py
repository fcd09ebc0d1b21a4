"""Home gateway: device codecs and drivers, outbox and uplink."""

__version__ = "0.1.0"
