"""Kernel-level tests: real BlueZ (and hidraw) in a User-Mode Linux guest (see harness.py).

Marked ``kernel`` and excluded from the default run; run them with ``.venv/bin/pytest -m kernel tests/kernel``.
"""

from __future__ import annotations

import pytest

from tests.kernel.harness import HarnessUnavailable, ensure_kernel, ensure_rootfs, kernel_available


@pytest.hookimpl(tryfirst=True)  # before -m deselects: a module here that forgot pytestmark is still kernel
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("kernel/"):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session", autouse=True)
def uml_guest() -> None:
    """Build (or find cached) the kernel and the guest tree once; skip every kernel test with the reason
    where this machine cannot."""
    reason = kernel_available()
    if reason is not None:
        pytest.skip(f"kernel harness unavailable: {reason}")
    try:
        ensure_kernel()
        ensure_rootfs()
    except HarnessUnavailable as err:
        pytest.skip(f"kernel harness unavailable: {err}")
