"""What a BLE advertisement tells about a health device before anyone connects to it: who made it and,
for the makers whose advertisements say so, how many users it keeps apart.

Nothing here connects: a candidate is described from its advertisement alone (a device nobody has
confirmed is never connected).
"""

from __future__ import annotations

from collections.abc import Mapping

OMRON_HEALTHCARE = 0x020E
COMPANIES: dict[int, str] = {OMRON_HEALTHCARE: "Omron Healthcare"}
"""Bluetooth SIG company identifiers of health-device makers we can name (Assigned Numbers, section
"Company Identifiers"); an unknown one leaves the make empty rather than guessing."""


def make_from(manufacturer_data: Mapping[int, bytes]) -> str | None:
    return next((COMPANIES[company] for company in manufacturer_data if company in COMPANIES), None)


def user_slots_from(manufacturer_data: Mapping[int, bytes]) -> int | None:
    """The number of users an Omron cuff or scale advertises: its manufacturer data (after the company
    id, which bleak strips) starts with data type 0x01 ("each user data") and a flags byte whose two low
    bits are users - 1 (as Omron's own apps and the Stanford Spezi Omron module read it)."""
    data = manufacturer_data.get(OMRON_HEALTHCARE)
    if data is None or len(data) < 2 or data[0] != 0x01:
        return None
    return (data[1] & 0x03) + 1
