"""The accessibility audit: Deque's axe-core (from the npm registry, pinned in tests/a11y/package.json and its
package-lock.json) run inside the page in real Chromium, failing on any *serious* or *critical* violation.

``axe_source`` is a session fixture: it installs axe-core with ``npm ci --prefix tests/a11y`` when
``node_modules`` is missing and npm exists, else skips with the reason. ``audit(page, name, artifacts_dir)``
runs axe on what the page shows now (WCAG 2.0/2.1/2.2 A and AA rules plus axe's best practices), writes the
whole result to ``tests/artifacts/a11y_<name>.json`` and fails naming each serious or critical violation with
the elements it found. axe is evaluated through the DevTools protocol, not a ``<script>`` tag, so the page's
content policy (``script-src 'self'``) stays in force while the audit runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
AXE_FILE = HERE / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = frozenset({"serious", "critical"})
# What axe checks: the WCAG 2.2 AA success criteria it automates (2.0, 2.1 and 2.2 tags), and its best practices
# (landmarks, one main heading), which report at lower impact unless they are serious.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe.min.js, installed from the lock file on first use."""
    if not AXE_FILE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed (apt-get install npm): the accessibility audit needs axe-core from npm")
        done = subprocess.run([npm, "ci", "--prefix", str(HERE), "--no-audit", "--no-fund"], capture_output=True,
                              text=True, timeout=NPM_TIMEOUT_S, check=False)
        if done.returncode != 0 or not AXE_FILE.exists():
            pytest.skip(f"npm ci --prefix tests/a11y failed (no registry?): {done.stderr.strip()[-400:]}")
    return AXE_FILE.read_text(encoding="utf-8")


def run_axe(page: Any, axe_source: str, context: str | None = None) -> dict[str, Any]:
    """axe's result object for ``context`` (a CSS selector; the whole document by default)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source)  # a script evaluated over CDP, like the console: the page's CSP does not apply
    return page.evaluate(
        """async ([context, tags]) => {
            const result = await window.axe.run(context ?? document, { runOnly: { type: "tag", values: tags },
              resultTypes: ["violations"] });
            return { url: result.url, testEngine: result.testEngine,
              violations: result.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                tags: v.tags, nodes: v.nodes.map(n => ({ target: n.target, impact: n.impact, html: n.html,
                  summary: n.failureSummary })) })),
              passes: result.passes.length, incomplete: result.incomplete.map(v => v.id) };
        }""", [context, TAGS])


def blocking(result: dict[str, Any]) -> list[str]:
    """One line per serious or critical violation and element: rule, impact, help, selector, what failed."""
    lines = []
    for violation in result["violations"]:
        for node in violation["nodes"]:
            impact = node["impact"] or violation["impact"]
            if impact in BLOCKING:
                summary = " ".join((node["summary"] or "").split())
                lines.append(f"{violation['id']} ({impact}): {violation['help']} at {node['target']}: {summary}")
    return lines


def audit(page: Any, axe_source: str, name: str, artifacts_dir: Path, context: str | None = None) -> dict[str, Any]:
    """Run axe on the page as shown; keep the result as an artefact; fail on serious or critical violations."""
    result = run_axe(page, axe_source, context)
    (artifacts_dir / f"a11y_{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    problems = blocking(result)
    assert problems == [], f"axe-core found serious or critical violations on {name}:\n" + "\n".join(problems)
    return result
