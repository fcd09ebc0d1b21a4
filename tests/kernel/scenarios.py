"""What the BlueZ kernel tests share: the guest script that serves a simulated peripheral on hci1 while
the gateway's central (``tests/kernel/guest/gateway_central.py``) runs on hci0, one session's command,
the files a run leaves, and the glucose meter most scenarios use."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.kernel.harness import GuestResult, run_in_guest

CENTRAL = "python tests/kernel/guest/gateway_central.py $ADDRESS"
# RPM_KERNEL_VERBOSE=1 logs every D-Bus call the peripheral gets and bleak's D-Bus traffic.
GUEST_ENV = {"PERIPHERAL_ARGS": "--verbose", "CENTRAL_ARGS": "--debug"} if os.environ.get("RPM_KERNEL_VERBOSE") else {}


def glucose_record(sequence: int, minute: int, mg_dl: int) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "base_time": f"2026-01-01T08:{minute:02d}:00",
        "concentration": mg_dl / 100_000,  # kg/L: 100 mg/dL is 0.001 kg/L
        "unit": "kg/L",
    }


def guest_script(spec: dict[str, Any], steps: str) -> str:
    """Start the peripheral on hci1, wait until it advertises, run ``steps`` (with $ADDRESS and $P, the
    peripheral's pid), then stop the peripheral so it writes its report."""
    return f"""
set -u
R=$RPM_RESULTS
cat > $R/peripheral.json <<'JSON'
{json.dumps(spec)}
JSON
python -m firmware_sims.ble.bluez_peripheral --scenario $R/peripheral.json --adapter hci1 \\
  --ready $R/ready.json --report $R/report.json --passkey-file $R/passkey ${{PERIPHERAL_ARGS:-}} \\
  > $R/peripheral.log 2>&1 &
P=$!
for i in $(seq 100); do [ -s $R/ready.json ] && break; sleep 0.1; done
ADDRESS=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' $R/ready.json)
bonds() {{ grep -l 'LongTermKey\\]' /var/lib/bluetooth/*/*/info 2>/dev/null | wc -l; }}
rc=0
{steps}
kill -TERM $P; wait $P
cp /var/log/bluetoothd.log $R/ 2>/dev/null
exit $rc
"""


def lines(result: GuestResult, name: str) -> list[dict[str, Any]]:
    path = result.results / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(result: GuestResult, name: str) -> dict[str, Any]:
    return json.loads((result.results / name).read_text())


def explain(result: GuestResult) -> str:
    parts = []
    for name in ("central1.log", "central2.log", "peripheral.log"):
        path: Path = result.results / name
        if path.exists():
            parts.append(f"--- {name} ---\n{path.read_text()[-3000:]}")
    return "\n".join(parts)


GLUCOSE_METER = {
    "type": "glucose",
    "address": "C0:FF:EE:00:00:02",
    "name": "SIM-GLUCO meter",
    "serial": "GL-0002",
    "security": "encrypt",
    "records": [glucose_record(i, i, 90 + 7 * i) for i in range(1, 6)],
    "later_records": [glucose_record(i, i, 90 + 7 * i) for i in range(6, 9)],
}


def central_session(profile: str, n: int = 1, args: str = "") -> str:
    """One run of the gateway's central for ``profile``: readings, summary and log numbered ``n``;
    a failure sets the script's ``rc``."""
    extra = f"{args} " if args else ""
    return (f"{CENTRAL} --profile {profile} --state $R/state --readings $R/readings{n}.jsonl {extra}"
            f"${{CENTRAL_ARGS:-}} \\\n  > $R/central{n}.json 2> $R/central{n}.log || rc=1\n")


@dataclass(frozen=True)
class Run:
    """A finished scenario: the guest's result and, for assertion messages, the logs that explain it."""

    result: GuestResult
    context: str

    def summary(self, name: str = "central1.json") -> dict[str, Any]:
        return summary(self.result, name)

    def lines(self, name: str = "readings1.jsonl") -> list[dict[str, Any]]:
        return lines(self.result, name)

    @property
    def report(self) -> dict[str, Any]:
        """What the peripheral saw (requests, frames sent, passkeys), written when it stopped."""
        return summary(self.result, "report.json")


def run_scenario(spec: dict[str, Any], steps: str, timeout: float = 200) -> Run:
    result = run_in_guest(guest_script(spec, steps), timeout=timeout, env=GUEST_ENV)
    result.check()
    return Run(result, explain(result))
