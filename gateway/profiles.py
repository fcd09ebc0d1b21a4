"""The device-profile table: every kind of device the gateway reads, each described once.

A :class:`DeviceProfile` names the transport, how discovery recognises the device (the BLE service
it advertises, or the USB products: ids, product-string pattern, line settings), the codec entries
``rpm-gateway decode`` offers for its frames, and the driver that runs a session with it. BLE
discovery, the USB device table (:mod:`gateway.discovery.usb_devices`), ``rpm-gateway scan`` and
``rpm-gateway decode`` all read this table, by plain imports; what differs between devices is an
option here, never a comparison with a profile name somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.codecs import ad_scale, ant, astm, glucose, taidoc
from gateway.codecs import blood_pressure as blood_pressure_codec
from gateway.codecs import heart_rate as heart_rate_codec
from gateway.codecs import pulse_oximeter as pulse_oximeter_codec
from gateway.codecs import thermometer as thermometer_codec
from gateway.codecs import weight_scale as weight_scale_codec
from gateway.codecs.common import Measurement
from gateway.drivers import blood_pressure, glucose_meter, heart_rate, pulse_oximeter, thermometer, weight_scale
from gateway.drivers.ant_heart_rate import AntHeartRateDriver
from gateway.drivers.astm_meter import AstmMeterDriver
from gateway.drivers.base import SerialSession, SessionDriver
from gateway.drivers.hidraw import ContourHidLink, Cp2110Link
from gateway.drivers.serial_port import SerialLink
from gateway.drivers.serial_scale import SerialScaleDriver
from gateway.drivers.taidoc import TaidocDriver

Transport = Literal["ble", "usb"]


@dataclass(frozen=True, slots=True)
class CodecEntry:
    """One frame type ``rpm-gateway decode --profile NAME`` decodes."""

    name: str
    decode: Callable[..., Measurement]
    """Frame bytes in, a Measurement out (or a DecodeError)."""
    takes_model: bool = False
    """The frame's layout depends on the device model: ``decode(data, model=...)``."""


@dataclass(frozen=True, slots=True)
class BleMatch:
    """An advertisement matches when it lists one of these services (128-bit UUIDs, lower case)."""

    service_uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UsbProduct:
    """One USB serial product: how its port is recognised and the line it speaks by default."""

    name: str
    vid: int | None = None
    pid: int | None = None
    description: str | None = None
    """A case-insensitive regular expression searched in the port's description/product/manufacturer,
    for bridge chips whose ids are shared by many products."""
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    link: type[SerialLink] | None = None
    """How its bytes travel: HID reports on a hidraw node (``ContourHidLink``, ``Cp2110Link``), or (None)
    a serial port; the driver's session is the same either way."""


@dataclass(frozen=True, slots=True)
class UsbMatch:
    products: tuple[UsbProduct, ...]


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str
    transport: Transport
    match: BleMatch | UsbMatch
    codecs: tuple[CodecEntry, ...]
    """The frames ``rpm-gateway decode`` takes for this device, its own measurement first."""
    driver: SessionDriver[Any]
    """``await driver(ctx)``: a BLE driver gets a connected ``BleContext``, a serial one a ``SerialContext``."""
    cooldown_after_session: bool = True
    """BLE: leave the device alone for ``[ble] session_cooldown_s`` after a good session (cuffs keep
    advertising once their memory is sent). A strap streams: it is reconnected at once."""
    needs_ant_network_key: bool = False
    """The driver takes ``[usb] ant_network_key`` as its ``network_key`` option."""
    keeps_records: bool = True
    """The device keeps what it sent in its memory, so a reading the outbox refused is read again
    later; False for live streams (a strap, a scale's running weight), whose refused readings are lost."""

    @property
    def service_uuids(self) -> tuple[str, ...]:
        return self.match.service_uuids if isinstance(self.match, BleMatch) else ()

    @property
    def usb_products(self) -> tuple[UsbProduct, ...]:
        return self.match.products if isinstance(self.match, UsbMatch) else ()


PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        name=blood_pressure.PROFILE,
        transport="ble",
        match=BleMatch((blood_pressure.SERVICE_UUID,)),
        codecs=(
            CodecEntry(blood_pressure_codec.PROFILE, blood_pressure_codec.decode_measurement),
            CodecEntry(
                blood_pressure_codec.INTERMEDIATE_PROFILE, blood_pressure_codec.decode_intermediate_cuff_pressure
            ),
        ),
        driver=blood_pressure.run_session,
    ),
    DeviceProfile(
        name=glucose_meter.PROFILE,
        transport="ble",
        match=BleMatch((glucose_meter.SERVICE_UUID,)),
        codecs=(CodecEntry(glucose.PROFILE, glucose.decode_measurement),),
        driver=glucose_meter.run_session,
    ),
    DeviceProfile(
        name=weight_scale.PROFILE,
        transport="ble",
        match=BleMatch((weight_scale.SERVICE_UUID,)),
        codecs=(CodecEntry(weight_scale_codec.PROFILE, weight_scale_codec.decode_measurement),),
        driver=weight_scale.run_session,
    ),
    DeviceProfile(
        name=heart_rate.PROFILE,
        transport="ble",
        match=BleMatch((heart_rate.SERVICE_UUID,)),
        codecs=(CodecEntry(heart_rate_codec.PROFILE, heart_rate_codec.decode_measurement),),
        driver=heart_rate.run_session,
        cooldown_after_session=False,
        keeps_records=False,
    ),
    DeviceProfile(
        name=pulse_oximeter.PROFILE,
        transport="ble",
        match=BleMatch((pulse_oximeter.SERVICE_UUID,)),
        codecs=(
            CodecEntry(pulse_oximeter_codec.SPOT_CHECK_PROFILE, pulse_oximeter_codec.decode_spot_check),
            CodecEntry(pulse_oximeter_codec.CONTINUOUS_PROFILE, pulse_oximeter_codec.decode_continuous),
        ),
        driver=pulse_oximeter.run_session,
    ),
    DeviceProfile(
        name=thermometer.PROFILE,
        transport="ble",
        match=BleMatch((thermometer.SERVICE_UUID,)),
        codecs=(
            CodecEntry(thermometer_codec.PROFILE, thermometer_codec.decode_measurement),
            CodecEntry(thermometer_codec.INTERMEDIATE_PROFILE, thermometer_codec.decode_intermediate_temperature),
        ),
        driver=thermometer.run_session,
    ),
    DeviceProfile(
        name=AstmMeterDriver.profile,
        transport="usb",
        # Ascensia (Bayer) Contour meters with a USB serial (CDC) interface and Bayer's serial cables:
        # ASTM E1381/E1394 at 9600 8N1 (CDC ignores the rate). The Contour USB meters enumerate as HID
        # devices: the same ASTM transfer in 64-byte reports on a hidraw node (ids as glucometerutils and
        # contourpp list them).
        match=UsbMatch(
            (
                UsbProduct("Ascensia/Bayer Contour (serial)", vid=0x1A79),
                UsbProduct("Bayer Contour USB (HID)", vid=0x1A79, pid=0x6002, link=ContourHidLink),
                UsbProduct("Ascensia Contour Next USB (HID)", vid=0x1A79, pid=0x7410, link=ContourHidLink),
                UsbProduct("Ascensia Contour Next ONE (HID)", vid=0x1A79, pid=0x7800, link=ContourHidLink),
            )
        ),
        codecs=(CodecEntry(astm.PROFILE, astm.decode_frame_reading),),
        driver=SerialSession(AstmMeterDriver),
    ),
    DeviceProfile(
        name=SerialScaleDriver.profile,
        transport="usb",
        # A&D weighing indicators and scales behind an FTDI FT232R bridge: the ids are FTDI's, shared with
        # thousands of products, so the USB product string must name A&D. 2400 baud 7E1 is A&D's default.
        match=UsbMatch(
            (
                UsbProduct(
                    "A&D scale (FTDI bridge)",
                    vid=0x0403,
                    pid=0x6001,
                    description=r"\bA ?& ?D\b|\bAND\b|A&D",
                    baudrate=2400,
                    bytesize=7,
                    parity="E",
                ),
            )
        ),
        codecs=(CodecEntry(ad_scale.PROFILE, ad_scale.decode_line_reading),),
        driver=SerialSession(SerialScaleDriver),
        keeps_records=False,
    ),
    DeviceProfile(
        name=AntHeartRateDriver.profile,
        transport="usb",
        # Garmin/Dynastream ANT USB sticks. The ANTUSB2 and ANTUSB-m are bound by Linux's usb-serial-simple
        # driver (ttyUSBn) at 115200; the original ANTUSB stick is a CP210x bridge at 57600.
        match=UsbMatch(
            (
                UsbProduct("Dynastream ANTUSB2", vid=0x0FCF, pid=0x1008, baudrate=115200),
                UsbProduct("Dynastream ANTUSB-m", vid=0x0FCF, pid=0x1009, baudrate=115200),
                UsbProduct("Dynastream ANTUSB (CP210x)", vid=0x0FCF, pid=0x1004, baudrate=57600),
            )
        ),
        codecs=(CodecEntry(ant.PROFILE, ant.decode_message_reading),),
        driver=SerialSession(AntHeartRateDriver),
        needs_ant_network_key=True,
        keeps_records=False,
    ),
    DeviceProfile(
        name=TaidocDriver.profile,
        transport="usb",
        # TaiDoc (FORA) BP monitors and 2-in-1 meters: Silicon Labs CP2110 bridge at 19200 8N1. The
        # driver asks for the model first and reads nothing from a device it does not know. Mainline Linux
        # has no tty driver for the CP2110: it is a hidraw node, the UART set up through feature reports
        # (the tty entry serves out-of-tree drivers and serial adapters with the same ids).
        match=UsbMatch(
            (
                UsbProduct("TaiDoc/FORA meter (CP2110)", vid=0x10C4, pid=0xEA80, baudrate=19200),
                UsbProduct("TaiDoc/FORA meter (CP2110 HID)", vid=0x10C4, pid=0xEA80, baudrate=19200, link=Cp2110Link),
            )
        ),
        codecs=(CodecEntry(taidoc.PROFILE, taidoc.decode_frame_reading, takes_model=True),),
        driver=SerialSession(TaidocDriver),
    ),
)

BLE_PROFILES: Mapping[str, DeviceProfile] = {p.name: p for p in PROFILES if p.transport == "ble"}
USB_PROFILES: Mapping[str, DeviceProfile] = {p.name: p for p in PROFILES if p.transport == "usb"}
CODECS: Mapping[str, CodecEntry] = {entry.name: entry for profile in PROFILES for entry in profile.codecs}
"""Every ``rpm-gateway decode --profile`` name."""
