"""The real service on a free loopback port, and headless Chromium (the system's binary) driven by Playwright.

The servers are started once per test worker and shared by every page test file it runs (about 2 s of a worker's
time for each file saved): each test has its own tab and context, and the servers keep no state a test reads."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from app.api.routes import web
from app.main import create_app
from app.settings import Settings
from tests.conftest import NO_SLICE, make_tiny_model_dir
from tests.service_processes import answers_ready

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
READY_TIMEOUT_SECONDS = 120.0


def find_chromium() -> str | None:
    """`CHROMIUM_PATH` if set, else the first Chromium on PATH (Debian's package installs /usr/bin/chromium)."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured if Path(configured).is_file() else None
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def create_app_with_page(settings: Settings) -> FastAPI:
    """The service's app with the web page's routes, whether or not `create_app` already includes them."""
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(web.router)
    return app


def wait_until_ready(base_url: str, server_thread: threading.Thread) -> None:
    """Poll readiness: the models load in the background after the server starts listening."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not server_thread.is_alive():
            raise RuntimeError("the test server stopped during startup; see its log above")
        if answers_ready(base_url, timeout_seconds=2.0):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{base_url}/health/ready did not answer 200 within {READY_TIMEOUT_SECONDS:.0f} s")


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """Base URL of the service run by uvicorn in a thread, once its models are ready."""
    app = create_app_with_page(settings)
    # Bind first, so the port is known and free before uvicorn starts (no race for a guessed port).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="web-test-server", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, thread)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


@pytest.fixture(scope="session")
def live_server(tiny_model_dir: Path) -> Iterator[str]:
    """The service on the tiny models (every slice positive)."""
    with serving(Settings(model_dir=tiny_model_dir)) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def negative_live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on tiny models whose threshold (1.01) no probability reaches: every slice tumor-free."""
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("negative_models"), classifier_threshold=NO_SLICE)
    with serving(Settings(model_dir=model_dir)) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def unsure_live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on tiny models that call every slice positive but outline a slice sent alone only at probability
    1.0 (`single_slice_mask_min_probability`), which an untrained sigmoid never reaches."""
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("unsure_models"), single_slice_mask_min_probability=1.0)
    with serving(Settings(model_dir=model_dir)) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def cleared_live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on tiny models that call every slice positive (threshold 0.0) but whose series clean-up drops
    every mask piece (`series_min_component_voxels` above any volume's voxel count): in a series, every slice is at or
    above the threshold and yet not detected."""
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("cleared_models"), series_min_component_voxels=10**9)
    with serving(Settings(model_dir=model_dir)) as base_url:
        yield base_url


class SharedChromium:
    """Headless Chromium from the system (Playwright's own browser download is never used), started once for the
    page test files a worker runs one after the other: started per file, the browser and Playwright's driver cost
    about 9 s of CPU each time on the 2-core test machine. It is stopped before the worker goes on to a test of
    another folder: Playwright's sync API keeps its event loop current in the thread while it runs, and a test after
    it that calls `asyncio.run()` (the DICOM node's analysis) would fail (review 71 F4).

    The desktop-sized tabs of those tests share one browser context: a context of its own cost each test about 0.7 s
    of Chromium's CPU more than a tab (a profile and a renderer process set up and torn down). The page keeps nothing
    in a context that another tab reads: its API key is in the tab's own sessionStorage, and it sets no cookie and
    uses no localStorage or IndexedDB; what a test changes in its tab (routes, init scripts, CDP sessions) is the
    tab's."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._desktop: BrowserContext | None = None

    def browser(self) -> Browser:
        if self._browser is None:
            executable = find_chromium()
            if executable is None:
                pytest.skip(
                    "no Chromium binary found: install the Debian package `chromium` or set CHROMIUM_PATH "
                    f"(looked for {', '.join(CHROMIUM_NAMES)} on PATH)"
                )
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=executable, headless=True)
        return self._browser

    def desktop_context(self) -> BrowserContext:
        """The context of the desktop-sized tabs (`page`), with downloads kept."""
        if self._desktop is None:
            self._desktop = self.browser().new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
        return self._desktop

    def stop(self) -> None:
        if self._desktop is not None:
            self._desktop.close()
            self._desktop = None
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None


SHARED_CHROMIUM = SharedChromium()
WEB_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Stops the shared Chromium after the last page test before a test of another folder (or none), once that
    test's own tabs and contexts are closed."""
    try:
        return (yield)
    finally:
        if nextitem is None or WEB_TESTS not in Path(nextitem.path).parents:
            SHARED_CHROMIUM.stop()


@pytest.fixture
def browser() -> Browser:
    """The worker's headless Chromium (`SharedChromium`); each test opens its own context."""
    return SHARED_CHROMIUM.browser()


@pytest.fixture
def page() -> Iterator[Page]:
    """A fresh tab (own sessionStorage) at a desktop size, so screenshots look like what people see; it shares its
    context with the other page tests' tabs (`SharedChromium`)."""
    tab = SHARED_CHROMIUM.desktop_context().new_page()
    yield tab
    tab.close()


@pytest.fixture
def phone_page(browser: Browser) -> Iterator[Page]:
    """A fresh tab at a phone's size and touch, for the narrow layout."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """`BROWSER_SCREENSHOT_DIR` when CI wants to keep the screenshots as artifacts, else the test's tmp_path."""
    configured = os.environ.get("BROWSER_SCREENSHOT_DIR")
    if not configured:
        return tmp_path
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def series_answer_with(live_server: str, slices: list[Path], probabilities: list[float], threshold: float) -> dict:
    """The server's answer for `slices` sent as one series, its probabilities replaced by `probabilities` at
    `threshold` (a slice below it loses its mask): for tests of what the page shows near a threshold, which the tiny
    models cannot be made to give."""
    answer = httpx.post(
        f"{live_server}/v1/predict/batch?mask_format=png&series=true",
        files=[("files", (path.name, path.read_bytes(), "image/jpeg")) for path in slices],
        timeout=60,
    ).json()
    for item, probability in zip(answer["results"], probabilities, strict=True):
        prediction = item["prediction"]
        prediction.update(threshold=threshold, tumor_probability=probability, tumor_detected=probability >= threshold)
        if not prediction["tumor_detected"]:
            prediction["mask"] = None
    return answer


def raster_ends_caveat(answer: dict) -> str:
    """What the page adds to a raster series' volume when tumor is on the first or last slice analysed (the batch
    answer has no `tumor_reaches_series_end`: the page reads it from the slices)."""
    analysed = [item["prediction"] for item in answer["results"] if item["ok"]]
    if analysed[0]["tumor_detected"] or analysed[-1]["tumor_detected"]:
        return "; it may fall short: tumor on the first or last slice sent (it may go on beyond them)"
    return ""
