"""Workspace sign-in with OpenID Connect against a real provider started here (``cloud.demo.oidc``, built from
authlib's server components): discovery, PKCE S256 enforced, RS256 tokens for the API's audience.

- The API: ``/ui/config.json`` and the page's content policy name the issuer; tokens are verified with the
  keys the issuer's discovery document names; another audience, another issuer or the dev key is refused.
- The page in headless Chromium (Debian's): ``/ui`` goes to the provider and back, the panel loads with the
  token; nothing is in localStorage, cookies or sessionStorage; a second tab is signed in without a
  redirect; the access token is renewed silently, in both tabs; sign-out in one tab signs both out; an
  answer with a wrong ``state`` is refused before any code is exchanged. Screenshots: ``tests/artifacts/signin_*.png``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.tokens import TokenError, TokenVerifier, mint_token
from cloud.demo.oidc import DevOpenIdProvider, DevUser
from cloud.settings import CloudSettings
from tests.chromium import launched_chromium
from tests.cloud.api.ui_live_server import LiveServer, Ward, seed_ward
from tests.waiting import wait_until

REDIRECT = "http://127.0.0.1:9/ui"  # the API's page, for the tests that need no API running
# auth.js renews a minute before expiry: a 72 s token is renewed about 12 s after sign-in.
SHORT_TTL_S = 72


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@pytest.fixture(scope="module")
def provider() -> Iterator[DevOpenIdProvider]:
    user = DevUser("dr.grey", role="clinician", care_teams=("renal",), name="Dr Grey")
    with DevOpenIdProvider([user], audience="rpm-api", redirect_uris=(REDIRECT,)) as running:
        yield running


# --- the API's side, no browser --------------------------------------------------------------------------

@pytest.mark.unit
def test_page_config_and_policy_name_the_issuer_and_only_its_origin(provider: DevOpenIdProvider) -> None:
    shell = TestClient(create_app(CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                                oidc_issuer=f"{provider.issuer}/realms/rpm", oidc_client_id="ward-ui",
                                                oidc_scopes="openid profile offline_access")))
    config = shell.get("/ui/config.json")
    assert config.status_code == 200
    assert config.json() == {"issuer": f"{provider.issuer}/realms/rpm", "client_id": "ward-ui",
                             "scopes": "openid profile offline_access", "audience": "rpm-api"}
    for path in ("/ui", "/ui/config.json", "/ui/static/auth.js"):
        policy = dict(d.strip().split(" ", 1) for d in shell.get(path).headers["content-security-policy"].split(";"))
        assert policy["connect-src"] == f"'self' {provider.issuer}", path  # the origin, not the realm's path
        assert policy["script-src"] == "'self'" and policy["default-src"] == "'none'"

    dev = TestClient(create_app(CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                              jwt_dev_key="dev-key-0123456789abcdef0123456789")))
    assert dev.get("/ui/config.json").json()["issuer"] is None
    assert "connect-src 'self';" in dev.get("/ui").headers["content-security-policy"]


@pytest.mark.unit
def test_a_malformed_issuer_is_refused_by_the_settings() -> None:
    for bad in ("login.example", "ftp://login.example", "https://login.example/?realm=x"):
        with pytest.raises(ValueError, match="RPM_OIDC_ISSUER"):
            CloudSettings(oidc_issuer=bad)


@pytest.mark.unit
def test_tokens_are_verified_with_the_keys_the_issuers_discovery_names(provider: DevOpenIdProvider) -> None:
    settings = CloudSettings(oidc_issuer=provider.issuer, jwt_dev_key="dev-key-0123456789abcdef0123456789")
    verifier = TokenVerifier(settings)
    user = provider.default_user
    principal = verifier.verify(provider.access_token(user))
    assert (principal.subject, principal.role, principal.care_teams) == ("dr.grey", "clinician", ("renal",))
    with pytest.raises(TokenError, match=r"(?i)audience"):
        verifier.verify(provider.access_token(user, audience="another-api"))
    # The dev key is not accepted once an issuer signs the tokens.
    with pytest.raises(TokenError):
        verifier.verify(mint_token(settings, role="admin", sub="ops"))
    # Another provider's token: unknown key, and another issuer.
    with DevOpenIdProvider([user], audience="rpm-api") as other:
        with pytest.raises(TokenError):
            verifier.verify(other.access_token(user))
        # Its keys named explicitly, the issuer still has to match.
        pinned = TokenVerifier(CloudSettings(oidc_issuer=provider.issuer, jwt_jwks_url=f"{other.issuer}/jwks.json"))
        with pytest.raises(TokenError, match=r"(?i)issuer"):
            pinned.verify(other.access_token(user))


@pytest.mark.unit
def test_a_discovery_document_for_another_issuer_is_refused(provider: DevOpenIdProvider) -> None:
    # The provider answers for its own address only; asked under an alias, its document names another issuer.
    alias = provider.issuer.replace("127.0.0.1", "localhost")
    verifier = TokenVerifier(CloudSettings(oidc_issuer=alias))
    with pytest.raises(TokenError, match="not for issuer"):
        verifier.verify(provider.access_token(provider.default_user))
    with pytest.raises(TokenError, match="unavailable"):  # not asked again at once
        verifier.verify(provider.access_token(provider.default_user))


@pytest.mark.unit
def test_the_provider_enforces_pkce_s256_and_single_use_codes(provider: DevOpenIdProvider) -> None:
    client = httpx.Client(base_url=provider.issuer, timeout=5)
    verifier, challenge = pkce()
    base = {"response_type": "code", "client_id": "rpm-ui", "redirect_uri": REDIRECT, "scope": "openid",
            "state": "s-1", "nonce": "n-1"}

    def answer(response: httpx.Response) -> dict[str, list[str]]:
        assert response.status_code == 302, response.text
        return parse_qs(urlsplit(response.headers["location"]).query)

    assert answer(client.get("/authorize", params=base))["error"] == ["invalid_request"]  # no challenge
    plain = client.get("/authorize", params={**base, "code_challenge": verifier, "code_challenge_method": "plain"})
    assert answer(plain)["error"] == ["invalid_request"]
    got = answer(client.get("/authorize", params={**base, "code_challenge": challenge,
                                                  "code_challenge_method": "S256"}))
    assert got["state"] == ["s-1"]
    exchange = {"grant_type": "authorization_code", "code": got["code"][0], "redirect_uri": REDIRECT,
                "client_id": "rpm-ui"}
    assert client.post("/token", data=exchange).json()["error"] == "invalid_request"  # no verifier
    assert client.post("/token", data={**exchange, "code_verifier": pkce()[0]}).json()["error"] == "invalid_grant"
    tokens = client.post("/token", data={**exchange, "code_verifier": verifier})
    assert tokens.status_code == 200 and {"access_token", "id_token", "refresh_token"} <= tokens.json().keys()
    assert client.post("/token", data={**exchange, "code_verifier": verifier}).json()["error"] == "invalid_grant"
    # A redirect address the client did not register gets no redirect at all.
    evil = client.get("/authorize", params={**base, "redirect_uri": "http://evil.example/ui",
                                            "code_challenge": challenge, "code_challenge_method": "S256"})
    assert evil.status_code == 400 and "location" not in evil.headers


# --- the page in Chromium ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


@dataclass
class SignInWorld:
    api: str
    provider: DevOpenIdProvider
    ward: Ward
    user: DevUser

    def calls(self, path: str, grant_type: str = "") -> int:
        return sum(1 for _, p, g in self.provider.requests if p == path and (not grant_type or g == grant_type))


@pytest.fixture
def world(fresh_database_url: str, unique_id: str) -> Iterator[SignInWorld]:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        ward = seed_ward(conn, unique_id)
    user = DevUser(f"{unique_id}-dr", role="clinician", care_teams=(ward.team,), name="Dr Signin")
    with DevOpenIdProvider([user], audience="rpm-api", access_ttl_s=SHORT_TTL_S) as provider:
        settings = CloudSettings(database_url=fresh_database_url, oidc_issuer=provider.issuer, api_pool_max=4)
        with LiveServer(create_app(settings)) as server:
            provider.allow_redirect_uri(f"{server.url}/ui")
            yield SignInWorld(server.url, provider, ward, user)


def new_tab(context: object, world: SignInWorld) -> object:
    tab = context.new_page()  # type: ignore[attr-defined]
    tab.problems = []
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    # The page talks to its own origin and the provider's, nothing else.
    tab.on("request", lambda r: r.url.startswith((world.api, world.provider.issuer))
           or tab.problems.append(f"outside request: {r.url}"))
    return tab


def auth_state(tab: object) -> dict:
    """``rpmAuth.state()`` once the page knows it; empty while the tab is between pages (the round trip)."""
    from playwright.sync_api import Error

    try:
        return tab.evaluate("window.rpmAuth ? window.rpmAuth.ready.then(() => window.rpmAuth.state()) : {}"
                            )  # type: ignore[attr-defined]
    except Error as error:
        if "context was destroyed" in str(error):
            return {}
        raise


@pytest.mark.integration
def test_sign_in_round_trip_shared_tabs_silent_renewal_and_sign_out(browser: object, world: SignInWorld,
                                                                    artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    try:
        first = new_tab(context, world)
        first.goto(f"{world.api}/ui#/")
        # To the provider and back: the answer's code and state are gone from the address bar at once.
        wait_until(lambda: auth_state(first).get("signedIn"), 15, "the first tab to be signed in")
        assert world.calls("/authorize") == 1 and world.calls("/token", "authorization_code") == 1
        assert urlsplit(first.url).query == "" and first.url.startswith(f"{world.api}/ui")
        crisis = world.ward.patients["crisis"]
        expect(first.locator("main")).to_contain_text(f"Patient {crisis}")  # the panel, with the token
        state = auth_state(first)
        assert state["user"] == {"sub": world.user.sub, "name": "Dr Signin"}
        token = state["token"]
        # An API call with that token succeeds; the token is in memory only.
        status = first.evaluate("t => fetch('/v1/patients', {headers: {Authorization: `Bearer ${t}`}})"
                                ".then(r => r.status)", token)
        assert status == 200
        kept = first.evaluate("[JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie]")
        assert all(token not in text for text in kept) and kept[0] == "{}" and kept[2] == ""
        first.screenshot(path=str(artifacts_dir / "signin_panel.png"))

        # A second tab of the origin is signed in by the first, without going to the provider.
        second = new_tab(context, world)
        second.goto(f"{world.api}/ui#/")
        shared = wait_until(lambda: auth_state(second).get("token"), 10, "the second tab's session")
        assert shared == auth_state(first)["token"]
        expect(second.locator("main")).to_contain_text(f"Patient {crisis}")
        assert world.calls("/authorize") == 1

        # Silent renewal before expiry (a refresh-token grant), once for both tabs.
        wait_until(lambda: world.calls("/token", "refresh_token") >= 1, SHORT_TTL_S, "a silent renewal")
        renewed = wait_until(lambda: (s := auth_state(first).get("token")) != token and s, 10, "the renewed token")
        wait_until(lambda: auth_state(second).get("token") == renewed, 10, "the second tab to share the renewal")
        assert second.evaluate("t => fetch('/v1/patients', {headers: {Authorization: `Bearer ${t}`}})"
                               ".then(r => r.status)", renewed) == 200
        time.sleep(0.5)
        assert world.calls("/token", "refresh_token") == 1, "one tab renews for all"
        assert world.calls("/authorize") == 1

        # Sign-out in one tab signs out both; the provider's session ends too, and nobody is sent back to it.
        second.evaluate("window.rpmAuth.signOut()")
        wait_until(lambda: world.calls("/logout") == 1, 10, "the provider's end-session endpoint")
        wait_until(lambda: auth_state(first).get("signedIn") is False, 10, "the first tab to be signed out")
        second.wait_for_url(f"{world.api}/ui")
        assert not auth_state(second)["signedIn"] and auth_state(second)["token"] is None
        expect(first.locator("#sign-in")).to_be_visible()
        first.screenshot(path=str(artifacts_dir / "signin_signed_out.png"))
        assert world.calls("/authorize") == 1
        for tab in (first, second):
            assert tab.problems == [], tab.problems
    finally:
        context.close()


@pytest.mark.integration
def test_an_answer_with_a_wrong_state_is_refused_before_the_code_is_exchanged(browser: object,
                                                                             world: SignInWorld) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    answers: list[str] = []

    def hold_the_answer(route: object) -> None:
        # The provider's real answer (a redirect back with code and state), kept from the page.
        answer = route.fetch(max_redirects=0)  # type: ignore[attr-defined]
        answers.append(answer.headers["location"])
        route.fulfill(status=200, content_type="text/plain", body="held")  # type: ignore[attr-defined]

    try:
        context.route(f"{world.provider.issuer}/authorize?*", hold_the_answer)
        tab = new_tab(context, world)
        tab.goto(f"{world.api}/ui#/", wait_until="commit")
        # Route handlers run while Playwright is called: wait through it, not beside it.
        wait_until(lambda: tab.wait_for_timeout(50) or answers, 10, "the provider's answer")
        context.unroute_all()
        query = parse_qs(urlsplit(answers[0]).query)
        assert query["code"] and query["state"]
        # The same, real code, back with a state this tab never sent (a forged or injected answer).
        tab.goto(f"{world.api}/ui?code={query['code'][0]}&state=forged-{secrets.token_hex(4)}")
        state = auth_state(tab)
        assert not state["signedIn"] and "refused" in state["error"]
        assert world.calls("/token") == 0, "no code may be exchanged for a foreign answer"
        assert urlsplit(tab.url).query == ""  # the code is out of the address bar anyway
    finally:
        context.close()


@pytest.mark.integration
def test_a_replayed_id_token_with_another_nonce_is_refused(browser: object, world: SignInWorld) -> None:
    # A genuine ID token of an earlier sign-in, as an attacker who saw one could put in a token answer.
    verifier, challenge = pkce()
    earlier = httpx.get(f"{world.provider.issuer}/authorize", params={
        "response_type": "code", "client_id": "rpm-ui", "redirect_uri": f"{world.api}/ui", "scope": "openid",
        "state": "s", "nonce": "an-earlier-nonce", "code_challenge": challenge, "code_challenge_method": "S256"})
    code = parse_qs(urlsplit(earlier.headers["location"]).query)["code"][0]
    replayed = httpx.post(f"{world.provider.issuer}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": f"{world.api}/ui", "client_id": "rpm-ui",
        "code_verifier": verifier}).json()["id_token"]

    def swap_the_id_token(route: object) -> None:
        answer = route.fetch()  # type: ignore[attr-defined]
        body = {**answer.json(), "id_token": replayed}
        route.fulfill(response=answer, json=body)  # type: ignore[attr-defined]

    context = browser.new_context()  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    try:
        context.route(f"{world.provider.issuer}/token", swap_the_id_token)
        tab = new_tab(context, world)
        tab.goto(f"{world.api}/ui#/")
        state = wait_until(lambda: (s := auth_state(tab)) and s.get("error") and s, 15, "the refusal")
        assert not state["signedIn"] and "nonce" in state["error"]
        assert tab.evaluate("window.rpmAuth.token()") is None
    finally:
        context.close()


@pytest.mark.integration
def test_when_the_renewing_tab_closes_another_tab_renews(browser: object, world: SignInWorld) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    try:
        first = new_tab(context, world)
        first.goto(f"{world.api}/ui#/")
        wait_until(lambda: auth_state(first).get("signedIn"), 15, "the first tab to be signed in")
        second = new_tab(context, world)
        second.goto(f"{world.api}/ui#/")
        token = wait_until(lambda: auth_state(second).get("token"), 10, "the second tab's session")
        first.close()  # the tab that held the renewal duty
        wait_until(lambda: second.wait_for_timeout(100) or world.calls("/token", "refresh_token") >= 1,
                   SHORT_TTL_S, "the remaining tab to renew")
        assert wait_until(lambda: (t := auth_state(second).get("token")) != token and t, 10, "the renewed token")
        assert world.calls("/authorize") == 1
    finally:
        context.close()
