"""The API's own documentation, offline: ``/docs`` (Swagger UI) and ``/redoc`` from packaged assets, no CDN.

The JavaScript and CSS come from the ``fastapi-offline`` wheel (it bundles Swagger UI 5 and Redoc 2 and
follows their releases); only its files are used, not its app factory, because its pages start Swagger UI
from an inline script, and these pages run under a policy that allows no inline script: the start-up code
is a file served here. Assets are served by name from a fixed list, never by path.

Redoc styles itself with injected ``<style>`` elements and runs its search in a worker made from a blob, so
its policy allows inline styles and blob workers; Swagger UI's needs neither. Both may connect to this origin
only (the OpenAPI document; "Try it out" calls the API itself).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from cloud.api.problems import not_found

router = APIRouter(include_in_schema=False)
ASSET_PREFIX = "/docs/assets"
_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
           "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
_COMMON = "default-src 'none'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; " \
          "frame-ancestors 'none'"
SWAGGER_POLICY = f"{_COMMON}; script-src 'self'; style-src 'self'"
REDOC_POLICY = f"{_COMMON}; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self' data:; " \
               "worker-src 'self' blob:"

# Swagger UI's start-up, as FastAPI's own page sets it (get_swagger_ui_html), read from the page's data.
_SWAGGER_INIT = """\
"use strict";
window.addEventListener("load", () => {
  const page = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: page.dataset.openapi,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""


def _asset_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def _page(title: str, head: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"{head}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root, title = _root(request), f"{request.app.title} - Swagger UI"
    head = (f'<link rel="icon" href="{root}{ASSET_PREFIX}/favicon.png">\n'
            f'<link rel="stylesheet" href="{root}{ASSET_PREFIX}/swagger-ui.css">')
    body = (f'<div id="swagger-ui" data-openapi="{root}{request.app.openapi_url}"></div>\n'
            f'<script src="{root}{ASSET_PREFIX}/swagger-ui-bundle.js"></script>\n'
            f'<script src="{root}{ASSET_PREFIX}/swagger-init.js"></script>')
    return HTMLResponse(_page(title, head, body), headers={"Content-Security-Policy": SWAGGER_POLICY})


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root, title = _root(request), f"{request.app.title} - ReDoc"
    head = f'<link rel="icon" href="{root}{ASSET_PREFIX}/favicon.png">'
    # Redoc starts itself on a <redoc spec-url> element: no start-up script needed.
    body = (f'<redoc spec-url="{root}{request.app.openapi_url}"></redoc>\n'
            f'<script src="{root}{ASSET_PREFIX}/redoc.standalone.js"></script>')
    return HTMLResponse(_page(title, head, body), headers={"Content-Security-Policy": REDOC_POLICY})


@router.get(f"{ASSET_PREFIX}/swagger-init.js")
def swagger_init() -> Response:
    return Response(_SWAGGER_INIT, media_type="text/javascript; charset=utf-8")


@router.get(f"{ASSET_PREFIX}/{{name}}")
def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise not_found("file")
    return FileResponse(_asset_dir() / name, media_type=media_type)


@router.get("/")
def home(request: Request) -> RedirectResponse:
    # The workspace is what a person opening the API's address wants; the API itself lives under /v1.
    return RedirectResponse(f"{_root(request)}/ui", status_code=307)
