"""GET / and /static/*: the small upload page for people, served by the app itself (no build step, no CDN).

The page only calls the public API (/v1/predict/batch, one request per upload; it draws the masks itself) from the
browser, so it needs no server-side state. It
stays out of the OpenAPI schema: it is not part of the API contract.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.static_assets import BASE_SECURITY_HEADERS, AllowListedFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

# The page loads nothing from elsewhere and runs no inline script or style, so a strict policy costs nothing and
# limits what injected markup could do. Slices and masks are drawn on canvases; downloads are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    **BASE_SECURITY_HEADERS,
    # Revalidate on every load, so a new release's page and script never mix with cached old ones.
    "Cache-Control": "no-cache",
}
ASSETS = AllowListedFiles(
    STATIC_DIR,
    media_types={
        "app.js": "text/javascript; charset=utf-8",
        "formats.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
    },
    headers=SECURITY_HEADERS,
    kind="static file",
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def read_index() -> FileResponse:
    """The upload page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def read_asset(name: str) -> FileResponse:
    """The page's script modules and style sheet."""
    return ASSETS.file_response(name)
