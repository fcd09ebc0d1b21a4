"""The clinician web page: ``/ui`` serves a static shell (HTML, CSS, JavaScript in ``cloud/api/static``).

The shell itself needs no authorisation and holds no patient data: the page calls the ``/v1`` API with
the bearer token of the sign-in below (in development without a provider: one the user pastes, or passes
once as ``/ui#token=...``; a URL fragment never reaches a server or its logs), so every clinical read goes
through the same authorisation and audit as any other client. Nothing is fetched from elsewhere: no CDN,
no build step; charts are inline SVG drawn by the page.

Sign-in: with ``RPM_OIDC_ISSUER`` set, ``static/auth.js`` signs the user in with OpenID Connect
(authorization code + PKCE, from the page as a public client) and keeps the tokens in memory only, shared
between the tabs of this origin over a ``BroadcastChannel``. ``/ui/config.json`` tells it the issuer,
client id and scopes; the page's policy then lets it connect to the issuer's origin and nowhere else.

``/ui/metrics.json`` is the metric catalogue (name, kind, canonical UCUM unit) so the page labels values
in the panel, whose compact rows carry no units, with the units the API stores them in.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from cloud.api.problems import not_found
from gateway.metrics import METRICS

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page may talk only to its own origin (and the sign-in provider's) and run only its own files: a strict
# policy makes an injected script inert and keeps the token from leaving for another host.
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; "
           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # as every answer of the API (cloud.api.app.SECURITY_HEADERS)
}


def issuer_origin(issuer: str | None) -> str | None:
    """``scheme://host[:port]`` of the OIDC issuer (an http(s) URL, checked by the settings): what the page may
    connect to besides itself."""
    if not issuer:
        return None
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}"


@lru_cache(maxsize=8)
def page_headers(issuer: str | None) -> dict[str, str]:
    origin = issuer_origin(issuer)
    connect = "'self'" if origin is None else f"'self' {origin}"
    return {"Content-Security-Policy": _POLICY.format(connect=connect), **_HEADERS}


def _headers(request: Request) -> dict[str, str]:
    return page_headers(request.app.state.settings.oidc_issuer)


def _static_files() -> dict[str, Path]:
    """The servable files by name: a fixed list read from the folder, so a request names a file, never a path."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


@router.get("")
def page(request: Request) -> FileResponse:
    # The sign-in callback (``/ui?code=...&state=...``) lands here too: auth.js reads it, then clears it.
    return FileResponse(STATIC_DIR / "index.html", media_type=_MEDIA_TYPES[".html"], headers=_headers(request))


@router.get("/me")
def patient_page(request: Request) -> FileResponse:
    """The patient's own page (issue 20): a shell like ``/ui``, no patient data in it; ``me.js`` asks ``/v1/me``
    whose record the token owns. The sign-in callback (``/ui/me?code=...``) lands here too."""
    return FileResponse(STATIC_DIR / "me.html", media_type=_MEDIA_TYPES[".html"], headers=_headers(request))


@router.get("/report")
def report_page(request: Request) -> FileResponse:
    """The printable month-end RPM report (static shell; its data comes from /v1 with the page's token)."""
    return FileResponse(STATIC_DIR / "report.html", media_type=_MEDIA_TYPES[".html"], headers=_headers(request))


@router.get("/")
def page_with_slash() -> RedirectResponse:
    # Relative links in the page resolve against /ui; one address keeps them (and the fragment) simple.
    return RedirectResponse("/ui", status_code=308)


@router.get("/config.json")
def sign_in_config(request: Request) -> JSONResponse:
    """What auth.js needs to sign in, unauthenticated (it is needed before there is a token); no secret in it:
    the page is a public client. ``issuer`` null: no provider configured, the page asks for a pasted token."""
    settings = request.app.state.settings
    body = {"issuer": settings.oidc_issuer, "client_id": settings.oidc_client_id if settings.oidc_issuer else None,
            "scopes": settings.oidc_scopes, "audience": settings.jwt_audience}
    return JSONResponse(body, headers=_headers(request))


@router.get("/metrics.json")
def metric_catalogue(request: Request) -> JSONResponse:
    body: dict[str, Any] = {name: {"kind": str(m.kind), "unit": m.unit} for name, m in METRICS.items()}
    return JSONResponse(body, headers=_headers(request))


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> FileResponse:
    path = _static_files().get(name)
    if path is None:
        raise not_found("file")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_headers(request))
