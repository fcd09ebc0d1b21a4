"""The one MQTT adapter (paho-mqtt 2), shared by the gateway's uplink and the cloud like the contract.

- :mod:`gateway.mqtt.broker`: where the broker is (:class:`~gateway.mqtt.broker.BrokerAddress` from an
  ``mqtt://`` / ``mqtts://`` URL) and the TLS material each side fills in
  (:class:`~gateway.mqtt.broker.TlsOptions`); stdlib only, so configuration modules import it freely.
- :mod:`gateway.mqtt.client`: building and connecting paho clients (client id, persistent session,
  session expiry, MQTT 5 or 3.1.1, credentials, TLS), the v5 probe, and the broker's Receive Maximum.
- :mod:`gateway.mqtt.paho_private`: the only module that touches paho's private attributes, behind a
  check of paho's version.
- :mod:`gateway.mqtt.backoff`: the one exponential backoff (reconnects, restarts, retries).

Callers keep their policy (what to subscribe, when to fall back, what to do on a refusal); this
package knows how to talk to paho. Nothing is imported here, so importing the backoff or the address
does not load paho.
"""
