"""The gateway left running while the radio under it goes away: hci0 powered off and on, and
``bluetoothd`` restarted. Its scan and sessions must come back by themselves with nothing lost or doubled
(a glucose meter that measures again after the event)."""

from __future__ import annotations

import json

import pytest

from tests.kernel.scenarios import CENTRAL, GLUCOSE_METER, Run, run_scenario

pytestmark = pytest.mark.kernel

# The central runs on (cooldown 2 s, so it keeps reconnecting) until the cursor reaches the last of the
# later records; the event happens after its first good session, then the meter measures again.
RUN_CENTRAL = """
$CENTRAL --profile ble.glucose --state $R/state --readings $R/readings.jsonl --cooldown 2 --until-cursor 8 \\
  --timeout 150 ${CENTRAL_ARGS:-} > $R/central.json 2> $R/central1.log &
C=$!
for i in $(seq 600); do [ -e $R/state/session1.done ] && break; sleep 0.1; done
""".replace("$CENTRAL", CENTRAL)

AFTER_EVENT = """
kill -USR1 $P
wait $C || rc=1
"""

POWER_CYCLE = (
    RUN_CENTRAL
    + """
power() {
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci0 org.freedesktop.DBus.Properties.Set \
    string:org.bluez.Adapter1 string:Powered variant:boolean:$1 >> $R/event.log 2>&1
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci0 org.freedesktop.DBus.Properties.Get \
    string:org.bluez.Adapter1 string:Powered >> $R/event.log 2>&1
}
power false
sleep 3
power true
"""
    + AFTER_EVENT
)


def recovered(script: str) -> tuple[Run, str]:
    """Run a recovery scenario and check what every one must show: the records from before and after
    the event, each once, in order, over at least two good sessions. Returns the run and its context."""
    run = run_scenario(GLUCOSE_METER, script, timeout=300)
    central = run.summary("central.json")
    context = run.context + "\n" + (run.result.results / "event.log").read_text()
    assert [r["sequence"] for r in run.lines("readings.jsonl")] == list(range(1, 9)), context
    assert central["cursor"] == 8 and central["good_sessions"] >= 2, context
    print(json.dumps({"central": central, "guest_s": round(run.result.duration_s, 1)}))
    return run, context


@pytest.mark.timeout(420)
def test_the_gateway_recovers_from_an_adapter_power_cycle() -> None:
    # The scan came back on the adapter powered again, and the bonded meter was read incrementally.
    recovered(POWER_CYCLE)


# bluetoothd goes away under both the gateway and the meter (whose GATT application, advertisement and
# agent die with it): the meter is started again once the daemon is back, holding its later records too;
# the bond survives in /var/lib/bluetooth, as it does on a device across a daemon restart.
RESTARTED_METER = {
    **{key: value for key, value in GLUCOSE_METER.items() if key != "later_records"},
    "records": GLUCOSE_METER["records"] + GLUCOSE_METER["later_records"],
}

BLUETOOTHD_RESTART = (
    RUN_CENTRAL
    + f"""
kill -TERM $P; wait $P; mv $R/report.json $R/report1.json
kill -TERM $(cat /run/rpm/bt/bluetoothd.pid)
for i in $(seq 50); do kill -0 $(cat /run/rpm/bt/bluetoothd.pid) 2>/dev/null || break; sleep 0.1; done
echo "bluetoothd gone after $i polls" > $R/event.log
sleep 2
/usr/libexec/bluetooth/bluetoothd -n -f /run/rpm/bt/main.conf >> /var/log/bluetoothd.log 2>&1 &
echo $! > /run/rpm/bt/bluetoothd.pid
for i in $(seq 100); do
  dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci1 org.freedesktop.DBus.Properties.Get \\
    string:org.bluez.Adapter1 string:Powered 2>/dev/null | grep -q 'boolean true' && break
  sleep 0.1
done
echo "bluetoothd back after $i polls" >> $R/event.log
cat > $R/peripheral2.json <<'JSON'
{json.dumps(RESTARTED_METER)}
JSON
rm -f $R/ready.json
python -m firmware_sims.ble.bluez_peripheral --scenario $R/peripheral2.json --adapter hci1 \\
  --ready $R/ready.json --report $R/report.json ${{PERIPHERAL_ARGS:-}} >> $R/peripheral.log 2>&1 &
P=$!
wait $C || rc=1
"""
)


@pytest.mark.timeout(420)
def test_the_gateway_recovers_from_a_bluetoothd_restart() -> None:
    # The gateway's scan and sessions came back over the new daemon by themselves; the bonded meter
    # was read from record 6 on, without pairing again.
    run, context = recovered(BLUETOOTHD_RESTART)
    report = run.report
    assert report["requests"][-1] == "0103010600", (report["requests"], context)
    assert report["passkeys"] == [], report
