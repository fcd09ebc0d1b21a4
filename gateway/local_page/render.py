"""The local page's HTML, rendered on the gateway: plain forms, no script (the content policy allows
none), every value escaped. Words are for a patient at home, not for an engineer."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from gateway.contract import Candidate
from gateway.local_page.view import PageFacts

NOTICES = {
    "confirmed": "Device confirmed: its readings will be sent to your care team.",
    "ignored": "Done: that device will not be read, and will not be proposed again.",
    "removed": "Device removed: it is not read any more. The readings it already gave stay in your record.",
    "pairing": "Looking for new devices.",
    "signed-out": "Signed out.",
    "gone": "That device is no longer on the list (someone may have decided about it already).",
}


def _page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
            f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/page.css"></head>'
            f'<body><main>{body}</main></body></html>')


def sign_in_page(*, error: str | None = None, button: bool = False) -> str:
    message = f'<p class="problem" role="alert">{escape(error)}</p>' if error else ""
    press = ("<p>Or press the button on the gateway, then <a href=\"/\">reload this page</a>.</p>" if button else "")
    body = (f'<h1>Your health gateway</h1>{message}'
            f'<form method="post" action="/sign-in" class="card">'
            f'<label for="code">Code printed on the gateway</label>'
            f'<input id="code" name="code" autocomplete="off" autocapitalize="characters" spellcheck="false" '
            f'maxlength="20" placeholder="XXXX-XXXX-XXXX" required>'
            f'<button type="submit">Sign in</button></form>{press}')
    return _page("Sign in — health gateway", body)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "no reading yet"
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 90:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = round(seconds / size) if size > 60 else seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def _headline(facts: PageFacts) -> tuple[str, str, str]:
    """(state class, headline, detail)."""
    status = facts.status
    waiting = status.outbox_depth
    saved = f"{waiting} reading{'s' if waiting != 1 else ''}"
    if status.storage_state in ("full", "unwritable"):
        return "bad", "Storage problem", status.storage_message or "New readings cannot be saved."
    if facts.waiting_for_claim:
        return "wait", "Waiting to be set up" + (f" — {saved} saved safely" if waiting else ""), \
            "Your care team has not linked this gateway to you yet."
    if facts.connected:
        detail = "Readings are sent to your care team as they arrive."
        if waiting:
            detail = f"Sending {saved} to your care team."
        return "ok", "Connected", detail
    return "wait", "Waiting for internet" + (f" — {saved} saved safely" if waiting else ""), \
        "Readings are kept on the gateway and sent when the connection is back."


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


def _signal(candidate: Candidate) -> str:
    if candidate.transport == "usb":
        return "Plugged in by USB"
    if candidate.rssi is None:
        return "Bluetooth"
    if candidate.rssi < -80:
        return "Bluetooth, weak signal — may be a neighbour's"
    return f"Bluetooth, {'strong' if candidate.rssi >= -65 else 'medium'} signal"


def _candidate(candidate: Candidate, csrf: str) -> str:
    kind = candidate.type or "Health device"
    label = " ".join(dict.fromkeys(filter(None, (candidate.make, candidate.model or candidate.name))))
    uid = escape(candidate.uid)
    hidden = f'{_csrf(csrf)}<input type="hidden" name="uid" value="{uid}">'
    if candidate.user_slots and candidate.user_slots > 1:
        confirm = "".join(
            f'<form method="post" action="/confirm">{hidden}<input type="hidden" name="user" value="{slot}">'
            f'<button type="submit" class="yes">Mine — user {slot}</button></form>'
            for slot in range(1, candidate.user_slots + 1))
    else:
        confirm = (f'<form method="post" action="/confirm">{hidden}'
                   f'<button type="submit" class="yes">Yes, mine</button></form>')
    return (f'<li class="card candidate" data-uid="{uid}"><h3>{escape(kind)}</h3>'
            f'<p class="name">{escape(label) if label else "No name"}</p>'
            f'<p class="small">{escape(_signal(candidate))} · <span class="uid">{uid}</span></p>'
            f'<div class="actions">{confirm}'
            f'<form method="post" action="/ignore">{hidden}<button type="submit" class="no">Not mine</button></form>'
            f'</div></li>')


def status_page(facts: PageFacts, csrf: str, *, notice: str | None = None, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    state, headline, detail = _headline(facts)
    parts = ['<h1>Your health gateway</h1>']
    if notice in NOTICES:
        parts.append(f'<p class="notice" role="status">{escape(NOTICES[notice])}</p>')
    parts.append(f'<section class="card state {state}" id="state"><h2>{escape(headline)}</h2>'
                 f'<p>{escape(detail)}</p></section>')
    if facts.problems:
        items = "".join(f'<li><p class="what">{escape(what)}</p><p class="todo">{escape(todo)}</p></li>'
                        for what, todo in facts.problems)
        parts.append(f'<section id="problems"><h2>Something needs attention</h2><ul class="problems">{items}</ul>'
                     f'</section>')
    parts.append('<section id="devices"><h2>Your devices</h2>')
    if facts.devices:
        rows = []
        for line in facts.devices:
            battery = f"Battery {line.battery} %" if line.battery is not None else "Battery not known yet"
            user = f" · user {line.user_index}" if line.user_index is not None else ""
            remove = "" if line.from_config else (
                f'<details><summary>Remove…</summary><p>Stop reading this device? The readings it already gave '
                f'stay in your record.</p><form method="post" action="/unpair">{_csrf(csrf)}'
                f'<input type="hidden" name="uid" value="{escape(line.uid)}">'
                f'<button type="submit" class="no">Remove this device</button></form></details>')
            rows.append(f'<li class="card device" data-uid="{escape(line.uid)}"><h3>{escape(line.title)}</h3>'
                        f'<p>Last reading: {escape(_ago(line.last_reading, now))}{escape(user)}</p>'
                        f'<p class="small">{escape(battery)}</p>{remove}</li>')
        parts.append(f'<ul class="devices">{"".join(rows)}</ul>')
    else:
        parts.append("<p>No device confirmed yet. Look for new devices below.</p>")
    parts.append("</section>")
    parts.append('<section id="pairing"><h2>New devices</h2>')
    remaining = int(facts.window_remaining_s)
    if remaining > 0:
        parts.append(f'<p class="card looking">Looking for new devices — {remaining // 60} min {remaining % 60:02d} s '
                     f'left. Put your device in pairing mode, or take a measurement with it.</p>')
    else:
        parts.append(f'<form method="post" action="/pairing">{_csrf(csrf)}'
                     f'<button type="submit">Look for new devices</button></form>')
    if facts.candidates:
        parts.append("<p>Found near the gateway. Only choose “Yes, mine” for devices that are yours: "
                     "a neighbour's device can show up here too.</p>")
        parts.append(f'<ul class="candidates">{"".join(_candidate(c, csrf) for c in facts.candidates)}</ul>')
    elif remaining <= 0:
        parts.append("<p>No new device waiting.</p>")
    parts.append("</section>")
    parts.append(f'<footer><p class="small">Gateway {escape(facts.status.gateway_id)}'
                 f'{" · version " + escape(facts.status.version) if facts.status.version else ""}</p>'
                 f'<form method="post" action="/sign-out">{_csrf(csrf)}<button type="submit" class="link">Sign out'
                 f'</button></form></footer>')
    return _page(f"{headline} — health gateway", "".join(parts), refresh_s=5 if remaining > 0 else 30)


def message_page(status: int, title: str, text: str) -> str:
    return _page(title, f'<h1>{escape(title)}</h1><p class="card">{escape(text)}</p><p><a href="/">Back</a></p>')
