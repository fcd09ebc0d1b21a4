"""One exception root for the gateway: every error it defines is a ``GatewayError``, and ``rpm-gateway``
turns one a command leaves unhandled into one line on stderr (exit 1, as an uncaught error had)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from gateway.cli import main as rpm_gateway
from gateway.drivers.base import DeviceTimeoutError
from gateway.errors import GatewayError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
# The catalogue imports the standard library only (gateway/errors.py says why).
# Not failures of the gateway: the local page's Refused is an HTTP answer (401, 404, 429) carried as an
# exception through its request handler, never raised past it.
OUTSIDE = {"gateway.metrics.UnknownUnitError", "gateway.local_page.server.Refused"}


def defined_exceptions(package: str) -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of a module of ``package``, by dotted name."""
    found: dict[str, type[BaseException]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module_name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        classes = [
            node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef) and node.bases
        ]
        if not classes:
            continue
        module = importlib.import_module(module_name)
        for name in classes:
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found[f"{module_name}.{name}"] = cls
    return found


def test_every_gateway_error_derives_from_the_root() -> None:
    errors = defined_exceptions("gateway")
    assert "gateway.codecs.common.DecodeError" in errors and "gateway.store.outbox.OutboxError" in errors
    strays = sorted(name for name, cls in errors.items() if not issubclass(cls, GatewayError) and name not in OUTSIDE)
    assert not strays, strays


def test_an_unhandled_gateway_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def scan(config: object, seconds: float) -> int:
        raise DeviceTimeoutError("cuff did not answer\nwithin 10 s")

    monkeypatch.setattr("gateway.discovery.scan.run_scan", scan)
    assert rpm_gateway(["scan", "--seconds", "0"]) == 1
    assert capsys.readouterr().err == "error: cuff did not answer within 10 s\n"
