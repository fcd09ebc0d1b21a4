"""One exception root for the cloud: every error it defines is a ``CloudError``, and ``rpm-cloud`` turns
one a command leaves unhandled into one line on stderr (exit 1, as an uncaught error had)."""

from __future__ import annotations

import argparse

import pytest

from cloud.cli import main as rpm_cloud
from cloud.devices.assignment import AssignmentError
from cloud.errors import CloudError
from tests.gateway.test_errors import defined_exceptions

pytestmark = pytest.mark.unit


def test_every_cloud_error_derives_from_the_root() -> None:
    errors = defined_exceptions("cloud")
    assert "cloud.ingest.consumer.IngestError" in errors and "cloud.devices.assignment.AssignmentError" in errors
    strays = sorted(name for name, cls in errors.items() if not issubclass(cls, CloudError))
    assert not strays, strays


def test_an_unhandled_cloud_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def migrate(args: argparse.Namespace) -> int:
        raise AssignmentError("device ble:x\nis bound elsewhere")

    monkeypatch.setattr("cloud.db.migrate.main", migrate)
    assert rpm_cloud(["migrate"]) == 1
    assert capsys.readouterr().err == "error: device ble:x is bound elsewhere\n"
