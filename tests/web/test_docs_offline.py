"""/docs and /redoc in headless Chromium with every request to another host blocked, as on a network without
internet: Swagger UI and ReDoc must come from the service itself."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, Route, expect

OPERATIONS = ("/v1/predict", "/v1/predict/batch", "/v1/overlay", "/v1/models")


def block_other_hosts(page: Page, base_url: str) -> list[str]:
    """Abort every request that does not go to the service; returns the list of aborted URLs."""
    blocked: list[str] = []

    def handle(route: Route) -> None:
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", handle)
    return blocked


def test_swagger_ui_renders_operations_without_internet(page: Page, live_server: str, screenshot_dir: Path) -> None:
    blocked = block_other_hosts(page, live_server)

    page.goto(f"{live_server}/docs")

    expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
    for path in OPERATIONS:
        expect(page.locator(f".opblock-summary-path[data-path='{path}']").first).to_be_visible()
    expect(page.locator("button.authorize")).to_be_visible()  # the X-API-Key security scheme
    page.locator(".opblock-summary-path[data-path='/v1/predict']").first.click()
    expect(page.locator(".opblock-body").first).to_contain_text("unsupported_media_type")
    page.screenshot(path=screenshot_dir / "docs-swagger-offline.png", full_page=False)
    assert blocked == []


def test_redoc_renders_operations_without_internet(page: Page, live_server: str, screenshot_dir: Path) -> None:
    blocked = block_other_hosts(page, live_server)

    page.goto(f"{live_server}/redoc")

    expect(
        page.get_by_text("Tumor probability of one slice, and its mask when a tumor is detected.").first
    ).to_be_visible(timeout=30_000)
    expect(page.locator("body")).to_contain_text("/v1/predict/batch")
    page.screenshot(path=screenshot_dir / "docs-redoc-offline.png", full_page=False)
    assert blocked == []  # not even the Redocly logo its bundle asks for


def test_the_docs_pages_cannot_be_framed_and_render_under_their_policy(page: Page, live_server: str) -> None:
    """Swagger UI's "Authorize" dialog takes an API key: the pages must not be framed by another site, and their
    Content-Security-Policy must still let them render (a violation shows as a console error)."""
    refused: list[str] = []
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
    )
    block_other_hosts(page, live_server)
    for path, rendered in (("/docs", page.locator(".opblock").first), ("/redoc", page.get_by_text("/v1/models").first)):
        response = page.goto(f"{live_server}{path}")
        assert response is not None
        policy = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert response.headers.get("x-content-type-options") == "nosniff"
        expect(rendered).to_be_visible(timeout=30_000)
    assert refused == []
