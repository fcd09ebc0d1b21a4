"""Wire-format codecs: pure functions from a device's bytes to a decoded :class:`Measurement`.

Stdlib only, no I/O. Every failure raises a :class:`~gateway.codecs.common.DecodeError` subclass that
names the field and byte offset.
"""

from gateway.codecs.common import ChecksumError, DecodeError, InvalidFieldError, Measurement, Quantity, TruncatedError

__all__ = ["ChecksumError", "DecodeError", "InvalidFieldError", "Measurement", "Quantity", "TruncatedError"]
