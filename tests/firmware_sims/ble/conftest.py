"""Make ``firmware_sims`` and ``gateway`` resolve to the repository's packages, not tests/ folders.

tests/ is on sys.path (the rootdir conftest) and holds folders named firmware_sims/ and gateway/
without __init__.py, so "import firmware_sims.ble" would find the namespace tests/firmware_sims/ble
before the editable install's finder is asked. Put the repository first and drop any namespace
package imported by mistake (the same fix tests/cloud/alerts/conftest.py makes for ``cloud``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[3])
if sys.path[0] != _REPO:
    sys.path.insert(0, _REPO)
for _name in [n for n in sys.modules if n.split(".")[0] in ("firmware_sims", "gateway")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]


import pytest  # noqa: E402 - after the sys.path repair above, on purpose

from firmware_sims.ble.air import AIR, SCENARIO_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def empty_air(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with nothing on the simulated radio and no scenario file."""
    monkeypatch.delenv(SCENARIO_ENV, raising=False)
    AIR.clear()
    yield AIR
    AIR.clear()
