"""A bleak backend over the simulated air: pass ``backend=SimBleakScanner`` / ``backend=SimBleakClient``
to ``bleak.BleakScanner`` / ``bleak.BleakClient`` and unmodified bleak code talks to simulated devices.

The gateway loads this module lazily (``[ble] backend = "sim"`` or ``"firmware_sims.ble.backend"``)
and reads ``scanner_backend`` and ``client_backend`` from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from firmware_sims.ble.air import AIR
from firmware_sims.ble.gatt import GattError, Link, Peripheral

log = logging.getLogger(__name__)

CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
# How often an advertising peripheral is heard (real devices: 20 ms to 10 s; fast keeps tests quick).
ADVERTISING_INTERVAL_S = 0.05


class SimBleakScanner(BaseBleakScanner):
    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        self._hear_all()
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        while True:
            await asyncio.sleep(ADVERTISING_INTERVAL_S)
            self._hear_all()

    def _hear_all(self) -> None:
        for peripheral in AIR.peripherals():
            # A connected peripheral stops advertising, as BLE peripherals with one link do.
            if not peripheral.advertising or (peripheral.link is not None and peripheral.link.connected):
                continue
            services = peripheral.advertised_services()
            if not self.is_allowed_uuid(services):
                continue
            adv = AdvertisementData(
                local_name=peripheral.name,
                manufacturer_data={},
                service_data={},
                service_uuids=services,
                tx_power=None,
                rssi=peripheral.rssi,
                platform_data=(),
            )
            device = self.create_or_update_device(peripheral.address, peripheral.address, peripheral.name,
                                                  peripheral, adv)
            self.call_detection_callbacks(device, adv)


class SimBleakClient(BaseBleakClient):
    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._link: Link | None = None
        self._peripheral: Peripheral | None = None
        self._callbacks: dict[str, NotifyCallback] = {}
        self._name = address_or_ble_device.name if isinstance(address_or_ble_device, BLEDevice) else None

    @property
    def name(self) -> str:
        return self._name or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._link is not None and self._link.connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        peripheral = AIR.get(self.address)
        if peripheral is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        loop = asyncio.get_running_loop()
        link = Link(peripheral, self._deliver, lambda: loop.call_soon(self._dropped))
        try:
            async with asyncio.timeout(self._timeout):
                await peripheral.accept(link)
        except TimeoutError:
            raise TimeoutError(f"connecting to {self.address} timed out") from None
        except ConnectionRefusedError as err:
            raise BleakError(f"failed to connect to {self.address}: {err}") from None
        self._link = link
        self._peripheral = peripheral
        self._name = peripheral.name
        self.services = self._build_services(peripheral)

    async def disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close_by_central()
        self._callbacks.clear()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Just Works pairing: nothing to exchange in the simulation."""

    async def unpair(self) -> None:
        await self.disconnect()

    def _dropped(self) -> None:
        was_ours = self._link is not None
        self._link = None
        self._callbacks.clear()
        if was_ours and self._disconnected_callback is not None:
            self._disconnected_callback()

    def _deliver(self, uuid: str, data: bytes) -> None:
        callback = self._callbacks.get(uuid)
        if callback is not None:
            # Delivered on a later loop turn, as a radio stack's event would be.
            asyncio.get_running_loop().call_soon(callback, bytearray(data))

    def _build_services(self, peripheral: Peripheral) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        handle = 1
        for service in peripheral.gatt_table():
            bleak_service = BleakGATTService(service, handle, service.uuid)
            collection.add_service(bleak_service)
            handle += 1
            for characteristic in service.characteristics:
                bleak_char = BleakGATTCharacteristic(
                    characteristic, handle + 1, characteristic.uuid, list(characteristic.properties),  # type: ignore[arg-type]
                    lambda: 20, bleak_service,
                )
                collection.add_characteristic(bleak_char)
                handle += 2
                if {"notify", "indicate"} & set(characteristic.properties):
                    collection.add_descriptor(BleakGATTDescriptor(None, handle, CCCD_UUID, bleak_char))
                    handle += 1
        return collection

    def _require(self) -> tuple[Link, Peripheral]:
        if self._link is None or not self._link.connected or self._peripheral is None:
            raise BleakError("Not connected")
        return self._link, self._peripheral

    async def _op(self, coro: Any) -> Any:
        link, _ = self._require()
        try:
            result = await coro
        except GattError as err:
            raise BleakGATTProtocolError(err.code) from err
        if not link.connected:
            raise BleakError("Not connected")
        return result

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False,
                             **kwargs: Any) -> bytearray:
        _, peripheral = self._require()
        return bytearray(await self._op(peripheral.read(characteristic.uuid)))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False,
                                   **kwargs: Any) -> bytearray:
        link, _ = self._require()
        enabled = descriptor.characteristic_uuid in link.subscriptions
        return bytearray(b"\x01\x00" if enabled else b"\x00\x00")

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer,
                              response: bool) -> None:
        _, peripheral = self._require()
        await self._op(peripheral.write(characteristic.uuid, bytes(data)))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        raise BleakError("write the CCCD through start_notify/stop_notify")

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback,
                           **kwargs: Any) -> None:
        link, peripheral = self._require()
        self._callbacks[characteristic.uuid] = callback
        await self._op(peripheral.subscribe(link, characteristic.uuid))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        link, peripheral = self._require()
        self._callbacks.pop(characteristic.uuid, None)
        await self._op(peripheral.unsubscribe(link, characteristic.uuid))


scanner_backend = SimBleakScanner
client_backend = SimBleakClient
