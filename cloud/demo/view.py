"""The live terminal view: devices, readings flowing, alerts opening and resolving, the simulated week."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cloud.demo.story import DemoDevice

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"open": "bold red", "acknowledged": "yellow", "resolved": "green"}


@dataclass
class Snapshot:
    day: int
    days: int
    sent: dict[str, int]
    stored: dict[str, int]
    alerts: list[dict[str, Any]]
    dead_letters: int
    lines: list[str] = field(default_factory=list)


def render(snapshot: Snapshot, devices: tuple[DemoDevice, ...], header: str) -> Group:
    progress = Progress(TextColumn("simulated week"), BarColumn(), TextColumn("day {task.completed}/{task.total}"))
    progress.add_task("week", total=snapshot.days, completed=snapshot.day)

    device_table = Table(title="Devices", title_justify="left")
    for column in ("device", "transport", "patient", "sent", "stored"):
        device_table.add_column(column, justify="right" if column in ("sent", "stored") else "left")
    for device in devices:
        sent, stored = snapshot.sent.get(device.key, 0), snapshot.stored.get(device.key, 0)
        style = "green" if sent and stored >= sent else ""
        device_table.add_row(device.label, device.transport.upper(), device.patient_id or "(unassigned queue)",
                             str(sent), f"[{style}]{stored}[/]" if style else str(stored))

    alert_table = Table(title="Alerts", title_justify="left")
    for column in ("patient", "rule", "severity", "status", "value", "times", "note"):
        alert_table.add_column(column)
    for alert in snapshot.alerts[-8:]:
        severity, status = alert["severity"], alert["status"]
        alert_table.add_row(
            alert["display_name"], alert["rule_id"], f"[{SEVERITY_STYLE.get(severity, '')}]{severity}[/]",
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            "" if alert["value"] is None else f"{alert['value']:g}", str(alert["trigger_count"]),
            "late (measured days ago)" if alert["late"] else "",
        )
    if not snapshot.alerts:
        alert_table.add_row("—", "", "", "", "", "", "")
    totals = (f"readings sent {sum(snapshot.sent.values())} · stored {sum(snapshot.stored.values())} · "
              f"dead letters {snapshot.dead_letters}")
    return Group(Panel(header, title="rpm-demo", expand=False), progress, device_table, alert_table, totals,
                 *snapshot.lines)
