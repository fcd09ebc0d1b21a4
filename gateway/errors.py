"""The gateway's exceptions: one root, :class:`GatewayError`, that every error the gateway defines derives
from, so a boundary catches the gateway's own failures in one clause (``rpm-gateway`` turns one that a
command leaves unhandled into one line on stderr).

``GatewayError`` is defined in :mod:`gateway.codecs.common`, at the bottom of the gateway's layers,
because codecs may import only codecs and the metric catalogue; drivers import it from there too.
Everything above them imports it from here. The families, each defined where it is raised:

- decoding a frame: :class:`~gateway.codecs.common.DecodeError` (truncated, invalid field, checksum,
  no reading, unknown model or profile);
- device sessions: ``gateway.drivers.base.DriverError`` (timeout, disconnected, connect, serial open,
  protocol, RACP, ANT+ configuration);
- configuration: ``gateway.config.ConfigError``, ``gateway.discovery.ble_config.BackendLoadError``,
  ``gateway.discovery.usb_devices.UnknownDeviceProfileError``, ``gateway.runtime.DriverLoadError``;
- store and forward: ``gateway.store.outbox.OutboxError``, ``gateway.store.disk.StorageError``,
  ``gateway.store.uplink.UplinkError``, ``gateway.runtime.GatewayFailed``;
- the MQTT adapter (shared with the cloud): ``gateway.mqtt.broker.MqttSetupError``.

The metric catalogue's ``UnknownUnitError`` stays a plain ``ValueError``: the catalogue imports the
standard library only (the codecs import it, and the cloud shares it).
"""

from __future__ import annotations

from gateway.codecs.common import DecodeError, GatewayError

__all__ = ["DecodeError", "GatewayError"]
