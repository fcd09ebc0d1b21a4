"""The API's documentation works offline: ``/docs`` (Swagger UI) and ``/redoc`` load only files this API serves
(every reference in their HTML is fetched from the app itself), under a policy with no inline script, and
headless Chromium (Debian's) renders every operation of the OpenAPI document while every request to another
host is blocked. ``/`` sends a person to the workspace. Screenshots: ``tests/artifacts/docs_*.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.settings import CloudSettings
from tests.chromium import launched_chromium
from tests.cloud.api.ui_live_server import LiveServer

REFERENCE_ATTRIBUTES = {"src", "href", "spec-url", "data-openapi"}
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.found += [value for name, value in attrs if name in REFERENCE_ATTRIBUTES and value]
        self._in_script_without_src = tag == "script" and not named.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script_without_src = False


def references(html: str) -> _References:
    parser = _References()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def shell() -> TestClient:
    # No lifespan: the docs need no database.
    return TestClient(create_app(CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                               jwt_dev_key="docs-test-key-0123456789abcdef")))


@pytest.mark.unit
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_and_every_file_it_references_are_served_by_the_api(shell: TestClient, page: str) -> None:
    response = shell.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    found = references(response.text)
    assert found.inline_scripts == 0, "the policy allows no inline script, so the page must have none"
    assert len(found.found) >= 3, found.found  # icon, script(s), the OpenAPI document, (stylesheet)
    kinds = set()
    for reference in found.found:
        parts = urlsplit(reference)
        assert not parts.scheme and not parts.netloc and reference.startswith("/"), f"off-host: {reference}"
        fetched = shell.get(reference)
        assert fetched.status_code == 200, reference
        assert len(fetched.content) > 100, reference
        kinds.add(fetched.headers["content-type"].split(";")[0])
    assert {"text/javascript", "application/json", "image/png"} <= kinds
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"


@pytest.mark.unit
def test_only_the_packaged_doc_files_are_served(shell: TestClient) -> None:
    assert shell.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    for name in ("missing.js", "..%2F__init__.py", "core.py", "%2E%2E%2Fconsts.py"):
        response = shell.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert "problem+json" in response.headers["content-type"]


@pytest.mark.unit
def test_the_root_address_leads_to_the_workspace(shell: TestClient) -> None:
    response = shell.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui"
    assert "/" not in shell.get("/openapi.json").json()["paths"]


# --- rendered in Chromium, offline ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


@pytest.fixture(scope="module")
def live_docs(database_url: str) -> Iterator[tuple[str, int]]:
    app = create_app(CloudSettings(database_url=database_url, jwt_dev_key="docs-test-key-0123456789abcdef",
                                   api_pool_max=2))
    # Both pages list an operation under each of its tags.
    paths = app.openapi()["paths"].values()
    operations = sum(max(1, len(op.get("tags", ()))) for item in paths for op in item.values())
    with LiveServer(app) as server:
        yield server.url, operations


@pytest.mark.integration
@pytest.mark.parametrize(("page", "operation", "alerts_path"), [
    ("/docs", ".opblock", ".opblock-summary-path[data-path='/v1/alerts/{alert_id}/acknowledge']"),
    ("/redoc", "[data-section-id^='operation/']", 'text="/v1/alerts/{alert_id}/acknowledge"'),
])
def test_docs_render_every_operation_with_other_hosts_blocked(browser: object, live_docs: tuple[str, int],
                                                             page: str, operation: str, alerts_path: str,
                                                             artifacts_dir: Path) -> None:
    from playwright.sync_api import Route, expect

    url, operations = live_docs
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(20_000)
    blocked: list[str] = []
    problems: list[str] = []

    def only_this_host(route: Route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_this_host)
    try:
        tab = context.new_page()
        tab.on("console", lambda m: m.type == "error" and problems.append(m.text))
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.goto(f"{url}{page}")
        expect(tab.locator(operation)).to_have_count(operations)
        expect(tab.locator(alerts_path).first).to_be_attached()
        tab.screenshot(path=str(artifacts_dir / f"docs_{page.strip('/')}.png"))
    finally:
        context.close()
    assert operations > 20
    assert blocked == [], f"the page asked other hosts: {blocked}"
    # A refused script or style (the policy) shows here. Redoc's menu asks for its maker's logo from a CDN
    # whatever its options: the policy refuses it before any request (the image then hides itself).
    assert [p for p in problems if REDOC_LOGO not in p] == [], problems
