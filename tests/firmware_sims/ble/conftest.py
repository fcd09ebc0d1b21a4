"""Every simulator test starts with nothing on the simulated radio (the fixture is shared with the gateway's
BLE tests)."""

from tests.gateway.ble_support import empty_air  # noqa: F401 (an autouse fixture)
