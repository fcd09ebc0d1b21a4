"""The demo's story: a few patients, their devices, and a compressed week of readings.

All times are in the real past week (the devices' clocks are right), so alerts on the last day are
current and page; what is compressed is how fast the week's readings reach the gateway.

- Ana Souza has a BLE blood-pressure cuff she shares with her husband (user 2, never assigned: his
  readings wait in the unassigned queue, they never show in Ana's record). On the last afternoon her
  pressure climbs into a hypertensive crisis, then comes back down: the alert opens once and resolves.
- Ben Okafor (heart failure) steps on a BLE scale each morning and gains almost 3 kg over the week:
  the 7-day weight-gain rule fires.
- Chloe Martin (type 2 diabetes) has a USB glucose meter (ASTM, Contour-style) and a USB TaiDoc BP
  monitor; one low glucose on day 4 opens a hypoglycaemia alert that the next normal value resolves.
- Dara Nwosu, home after pneumonia, wears a BLE pulse oximeter at night and takes her temperature
  with a BLE thermometer (it speaks Fahrenheit; the record shows Celsius). On the fifth evening she
  runs a fever (38.6 °C) that is gone the next morning; on the last night her SpO2 falls to 89 % in
  the small hours, below the usual 94-98 % target: one low-saturation alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

DAYS = 7


@dataclass(frozen=True)
class Patient:
    id: str
    name: str
    sex: str
    birth_date: str


@dataclass(frozen=True)
class DemoDevice:
    key: str
    label: str
    transport: str
    profile: str
    patient_id: str | None
    user_index: int | None
    uid: str


@dataclass
class DayPlan:
    """What each device measures on one day (records as the simulators take them)."""

    bp: list[dict] = field(default_factory=list)
    weight: list[dict] = field(default_factory=list)
    astm: list[tuple[datetime, float]] = field(default_factory=list)
    taidoc: list[tuple[datetime, int, int, int]] = field(default_factory=list)
    spo2: list[dict] = field(default_factory=list)
    temperature: list[dict] = field(default_factory=list)


PATIENTS = (
    Patient("pt-ana", "Ana Souza", "female", "1956-04-11"),
    Patient("pt-ben", "Ben Okafor", "male", "1949-09-30"),
    Patient("pt-chloe", "Chloe Martin", "female", "1968-01-22"),
    Patient("pt-dara", "Dara Nwosu", "female", "1961-07-03"),
)
CARE_TEAM = ("ct-demo", "Demo cardiometabolic team")
CLINICIAN = "dr-demo"

CUFF_ADDRESS = "D3:00:00:00:0A:01"
SCALE_ADDRESS = "D3:00:00:00:0B:01"
ASTM_SERIAL = "7390-2211001"
TAIDOC_SERIAL = "3128DE0000C10E01"
OXIMETER_ADDRESS = "D3:00:00:00:0C:01"
THERMOMETER_ADDRESS = "D3:00:00:00:0D:01"


def devices() -> tuple[DemoDevice, ...]:
    return (
        DemoDevice("cuff", "BLE BP cuff (Ana, user 1)", "ble", "ble.blood_pressure", "pt-ana", 1,
                   f"ble:{CUFF_ADDRESS}"),
        DemoDevice("cuff-u2", "BLE BP cuff (user 2, unassigned)", "ble", "ble.blood_pressure", None, 2,
                   f"ble:{CUFF_ADDRESS}"),
        DemoDevice("scale", "BLE scale (Ben)", "ble", "ble.weight_scale", "pt-ben", 1, f"ble:{SCALE_ADDRESS}"),
        DemoDevice("astm", "USB glucose meter (Chloe)", "usb", "serial.astm", "pt-chloe", None,
                   f"usb:0000:0000:{ASTM_SERIAL}"),
        DemoDevice("taidoc", "USB TaiDoc BP monitor (Chloe)", "usb", "serial.taidoc", "pt-chloe", None,
                   f"usb:0000:0000:{TAIDOC_SERIAL}"),
        DemoDevice("oximeter", "BLE pulse oximeter (Dara)", "ble", "ble.pulse_oximeter", "pt-dara", None,
                   f"ble:{OXIMETER_ADDRESS}"),
        DemoDevice("thermometer", "BLE thermometer (Dara)", "ble", "ble.thermometer", "pt-dara", None,
                   f"ble:{THERMOMETER_ADDRESS}"),
    )


def week(now: datetime) -> list[DayPlan]:
    """Seven days of readings ending now (naive local times, as the devices' clocks show them)."""
    now = now.replace(second=0, microsecond=0)
    plans = []
    weights = [80.0, 80.2, 80.5, 81.0, 81.5, 82.1, 82.9]
    glucose = [[112, 164, 131], [98, 171, 125], [104, 158, 119], [62, 109, 142], [101, 166, 128],
               [95, 152, 117], [108, 149, 122]]
    for day in range(DAYS):
        base = now - timedelta(days=DAYS - 1 - day)
        plan = DayPlan()
        morning, evening = base - timedelta(hours=11), base - timedelta(hours=2)
        if day < DAYS - 1:
            for when, systolic, diastolic in ((morning, 132 + day, 84), (evening, 128 + day, 82)):
                plan.bp.append(_bp(when, systolic, diastolic, 70 + day, user=1))
        else:
            # The last afternoon: a crisis, a repeat, then back below the margin twice.
            for offset, systolic, diastolic, pulse in ((5 * 60, 186, 118, 88), (4 * 60, 192, 124, 91),
                                                       (150, 146, 92, 76), (90, 134, 86, 72), (40, 128, 82, 70)):
                plan.bp.append(_bp(now - timedelta(minutes=offset), systolic, diastolic, pulse, user=1))
        plan.bp.append(_bp(morning + timedelta(minutes=20), 121, 79, 64, user=2))
        # Ben weighs himself on waking; on the last day the demo starts late morning, so 3 h ago.
        weighed = morning - timedelta(minutes=30) if day < DAYS - 1 else now - timedelta(hours=3)
        plan.weight.append({"weight": weights[day], "user_id": 1, "timestamp": weighed.isoformat()})
        for offset, value in zip((10.5, 6, 1.5), glucose[day], strict=True):
            plan.astm.append((base - timedelta(hours=offset), value))
        plan.taidoc.append((morning + timedelta(minutes=5), 138 - day, 86, 68))
        plan.spo2.extend(_night(base, low=day == DAYS - 1))
        # Morning and evening temperatures in °F, as the thermometer sends them; a fever on day 5's evening.
        plan.temperature.append({"value": 98.1, "timestamp": (morning + timedelta(minutes=10)).isoformat(), "site": 6})
        evening_f = 101.5 if day == 4 else 98.6
        plan.temperature.append({"value": evening_f, "timestamp": (evening + timedelta(minutes=15)).isoformat(),
                                 "site": 6})
        plans.append(plan)
    return plans


def _night(base: datetime, *, low: bool) -> list[dict]:
    """The oximeter's six hourly spot-checks of the night before ``base``'s morning reading (``base``
    minus 11 h), the first 16 h before ``base``; the last night dips to 89 %."""
    start = base - timedelta(hours=16)
    values = (93, 91, 90, 89, 90, 92) if low else (96, 95, 95, 96, 95, 96)
    return [{"spo2": value, "pulse_rate": 68 + n, "timestamp": (start + timedelta(hours=n)).isoformat()}
            for n, value in enumerate(values)]


def _bp(when: datetime, systolic: int, diastolic: int, pulse: int, *, user: int) -> dict:
    mean_arterial = round(diastolic + (systolic - diastolic) / 3)
    return {"systolic": systolic, "diastolic": diastolic, "mean_arterial": mean_arterial, "pulse": pulse,
            "user_id": user, "timestamp": when.isoformat()}
