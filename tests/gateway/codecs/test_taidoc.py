"""TaiDoc (FORA) 8-byte frames: public vectors, typed errors, record layouts, property tests.

Public vectors, from glucometerutils (MIT), ``glucometerutils/drivers/tests/test_td42xx.py``:
connect frame ``51 22 00 00 00 00 A3 16``; packed dates ``21 24 0E 15`` = 2018-01-01 21:14,
``21 26 0E 15`` = 2019-01-01 21:14 and ``04 27 25 0D`` = 2019-08-04 13:37 (also in
``specs/serial-protocols.md`` section 4). The FORA BLE/USB command frames ``51 2B 00 00 00 00 A3 1F``
(record count), ``51 24 .. A3 18`` (model) and ``51 52 .. A3 46`` are from an open-source ESP32 FORA
client (YentingChia-Ultron/Ultron-esp32BLE, ``foraBP.c``).
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs import taidoc
from gateway.codecs.common import ChecksumError, DecodeError, InvalidFieldError, NoReadingError, TruncatedError
from gateway.readings.decode import decode_to_json, run

pytestmark = pytest.mark.unit


def reply(command: int, data: bytes) -> bytes:
    # Written out by hand from the spec rather than with the codec's encoder.
    head = bytes([0x51, command, *data, 0xA5])
    return head + bytes([sum(head) & 0xFF])


def test_connect_frame_matches_the_public_vector() -> None:
    assert taidoc.wake_request() == bytes.fromhex("51 22 00 00 00 00 A3 16")


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (taidoc.record_count_request(), "51 2B 00 00 00 00 A3 1F"),
        (taidoc.read_model_request(), "51 24 00 00 00 00 A3 18"),
        (taidoc.record_time_request(0), "51 25 00 00 00 00 A3 19"),
        (taidoc.record_value_request(0), "51 26 00 00 00 00 A3 1A"),
        (taidoc.record_value_request(0x0102), "51 26 02 01 00 00 A3 1D"),
        (taidoc.power_off_request(), "51 50 00 00 00 00 A3 44"),
        (taidoc.read_clock_request(), "51 23 00 00 00 00 A3 17"),
        (taidoc.serial_former_request(), "51 28 00 00 00 00 A3 1C"),
        (taidoc.serial_latter_request(), "51 27 00 00 00 00 A3 1B"),
    ],
)
def test_request_encoders_give_the_documented_frames(request_bytes: bytes, expected: str) -> None:
    assert request_bytes == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("21 24 0E 15", datetime(2018, 1, 1, 21, 14)),
        ("21 26 0E 15", datetime(2019, 1, 1, 21, 14)),
        ("04 27 25 0D", datetime(2019, 8, 4, 13, 37)),
    ],
)
def test_packed_date_public_vectors(data: str, expected: datetime) -> None:
    assert taidoc.decode_packed_time(bytes.fromhex(data)).when == expected
    assert taidoc.encode_packed_time(expected) == bytes.fromhex(data)


def test_write_clock_request_carries_the_packed_date() -> None:
    assert taidoc.write_clock_request(datetime(2019, 8, 4, 13, 37))[2:6] == bytes.fromhex("04 27 25 0D")


@pytest.mark.parametrize(
    ("frame", "error", "offset"),
    [
        ("51 22 00 00 00 00 A3", TruncatedError, 7),
        ("52 22 00 00 00 00 A3 17", InvalidFieldError, 0),
        ("51 22 00 00 00 00 A4 17", InvalidFieldError, 6),
        ("51 22 00 00 00 00 A3 17", ChecksumError, 7),
        ("51 22 00 00 00 00 A3 16 00", InvalidFieldError, 8),
    ],
)
def test_bad_frames_raise_typed_errors_naming_the_byte(frame: str, error: type[DecodeError], offset: int) -> None:
    with pytest.raises(error) as caught:
        taidoc.decode_frame(bytes.fromhex(frame))
    assert caught.value.offset == offset


def test_impossible_dates_are_invalid_fields() -> None:
    with pytest.raises(InvalidFieldError, match="month"):
        taidoc.decode_packed_time(bytes([0x00, 0x26, 0, 0]))  # month 0
    with pytest.raises(InvalidFieldError, match="day"):
        taidoc.decode_packed_time(bytes([0x5E, 0x26, 0, 0]))  # 2019-02-30
    with pytest.raises(InvalidFieldError, match="hour"):
        taidoc.decode_packed_time(bytes.fromhex("04 27 25 18"))


def test_time_record_flag_bits_are_split_from_minute_and_hour() -> None:
    # minute byte 0x25 | 0xC0 (BP record, arrhythmia); hour byte 0x0D | 0xE0 (averaged, IHB 3)
    time = taidoc.decode_record_time(taidoc.decode_frame(reply(0x25, bytes.fromhex("04 27 E5 ED"))))
    assert time.when == datetime(2019, 8, 4, 13, 37)
    assert time.marks_blood_pressure and time.arrhythmia and time.averaged and time.ihb_type == 3


def test_model_reply_is_bcd_and_selects_the_layout() -> None:
    assert taidoc.decode_model(taidoc.decode_frame(reply(0x24, bytes.fromhex("77 42 00 00")))) == "TD-4277"
    assert taidoc.decode_model(taidoc.decode_frame(reply(0x24, bytes.fromhex("28 31 00 00")))) == "TD-3128"
    assert taidoc.model_profile("TD-3128").blood_pressure is taidoc.Layout.BLOOD_PRESSURE
    assert taidoc.model_profile("d40").two_in_one
    assert taidoc.model_profile("TD-4235").blood_pressure is None
    with pytest.raises(taidoc.UnknownModelError):
        taidoc.model_profile("TD-9999")


def test_serial_is_the_two_halves_high_byte_first() -> None:
    former = taidoc.decode_frame(reply(0x28, bytes.fromhex("B1 A0 28 31")))
    latter = taidoc.decode_frame(reply(0x27, bytes.fromhex("F5 E4 D3 C2")))
    assert taidoc.decode_serial_half(former) + taidoc.decode_serial_half(latter) == "3128A0B1C2D3E4F5"


def test_record_count_is_a_little_endian_word() -> None:
    assert taidoc.decode_record_count(taidoc.decode_frame(reply(0x2B, bytes.fromhex("C2 01 00 00")))) == 450


def test_bp_value_and_time_decode_to_a_full_reading() -> None:
    data = reply(0x25, bytes.fromhex("04 27 65 0D")) + reply(0x26, bytes([182, 130, 104, 96]))
    m = taidoc.decode_frame_reading(data, model="TD-3128")
    assert m.kind == "blood_pressure" and m.device_time == datetime(2019, 8, 4, 13, 37)
    assert {k: q.value for k, q in m.values.items()} == {
        "systolic": 182, "mean_arterial": 130, "diastolic": 104, "pulse_rate": 96}
    assert m.values["systolic"].unit == "mm[Hg]" and m.values["pulse_rate"].unit == "/min"
    assert m.flags == ("irregular_pulse",) and m.raw == data
    assert m.details["layout_assumed"] is False


def test_value_frame_alone_says_which_layout_it_assumed() -> None:
    out = decode_to_json("serial.taidoc", reply(0x26, bytes([140, 103, 85, 72])).hex())
    assert out["values"]["systolic"]["value"] == 140 and out["device_time"] is None
    assert out["details"]["layout"] == "blood_pressure" and out["details"]["layout_assumed"] is True


def test_two_in_one_value_frame_alone_assumes_bp_and_says_so() -> None:
    m = taidoc.decode_frame_reading(reply(0x26, bytes([0x06, 0x01, 95, 88])), model="TD-3261")
    assert m.values["systolic"].value == 262 and "mean_arterial" not in m.values
    assert m.details["layout_assumed"] is True and "BP was assumed" in m.details["note"]


def test_two_in_one_time_record_selects_glucose_when_the_bp_bit_is_clear() -> None:
    data = reply(0x25, bytes.fromhex("04 27 25 0D")) + reply(0x26, bytes.fromhex("68 00 06 40"))
    m = taidoc.decode_frame_reading(data, model="TD-3261")
    assert m.kind == "glucose" and m.values["glucose"].value == 104 and m.values["glucose"].unit == "mg/dL"
    assert m.details["meal"] == "before_meal" and m.details["strip_code"] == 6


def test_glucose_control_solution_is_flagged() -> None:
    m = taidoc.decode_frame_reading(reply(0x26, bytes.fromhex("62 00 00 C0")), model="glucose")
    assert m.flags == ("control_solution",) and m.details["glucose_type"] == "control_solution"


def test_error_record_with_zero_pressure_is_an_invalid_field() -> None:
    with pytest.raises(InvalidFieldError, match="systolic"):
        taidoc.decode_frame_reading(reply(0x26, bytes(4)), model="TD-3128")


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (reply(0x23, bytes.fromhex("04 27 25 0D")), "2019-08-04 13:37"),
        (reply(0x24, bytes.fromhex("28 31 00 00")), "TD-3128"),
        (reply(0x25, bytes.fromhex("04 27 25 0D")), "value frame"),
        (bytes.fromhex("51 22 00 00 00 00 A3 16"), "request"),
    ],
)
def test_frames_without_a_reading_say_what_they_are(frame: bytes, says: str) -> None:
    with pytest.raises(NoReadingError, match=says):
        taidoc.decode_frame_reading(frame)


def test_decode_cli_exits_2_with_one_line_on_a_bad_frame(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("serial.taidoc", "51 26 8C 67 55 48 A5 00") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checksum mismatch") and err.count("\n") == 1


def test_decode_cli_takes_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    frame = reply(0x26, bytes.fromhex("68 00 06 80"))
    assert run("serial.taidoc", frame.hex(), model="TD-4277") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "glucose" and out["details"]["meal"] == "after_meal"


def test_second_frame_errors_point_into_the_16_byte_input() -> None:
    good = reply(0x25, bytes.fromhex("04 27 25 0D"))
    bad = reply(0x26, bytes([120, 90, 80, 70]))[:7] + b"\x00"
    with pytest.raises(DecodeError) as caught:
        taidoc.decode_frame_reading(good + bad)
    assert caught.value.offset == 15


# --- properties -----------------------------------------------------------------------------------

commands = st.integers(0, 255)
data4 = st.binary(min_size=4, max_size=4)
directions = st.sampled_from([taidoc.HOST_TO_DEVICE, taidoc.DEVICE_TO_HOST])


@given(commands, data4, directions)
def test_any_frame_round_trips(command: int, data: bytes, direction: int) -> None:
    frame = taidoc.decode_frame(taidoc.encode_frame(command, data, direction))
    assert (frame.command, frame.data, frame.direction) == (command, data, direction)


@given(commands, data4, directions, st.integers(0, 7), st.integers(1, 255))
def test_any_single_byte_corruption_is_detected(command: int, data: bytes, direction: int, at: int, delta: int) -> None:
    raw = bytearray(taidoc.encode_frame(command, data, direction))
    raw[at] = (raw[at] + delta) & 0xFF
    with pytest.raises(DecodeError):
        taidoc.decode_frame(bytes(raw))


models = st.sampled_from([None, "TD-3128", "TD-3261", "TD-4277", "glucose"])


@given(st.binary(max_size=40), models)
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes, model: str | None) -> None:
    try:
        taidoc.decode_frame_reading(data, model=model)
    except DecodeError:
        pass


@given(st.sampled_from([0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x2B, 0x50, 0x99]), data4, data4, models)
def test_any_well_formed_device_frames_decode_or_raise_a_decode_error(
    command: int, first: bytes, second: bytes, model: str | None
) -> None:
    one = taidoc.encode_frame(command, first, taidoc.DEVICE_TO_HOST)
    pair = taidoc.encode_frame(0x25, first, taidoc.DEVICE_TO_HOST) + taidoc.encode_frame(
        0x26, second, taidoc.DEVICE_TO_HOST)
    for data in (one, pair):
        try:
            measurement = taidoc.decode_frame_reading(data, model=model)
        except DecodeError:
            continue
        assert measurement.kind in ("blood_pressure", "glucose") and measurement.values


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2127, 12, 31)))
def test_packed_date_round_trips_to_the_minute(when: datetime) -> None:
    minute = when.replace(second=0, microsecond=0)
    assert taidoc.decode_packed_time(taidoc.encode_packed_time(minute)).when == minute


@given(st.lists(st.tuples(commands, data4), max_size=6), st.binary(max_size=12), st.integers(1, 9))
def test_assembler_recovers_every_frame_after_noise_in_any_chunking(
    frames: list[tuple[int, bytes]], noise: bytes, chunk: int
) -> None:
    noise = noise.replace(b"\x51", b"")  # noise with a start byte may legitimately hide the next frame
    stream = noise + b"".join(taidoc.encode_frame(c, d, taidoc.DEVICE_TO_HOST) for c, d in frames)
    assembler = taidoc.FrameAssembler()
    out = []
    for i in range(0, len(stream), chunk):
        out += assembler.feed(stream[i : i + chunk])
    got = [(f.command, f.data) for f in out if isinstance(f, taidoc.Frame)]
    assert got == frames
