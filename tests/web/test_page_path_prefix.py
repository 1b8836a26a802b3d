"""The upload page published under a path prefix, as a hospital's shared proxy does (https://research.example/bt/).

Docs review 45 F2: the page asked for /static/app.js, /static/style.css and /v1/..., which such a proxy does not
publish: an unstyled page whose uploads went to the proxy's own paths. The proxy here is Playwright's request routing:
what the page asks for under /bt/ goes to the service with the prefix stripped; anything else is answered 404.
"""

from __future__ import annotations

from playwright.sync_api import Page, Route, expect

from tests.conftest import TUMOR_SLICE

PREFIX = "/bt"
RESULT_TIMEOUT_MS = 30_000


def publish_under_prefix(page: Page, live_server: str) -> list[str]:
    """Route the page's requests as the proxy does; returns the paths asked for, in order."""
    asked: list[str] = []

    def prefix_stripping_proxy(route: Route) -> None:
        path = route.request.url.removeprefix(live_server)
        asked.append(path)
        if path.startswith(f"{PREFIX}/"):
            route.continue_(url=live_server + path.removeprefix(PREFIX))
        else:
            route.fulfill(status=404, body="not published by this proxy")

    page.route(f"{live_server}/**", prefix_stripping_proxy)
    return asked


def test_the_page_works_under_a_path_prefix(page: Page, live_server: str) -> None:
    asked = publish_under_prefix(page, live_server)
    failed: list[str] = []
    page.on("response", lambda response: failed.append(response.url) if response.status != 200 else None)
    page.goto(f"{live_server}{PREFIX}/")
    expect(page.locator("#notice")).to_contain_text("Research use only")

    with page.expect_response(lambda response: "/v1/predict/batch" in response.url, timeout=RESULT_TIMEOUT_MS) as got:
        page.set_input_files("#file-input", TUMOR_SLICE)
    assert got.value.status == 200
    expect(page.locator("#decision")).to_have_text("Tumor detected", timeout=RESULT_TIMEOUT_MS)

    assert [path for path in asked if not path.startswith(f"{PREFIX}/")] == []
    assert failed == []
    assert {
        f"{PREFIX}/static/style.css",
        f"{PREFIX}/static/app.js",
        f"{PREFIX}/static/formats.js",
        f"{PREFIX}/v1/predict/batch?mask_format=png",
    } <= set(asked)
    # The style sheet applied: the notice has its warning bar, which the browser's default style lacks.
    assert page.locator("#notice").evaluate("element => getComputedStyle(element).borderLeftStyle") == "solid"
    docs_link = page.locator("footer a", has_text="/docs")
    assert docs_link.evaluate("link => link.href") == f"{live_server}{PREFIX}/docs"


def test_swagger_ui_and_its_try_it_out_work_under_a_path_prefix(page: Page, live_server: str) -> None:
    """Review 45 left /docs at the host's root: its scripts, its schema and its "Try it out" calls went there."""
    asked = publish_under_prefix(page, live_server)

    page.goto(f"{live_server}{PREFIX}/docs")
    models = page.locator(".opblock-summary-path[data-path='/v1/models']").first
    expect(models).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    models.click()
    page.get_by_role("button", name="Try it out").click()
    with page.expect_response(lambda response: "/v1/models" in response.url, timeout=RESULT_TIMEOUT_MS) as got:
        page.get_by_role("button", name="Execute").click()

    assert got.value.status == 200
    assert [path for path in asked if not path.startswith(f"{PREFIX}/")] == []
    assert {f"{PREFIX}/openapi.json", f"{PREFIX}/static/docs/swagger-ui-bundle.js", f"{PREFIX}/v1/models"} <= set(asked)
    expect(page.locator(".curl-command").first).to_contain_text(f"{live_server}{PREFIX}/v1/models")


def test_redoc_works_under_a_path_prefix(page: Page, live_server: str) -> None:
    asked = publish_under_prefix(page, live_server)

    page.goto(f"{live_server}{PREFIX}/redoc")

    expect(page.locator("body")).to_contain_text("/v1/predict/batch", timeout=RESULT_TIMEOUT_MS)
    assert [path for path in asked if not path.startswith(f"{PREFIX}/")] == []
    assert {f"{PREFIX}/openapi.json", f"{PREFIX}/static/docs/redoc.standalone.js"} <= set(asked)
