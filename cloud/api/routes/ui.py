"""The clinician web page: ``/ui`` serves a static shell (HTML, CSS, JavaScript in ``cloud/api/static``).

The shell itself needs no authorisation and holds no patient data: the page calls the ``/v1`` API with
the bearer token the user pastes (or passes once as ``/ui#token=...``; a URL fragment never reaches a
server or its logs), so every clinical read goes through the same authorisation and audit as any other
client. Nothing is fetched from elsewhere: no CDN, no build step; charts are inline SVG drawn by the page.

``/ui/metrics.json`` is the metric catalogue (name, kind, canonical UCUM unit) so the page labels values
in the panel, whose compact rows carry no units, with the units the API stores them in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from cloud.api.problems import not_found
from gateway.metrics import METRICS

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page may talk only to its own origin and run only its own files: a strict policy makes an injected
# script inert and keeps the token from leaving for another host.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # as every answer of the API (cloud.api.app.SECURITY_HEADERS)
}


def _static_files() -> dict[str, Path]:
    """The servable files by name: a fixed list read from the folder, so a request names a file, never a path."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


@router.get("")
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)


@router.get("/")
def page_with_slash() -> RedirectResponse:
    # Relative links in the page resolve against /ui; one address keeps them (and the fragment) simple.
    return RedirectResponse("/ui", status_code=308)


@router.get("/metrics.json")
def metric_catalogue() -> JSONResponse:
    body: dict[str, Any] = {name: {"kind": str(m.kind), "unit": m.unit} for name, m in METRICS.items()}
    return JSONResponse(body, headers=_HEADERS)


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    path = _static_files().get(name)
    if path is None:
        raise not_found("file")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)
