"""GET /docs and /redoc: Swagger UI and ReDoc from files installed with the `fastapi-offline` package, so the API
documentation works on networks without internet (FastAPI's own pages load their scripts from a CDN).

The pages are added to the app itself (not through a router) so that they sit beside /openapi.json: the API-key
check covers them like the schema. Their scripts and style sheets hold no data and are public, under /static/docs/.

The pages ask for the schema and their files by relative URLs, and the schema names its server as "." (the folder
it is served from), so /docs works, "Try it out" included, when a proxy publishes the service under a path prefix.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from starlette.requests import Request

from app.api.static_assets import BASE_SECURITY_HEADERS, AllowListedFiles

ASSET_DIR = Path(str(files("fastapi_offline") / "static"))
ASSET_PREFIX = "/static/docs"
# Relative to /docs and /redoc, so that under a proxy's prefix (/bt/docs) they resolve to /bt/static/docs/...
RELATIVE_ASSET_PREFIX = ASSET_PREFIX.removeprefix("/")
RELATIVE_OPENAPI_URL = "openapi.json"
# Swagger UI resolves the schema's server "." against the schema's URL as written in its settings, so that URL is
# made absolute in the browser (the service does not know the prefix a proxy strips).
SWAGGER_SCHEMA_SETTING = f"url: '{RELATIVE_OPENAPI_URL}',"
ABSOLUTE_SWAGGER_SCHEMA_SETTING = f"url: new URL('{RELATIVE_OPENAPI_URL}', document.baseURI).href,"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# ReDoc's sidebar always shows Redocly's logo from their CDN, which the policy below blocks (a console error, and a
# request to another host on networks that have internet). The bundle is served with an empty picture instead.
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_PICTURE_URL = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
# Swagger UI and ReDoc start from an inline script and set inline styles, so those stay allowed; everything else is
# held to this service: no framing (the "Authorize" dialog takes an API key), no plugins, no <base> rewrite, no
# requests or forms to other hosts, and no MIME sniffing of the assets.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, **BASE_SECURITY_HEADERS}
# Only these files of the package can be served, whatever the path says.
ASSETS = AllowListedFiles(
    ASSET_DIR,
    media_types={
        "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8",
        "redoc.standalone.js": "text/javascript; charset=utf-8",
        "favicon.png": "image/png",
    },
    headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
    kind="documentation file",
)

router = APIRouter(include_in_schema=False)


@router.get(ASSET_PREFIX + "/{name}")
async def read_docs_asset(name: str) -> Response:
    """Swagger UI's and ReDoc's scripts, style sheet and icon."""
    if name == "redoc.standalone.js":  # served from memory, its CDN logo replaced
        return Response(_redoc_bundle(), media_type=ASSETS.media_type(name), headers=dict(ASSETS.headers))
    return ASSETS.file_response(name)


@cache
def _redoc_bundle() -> bytes:
    return (ASSET_DIR / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO_URL, EMPTY_PICTURE_URL)


def add_docs_pages(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect and /redoc on `app` (create it with docs_url=None, redoc_url=None)."""
    if app.openapi_url != "/" + RELATIVE_OPENAPI_URL:
        raise ValueError(f"the docs pages ask for {RELATIVE_OPENAPI_URL} beside them, not {app.openapi_url}")
    title = app.title

    async def read_swagger_ui(request: Request) -> HTMLResponse:
        return _secured(
            _with_absolute_schema_url(
                get_swagger_ui_html(
                    openapi_url=RELATIVE_OPENAPI_URL,
                    title=f"{title}: Swagger UI",
                    swagger_js_url=f"{RELATIVE_ASSET_PREFIX}/swagger-ui-bundle.js",
                    swagger_css_url=f"{RELATIVE_ASSET_PREFIX}/swagger-ui.css",
                    swagger_favicon_url=f"{RELATIVE_ASSET_PREFIX}/favicon.png",
                    oauth2_redirect_url=OAUTH2_REDIRECT_URL,
                    # Keeps the key entered under "Authorize" across reloads of the page (in this browser only).
                    swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
                )
            )
        )

    async def read_swagger_ui_redirect(request: Request) -> HTMLResponse:
        return _secured(get_swagger_ui_oauth2_redirect_html())

    async def read_redoc(request: Request) -> HTMLResponse:
        return _secured(
            get_redoc_html(
                openapi_url=RELATIVE_OPENAPI_URL,
                title=f"{title}: ReDoc",
                redoc_js_url=f"{RELATIVE_ASSET_PREFIX}/redoc.standalone.js",
                redoc_favicon_url=f"{RELATIVE_ASSET_PREFIX}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.add_route("/docs", read_swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, read_swagger_ui_redirect, include_in_schema=False)
    app.add_route("/redoc", read_redoc, include_in_schema=False)
    app.include_router(router)


def _with_absolute_schema_url(page: HTMLResponse) -> HTMLResponse:
    html = page.body.decode()
    if html.count(SWAGGER_SCHEMA_SETTING) != 1:
        raise RuntimeError("FastAPI's Swagger UI page no longer sets the schema URL as this module expects")
    return HTMLResponse(html.replace(SWAGGER_SCHEMA_SETTING, ABSOLUTE_SWAGGER_SCHEMA_SETTING))


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(SECURITY_HEADERS)
    return page
