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


def test_the_page_works_under_a_path_prefix(page: Page, live_server: str) -> None:
    asked: list[str] = []
    failed: list[str] = []

    def prefix_stripping_proxy(route: Route) -> None:
        path = route.request.url.removeprefix(live_server)
        asked.append(path)
        if path.startswith(f"{PREFIX}/"):
            route.continue_(url=live_server + path.removeprefix(PREFIX))
        else:
            route.fulfill(status=404, body="not published by this proxy")

    page.route(f"{live_server}/**", prefix_stripping_proxy)
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
