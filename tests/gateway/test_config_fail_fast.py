"""Every invalid gateway config stops ``rpm-gateway run`` at once (issue 14, item 8): exit 2 and one
line on stderr that names the key, never a traceback, never a start that then crash-restarts a
component every second (an unknown USB profile, a missing CA file that meant nothing was ever sent).

Each case runs the real CLI as a process, as systemd would."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.runtime import check_startup
from tests.gateway.tls_material import make_tls_files

pytestmark = pytest.mark.unit

CLI = Path(sys.executable).with_name("rpm-gateway")

# (case, TOML after the data_dir line, text stderr must contain). {tls} is a folder with a real CA,
# client certificate and key; {tmp} is the test's own folder.
CASES = [
    ("wrong type", '[mqtt]\nbatch_max = "lots"', "mqtt.batch_max: Input should be a valid integer"),
    ("wrong enum", '[outbox]\nwhen_full = "drop_newest"', "outbox.when_full: Input should be 'drop_oldest'"),
    ("out of range", "status_interval_s = -1", "status_interval_s: Input should be greater than 0"),
    ("section of the wrong type", "mqtt = 5", "mqtt: Input should be a valid dictionary"),
    ("unknown key", "[mqtt]\nbach_max = 5", "mqtt.bach_max: unknown key (did you mean 'batch_max'?)"),
    ("unknown top-level key", 'gatway_id = "gw-1"', "gatway_id: unknown key (did you mean 'gateway_id'?)"),
    ("key in the wrong section", '[mqtt]\ntimezone = "UTC"', "mqtt.timezone: unknown key (timezone is a top-level"),
    ("unknown key in a list entry", '[[usb.devices]]\nport = "/dev/ttyX"\nprofile = "serial.astm"\nbaud = 9600',
     "usb.devices[0].baud: unknown key (did you mean 'baudrate'?)"),
    ("unknown USB profile", '[[usb.devices]]\nport = "/dev/ttyX"\nprofile = "serial.astmm"',
     "usb.devices[0].profile: unknown profile 'serial.astmm' (did you mean 'serial.astm'?)"),
    ("USB entry that matches nothing", '[[usb.devices]]\nprofile = "serial.astm"', "usb.devices[0]: matches no port"),
    ("USB description not a pattern", '[[usb.devices]]\ndescription = "(A&D"\nprofile = "serial.ad_scale"',
     "usb.devices[0].description: not a regular expression"),
    ("USB driver that does not import", '[[usb.devices]]\nport = "/dev/ttyX"\nprofile = "x"\ndriver = "no_such:Driver"',
     "usb.devices[0].driver: cannot import 'no_such'"),
    ("unknown BLE profile", '[[ble.enrolled]]\naddress = "AA:BB:CC:DD:EE:FF"\nprofile = "ble.glucos"',
     "ble.enrolled[0].profile: unknown profile 'ble.glucos' (did you mean 'ble.glucose'?)"),
    # bleak builds the adapter's D-Bus object path from it: a name, never a path.
    ("BLE adapter that is not an adapter name", '[ble]\nadapter = "hci0/../../x"',
     "ble.adapter: String should match pattern"),
    ("BLE backend that does not import", '[ble]\nbackend = "no_such.backend"', "ble.backend: cannot import"),
    ("bad log level", '[log]\nlevel = "LOUD"', "log.level: unknown log level 'LOUD'"),
    ("misspelt log level", '[log]\nlevel = "infoo"', "log.level: unknown log level 'infoo' (did you mean 'INFO'?)"),
    ("unknown time zone", 'timezone = "Mars/Olympus"', "timezone: unknown time zone 'Mars/Olympus'"),
    ("bad broker URL", '[mqtt]\nurl = "http://broker"', "mqtt.url: expected mqtt://host"),
    ("missing CA file", '[mqtt]\nurl = "mqtts://broker:8883"\nca_file = "{tmp}/missing-ca.pem"',
     "mqtt.ca_file: {tmp}/missing-ca.pem: no such file"),
    ("CA file that is a directory", '[mqtt]\nurl = "mqtts://broker:8883"\nca_file = "{tmp}"',
     "mqtt.ca_file: {tmp}: not a file"),
    ("CA file that is no certificate", '[mqtt]\nurl = "mqtts://broker:8883"\nca_file = "{tmp}/junk.pem"',
     "mqtt.ca_file: {tmp}/junk.pem: not a PEM CA certificate"),
    ("missing client key", '[mqtt]\nurl = "mqtts://broker:8883"\nca_file = "{tls}/ca.pem"\n'
     'cert_file = "{tls}/client.pem"\nkey_file = "{tmp}/missing.key"',
     "mqtt.key_file: {tmp}/missing.key: no such file"),
    ("key that is not the certificate's", '[mqtt]\nurl = "mqtts://broker:8883"\nca_file = "{tls}/ca.pem"\n'
     'cert_file = "{tls}/client.pem"\nkey_file = "{tls}/server.key"', "client certificate {tls}/client.pem and key"),
    ("key without a certificate", '[mqtt]\nurl = "mqtts://broker:8883"\nkey_file = "{tls}/client.key"',
     "mqtt.key_file: set without mqtt.cert_file"),
    ("client certificate on a plain connection", '[mqtt]\nurl = "mqtt://broker"\ncert_file = "{tls}/client.pem"\n'
     'key_file = "{tls}/client.key"', "mqtt.cert_file: set, but mqtt.url is not mqtts://"),
    ("not TOML", "this is = = not toml", "bad.toml: not valid TOML"),
]


# The classes issue 14 names, run as real processes (all at once: each is an interpreter start).
AS_PROCESSES = ["wrong type", "wrong enum", "unknown key", "unknown USB profile", "missing CA file",
                "CA file that is no certificate", "missing client key", "bad log level", "not TOML"]
UNREADABLE_FILES = {"not UTF-8": "bad.toml: not UTF-8 text (byte 17", "missing file": "bad.toml: no such file",
                    "a directory": "bad.toml: is a directory"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    files = make_tls_files(folder, "gw-test")
    for name, path in {"ca.pem": files.ca, "client.pem": files.client_cert, "client.key": files.client_key,
                       "server.key": files.server_key}.items():
        (folder / name).write_bytes(path.read_bytes())
    return folder


def write_case(folder: Path, tls: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.pem").write_text("not a certificate\n")
    config = folder / "bad.toml"
    config.write_text(f'data_dir = "{folder / "data"}"\n' + body.format(tmp=folder, tls=tls) + "\n")
    return config


def write_unreadable(folder: Path, case: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "bad.toml"
    if case == "not UTF-8":
        config.write_bytes(b'gateway_id = "gw-\xff\xfe"\n')
    elif case == "a directory":
        config.mkdir()
    return config


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory, tls: Path) -> dict[str, tuple[Finished, Path]]:
    """``rpm-gateway run --config bad.toml`` for each process case, started together."""
    root = tmp_path_factory.mktemp("configs")
    bodies = {case: body for case, body, _ in CASES}
    configs = {case: write_case(root / f"c{i}", tls, bodies[case]) for i, case in enumerate(AS_PROCESSES)}
    configs |= {case: write_unreadable(root / f"u{i}", case) for i, case in enumerate(UNREADABLE_FILES)}
    started = time.monotonic()
    running = {case: subprocess.Popen([str(CLI), "run", "--config", str(path)], cwd=path.parent, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for case, path in configs.items()}
    finished = {}
    for case, process in running.items():
        stdout, stderr = process.communicate(timeout=30)
        finished[case] = (Finished(process.returncode, stdout, stderr, time.monotonic() - started), configs[case])
    return finished


def assert_fails_fast(result: Finished, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: config: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.elapsed < 15, f"took {result.elapsed:.1f} s"


def run_in_process(config: Path, capsys: pytest.CaptureFixture[str]) -> Finished:
    """The same ``main`` the console script runs, without an interpreter start per case."""
    started = time.monotonic()
    code = main(["run", "--config", str(config)])
    out = capsys.readouterr()
    return Finished(code, out.out, out.err, time.monotonic() - started)


@pytest.mark.parametrize("case", AS_PROCESSES)
def test_rpm_gateway_run_with_a_bad_config_exits_2_with_one_line_naming_the_key(
        processes: dict[str, tuple[Finished, Path]], tls: Path, case: str) -> None:
    result, config = processes[case]
    expected = next(e for c, _, e in CASES if c == case)
    assert_fails_fast(result, expected.format(tmp=config.parent, tls=tls))


@pytest.mark.parametrize("case", sorted(UNREADABLE_FILES))
def test_rpm_gateway_run_with_an_unreadable_config_file_exits_2_with_one_line(
        processes: dict[str, tuple[Finished, Path]], case: str) -> None:
    assert_fails_fast(processes[case][0], UNREADABLE_FILES[case])


@pytest.mark.parametrize(("body", "expected"), [(body, expected) for _, body, expected in CASES],
                         ids=[case for case, _, _ in CASES])
def test_every_bad_config_stops_the_start_with_one_line_naming_the_key(
        tmp_path: Path, tls: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str) -> None:
    config = write_case(tmp_path, tls, body)
    assert_fails_fast(run_in_process(config, capsys), expected.format(tmp=tmp_path, tls=tls))


def test_a_data_dir_that_cannot_be_created_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("in the way")
    config = tmp_path / "bad.toml"
    config.write_text(f'data_dir = "{tmp_path / "file" / "data"}"\n')
    assert_fails_fast(run_in_process(config, capsys), "data_dir: ")


def test_a_good_tls_config_passes_the_start_checks(tmp_path: Path, tls: Path) -> None:
    config = tmp_path / "good.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nurl = "mqtts://127.0.0.1:8883"\n'
                      f'ca_file = "{tls}/ca.pem"\ncert_file = "{tls}/client.pem"\nkey_file = "{tls}/client.key"\n'
                      '[[usb.devices]]\nport = "/dev/ttyX"\nprofile = "serial.astm"\n'
                      'driver = "gateway.drivers.astm_meter:AstmMeterDriver"\n[log]\nlevel = "debug"\n')
    check_startup(load_config(config))  # raises ConfigError naming the key otherwise


def test_every_ble_profile_of_the_device_table_can_be_enrolled_by_name(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.profiles import BLE_PROFILES

    enrolled = [{"address": f"AA:BB:CC:DD:EE:{n:02X}", "profile": name} for n, name in enumerate(sorted(BLE_PROFILES))]
    config = parse_config({"data_dir": str(tmp_path / "data"), "ble": {"enrolled": enrolled}})
    assert {device.profile for device in config.ble.enrolled} >= {"ble.pulse_oximeter", "ble.thermometer"}
