"""Simulated Bluetooth LE health peripherals, their byte encoders and a bleak backend over them.

Encoders are written from the Bluetooth SIG specifications on their own (``specs/ble-gatt.md``); this
package never imports the gateway's codecs or drivers, so a round trip through both is a real check.
"""
