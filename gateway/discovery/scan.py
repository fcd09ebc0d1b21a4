"""``rpm-gateway scan``: the health devices around (BLE) and plugged in (USB), and which are enrolled;
``rpm-gateway pair``: open a pairing window, list the candidates, confirm or ignore them by number;
``rpm-gateway unpair``: forget a device."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import GatewayConfig
from gateway.contract import Candidate
from gateway.discovery.ble_config import BackendLoadError
from gateway.discovery.enrolment import EnrolmentError, EnrolmentStore, normalise_uid

log = logging.getLogger(__name__)


def _ble(config: GatewayConfig, seconds: float) -> tuple[list[dict[str, Any]], str | None]:
    if not config.ble.enabled:
        return [], "disabled in the config"
    try:
        from gateway.discovery.ble import ble_candidates
        from gateway.runtime import load_bleak_backends

        return asyncio.run(ble_candidates(config, seconds, load_bleak_backends(config.ble.backend))), None
    except Exception as err:  # no adapter, no BlueZ, no D-Bus: say so (in plain words) and still list USB
        from gateway.ops.problems import plain_words

        return [], plain_words(err) or f"{type(err).__name__}: {err}"


def _usb(config: GatewayConfig) -> tuple[list[dict[str, Any]], str | None]:
    if not config.usb.enabled:
        return [], "disabled in the config"
    try:
        from gateway.discovery.usb import usb_candidates

        return usb_candidates(config.usb), None
    except Exception as err:
        return [], f"{type(err).__name__}: {err}"


def _row(candidate: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{candidate.get(key)!s:<20}" for key in keys if key in candidate).rstrip()


def run_scan(config: GatewayConfig, seconds: float) -> int:
    print(f"BLE (listening {seconds:g} s):")
    ble, ble_error = _ble(config, seconds)
    if ble_error:
        print(f"  unavailable: {ble_error}")
    for candidate in ble:
        mark = "enrolled" if candidate.get("enrolled") else "not enrolled"
        print(f"  {_row(candidate, ('address', 'profile', 'name', 'rssi'))}  [{mark}]")
    if not ble and not ble_error:
        print("  no health device heard")
    print("USB serial:")
    usb, usb_error = _usb(config)
    if usb_error:
        print(f"  unavailable: {usb_error}")
    for candidate in usb:
        print(f"  {_row(candidate, ('port', 'device', 'profile', 'vid', 'pid', 'description'))}")
    if not usb and not usb_error:
        print("  no serial port")
    return 0


def describe_candidate(candidate: Candidate) -> str:
    """One line a person can recognise a device by: what it is, its name, how it is connected."""
    what = " ".join(dict.fromkeys(filter(None, (candidate.type, candidate.make, candidate.model or candidate.name))))
    how = "USB" if candidate.transport == "usb" else "Bluetooth"
    if candidate.rssi is not None:
        how += f", {signal_words(candidate.rssi)} signal ({candidate.rssi} dBm)"
    users = f", {candidate.user_slots} users" if candidate.user_slots and candidate.user_slots > 1 else ""
    return f"{what or candidate.profile} ({how}{users})  {candidate.uid}"


def signal_words(rssi: int) -> str:
    # A device on the same table is about -40..-65 dBm; through a wall or two, -80 and below.
    return "strong" if rssi >= -65 else "medium" if rssi >= -80 else "weak (maybe a neighbour's)"


def _pick(token: str, listed: list[Candidate]) -> tuple[str, int | None]:
    """``3`` or ``3:2`` (number 3, as user 2) or a uid → (uid, user index)."""
    number, _, user = token.partition(":")
    if not number.isdigit():
        return token, None
    if not 1 <= int(number) <= len(listed):
        raise ValueError(f"no device number {number} (1..{len(listed)})")
    if user and not user.isdigit():
        raise ValueError(f"the user slot must be a number: {token!r}")
    return listed[int(number) - 1].uid, int(user) if user else None


def _decide(store: EnrolmentStore, listed: list[Candidate], confirm: Sequence[str], ignore: Sequence[str]) -> int:
    failed = 0
    for token, action in [(t, "confirm") for t in confirm] + [(t, "ignore") for t in ignore]:
        try:
            uid, user_index = _pick(token, listed)
            if action == "confirm":
                device = store.confirm(uid, source="pair", user_index=user_index)
                slot = "" if device.user_index is None else f" as user {device.user_index}"
                print(f"confirmed {device.uid}{slot}: its readings will be sent")
            else:
                store.ignore(uid, source="pair")
                print(f"ignored {normalise_uid(uid)}: it will not be read or proposed again")
        except (ValueError, EnrolmentError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return failed


def run_pair(config: GatewayConfig, seconds: float, *, confirm: Sequence[str] = (), ignore: Sequence[str] = (),
             ask: Callable[[str], str] | None = None) -> int:
    """``rpm-gateway pair``: open a pairing window for ``seconds`` (BLE) and look at what is plugged in
    (USB); every health device found that nobody decided about is a candidate. Then list the candidates
    with numbers and confirm or ignore them: ``--confirm 1 3:2 --ignore 2`` (3:2 is number 3 as user 2
    of a two-user cuff), or by answering the question when ``ask`` is given (a terminal)."""
    from gateway.discovery.ble import pair_window
    from gateway.discovery.usb import propose_plugged_in
    from gateway.runtime import load_bleak_backends

    store = EnrolmentStore.for_config(config)
    try:
        if config.ble.enabled and seconds > 0:
            print(f"pairing window open for {seconds:g} s: put each device in pairing mode (or take a measurement)")
            try:
                asyncio.run(pair_window(config.ble, store, seconds, load_bleak_backends(config.ble.backend)))
            except BackendLoadError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            except Exception as err:  # bleak raises platform-specific errors when there is no adapter
                print(f"error: ble: cannot scan: {err}", file=sys.stderr)
                return 2
        if config.usb.enabled:
            try:
                propose_plugged_in(config.usb, store)
            except Exception as err:  # no /sys/class/tty in a container: say so, Bluetooth still counts
                print(f"USB unavailable: {type(err).__name__}: {err}")
        listed = store.candidates()
        if not listed:
            print("no health device waiting to be confirmed")
            return 0
        print("waiting to be confirmed (only confirm devices that are yours):")
        for number, candidate in enumerate(listed, 1):
            print(f"  {number}. {describe_candidate(candidate)}")
        failed = _decide(store, listed, confirm, ignore)
        if ask is not None and not (confirm or ignore):
            answer = ask("Confirm which? Numbers (3:2 = number 3 as user 2), 'i N' to ignore N, Enter to finish: ")
            words = answer.split()
            to_ignore = [w for i, w in enumerate(words) if i > 0 and words[i - 1] == "i"]
            to_confirm = [w for i, w in enumerate(words) if w != "i" and not (i > 0 and words[i - 1] == "i")]
            failed += _decide(store, listed, to_confirm, to_ignore)
        return 2 if failed else 0
    finally:
        store.close()


def run_unpair(config: GatewayConfig, key: str) -> int:
    """``rpm-gateway unpair UID``: forget a device (it is not read any more); its readings stay in the record."""
    store = EnrolmentStore.for_config(config)
    try:
        if not store.remove(key, source="pair"):
            listed = store.enrolled(key)
            where = " (it is listed in the config file: remove it there)" if listed is not None else ""
            print(f"error: {normalise_uid(key)} is not a device this gateway remembers{where}", file=sys.stderr)
            return 2
        print(f"forgot {normalise_uid(key)}: it is not read any more; the readings it gave stay in the record")
        return 0
    finally:
        store.close()
