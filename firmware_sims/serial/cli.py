"""``rpm-sim serial``: one simulated USB serial device on a pseudo-terminal, until Ctrl-C.

    rpm-sim serial astm --link /tmp/ttyMeter --records 20 --clock-offset-min -35
    rpm-sim serial scale --link /tmp/ttyScale --weights 71.2,71.0 --framing 7E1 --baud 2400
    rpm-sim serial ant --link /tmp/ttyAnt --network-key "$RPM_ANT_NETWORK_KEY" --bpm 68
    rpm-sim serial taidoc --link /tmp/ttyBp --model bp --records 10

It prints the path to open (the stable ``--link`` if given, else the pty). Point the gateway at it
with a config entry: ``[[usb.devices]] port = "/tmp/ttyMeter"  profile = "serial.astm"``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
from datetime import datetime, timedelta

from firmware_sims.serial.pty_device import PtyDevice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="device", required=True)

    astm = sub.add_parser("astm", help="a glucose meter uploading its memory over ASTM E1381/E1394")
    astm.add_argument("--records", type=int, default=10)
    astm.add_argument("--serial", default="7390-1163170")
    astm.add_argument("--layout", choices=["contour", "e1394"], default="contour")
    astm.add_argument("--unit", choices=["mg/dL", "mmol/L"], default="mg/dL")
    astm.add_argument("--clock-offset-min", type=float, default=0.0)
    astm.add_argument("--clock-unset", action="store_true", help="the meter's clock reset to 2000-01-01")
    astm.add_argument("--corrupt-frame", type=int, action="append", default=[],
                      help="send this frame (1 = header) once with a bad checksum")
    astm.add_argument("--pull-after-frames", type=int, help="pull the cable after this many frames")
    astm.add_argument("--noise", action="store_true", help="line noise before each ENQ")

    scale = sub.add_parser("scale", help="an A&D-style scale streaming weight lines")
    scale.add_argument("--weights", default="71.2", help="comma-separated weighings")
    scale.add_argument("--unit", choices=["kg", "lb"], default="kg")
    scale.add_argument("--style", choices=["balance", "indicator", "csv"], default="balance")
    scale.add_argument("--baud", type=int, default=2400)
    scale.add_argument("--framing", choices=["7E1", "8N1"], default="7E1")
    scale.add_argument("--interval", type=float, default=0.2, help="seconds between lines")

    ant = sub.add_parser("ant", help="an ANT USB stick with an ANT+ heart-rate strap in range")
    ant.add_argument("--network-key", default=os.environ.get("RPM_ANT_NETWORK_KEY"),
                     help="16 hex digits, the same as the gateway's [usb] ant_network_key "
                          "(default: $RPM_ANT_NETWORK_KEY)")
    ant.add_argument("--device-number", type=int, default=12345)
    ant.add_argument("--bpm", type=float, default=72.0)
    ant.add_argument("--baud", type=int, default=115200)
    ant.add_argument("--realtime", action="store_true", help="4.06 messages a second, as a real strap")

    taidoc = sub.add_parser("taidoc", help="a TaiDoc (FORA) BP monitor or 2-in-1 meter")
    taidoc.add_argument("--model", choices=["bp", "2in1"], default="bp")
    taidoc.add_argument("--records", type=int, default=5)

    for command in (astm, scale, ant, taidoc):
        command.add_argument("--link", help="a stable path (symlink) to the pty, as /dev/serial/by-id is")


def build_device(args: argparse.Namespace) -> PtyDevice:
    now = datetime.now().replace(second=0, microsecond=0)
    if args.device == "astm":
        from firmware_sims.serial.astm_meter import AstmFaults, GlucoseMeter, GlucoseResult, PtyAstmMeter

        rng = random.Random(7)
        results = []
        for i in range(args.records):
            mg_dl = rng.randint(70, 220)
            value = mg_dl if args.unit == "mg/dL" else round(mg_dl / 18.0156, 1)
            results.append(GlucoseResult(now - timedelta(hours=8 * (args.records - i)), value, args.unit,
                                         ("B",) if i % 3 == 0 else ()))
        meter = GlucoseMeter(results=results, serial=args.serial, layout=args.layout,
                             clock_offset=timedelta(minutes=args.clock_offset_min), clock_unset=args.clock_unset)
        faults = AstmFaults(
            noise_before=b"\x00\xff~" if args.noise else b"",
            corrupt_frames={n: 1 for n in args.corrupt_frame},
            pull_after_frames=args.pull_after_frames,
        )
        return PtyAstmMeter(meter, faults, link_path=args.link)
    if args.device == "scale":
        from firmware_sims.serial.ad_scale import PtyScale, Weighing

        weighings = [Weighing(float(w), args.unit) for w in args.weights.split(",") if w]
        return PtyScale(weighings, style=args.style, line_interval=args.interval, link_path=args.link,
                        baudrate=args.baud, bytesize=7 if args.framing == "7E1" else 8,
                        parity="E" if args.framing == "7E1" else "N")
    if args.device == "ant":
        from firmware_sims.serial.ant_stick import PERIOD_S, HeartRateStrap, PtyAntStick

        if not args.network_key:
            raise SystemExit("rpm-sim serial ant: give --network-key (or set RPM_ANT_NETWORK_KEY)")
        strap = HeartRateStrap(device_number=args.device_number, network_key=bytes.fromhex(args.network_key),
                               heart_rate=lambda t: args.bpm)
        return PtyAntStick(strap, link_path=args.link, baudrate=args.baud,
                           broadcast_interval=PERIOD_S if args.realtime else 0.05)
    from firmware_sims.serial.taidoc import BP_MONITOR, TWO_IN_ONE, BpRecord, PtyTaidoc, TaidocMeter

    meter = TaidocMeter(BP_MONITOR if args.model == "bp" else TWO_IN_ONE)
    for i in range(args.records):
        meter.store(BpRecord(now - timedelta(hours=12 * (args.records - i)), 128 + i, 82, 66 + i))
    return PtyTaidoc(meter, link_path=args.link)


def main(args: argparse.Namespace) -> int:
    device = build_device(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    path = device.plug_in()
    print(path, flush=True)
    try:
        while not stop.wait(0.5):
            if device.error is not None:
                print(f"simulator failed: {device.error}", flush=True)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        device.pull_cable()
    return 0
