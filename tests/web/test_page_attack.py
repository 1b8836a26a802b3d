"""The upload page against hostile input and awkward use, in headless Chromium against the real service: markup in
file names, DICOM tags and server messages stays text; damaged, huge or mixed files, cancels, double choices and
odd server answers end in a clear message, never in a stuck page or an uncaught exception."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import struct
import zipfile
import zlib
from email.utils import formatdate
from pathlib import Path
from time import time

import httpx
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Route, expect

from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.security.corpus import png_chunk
from tests.web.conftest import find_chromium

RESULT_TIMEOUT_MS = 60_000
COMPRESSED_DICOM = Path(__file__).resolve().parents[1] / "data" / "dicom" / "flair_jpeg_lossless.dcm"
# Runs if ever parsed as HTML: sets a flag and opens a dialog, both of which the tests watch for.
PAYLOAD = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>'
# Chromium's own line for every 4xx/5xx answer or failed connection: expected where a test asks for one, not a page
# bug (test_page_loads_without_console_errors checks that a plain visit has none).
NETWORK_ERROR_LOG = "Failed to load resource:"


class PageWatch:
    """Uncaught exceptions, console errors and dialogs of a tab, from before its first load."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"console: {message.text}")
                if message.type == "error" and not message.text.startswith(NETWORK_ERROR_LOG)
                else None
            ),
        )
        page.on("dialog", lambda dialog: (self.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))

    def assert_clean(self, page: Page) -> None:
        assert page.evaluate("window.__pwned ?? null") is None
        assert self.problems == []


def is_batch(response) -> bool:
    return "/v1/predict/batch" in response.url and response.request.method == "POST"


def zip_of(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def png_of_zeros(width: int, height: int) -> bytes:
    """A 16-bit grey PNG of zeros: a few hundred kilobytes that claim `width` x `height` pixels."""
    compressor = zlib.compressobj(9)
    row = bytes(2 * width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def test_markup_in_file_names_dicom_tags_and_server_reasons_stays_text(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    series = mr_series(tumor_channels()[:2], series_description=PAYLOAD[:64])
    for dataset in series:
        dataset.PatientName = "Xss^<svg onload=alert(1)>"
        dataset.StudyDescription = PAYLOAD[:64]
        del dataset.ScanningSequence  # nothing says another contrast: the one series is read as FLAIR
    hostile = [
        {"name": f"{PAYLOAD}{n}.dcm", "mimeType": "application/dicom", "buffer": to_bytes(d)}
        for n, d in enumerate(series)
    ]
    page.goto(live_server)

    page.set_input_files("#file-input", files=hostile)

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#caption")).to_contain_text(f"({PAYLOAD}0.dcm)")
    expect(page.locator("#file-name")).to_contain_text(PAYLOAD)
    assert page.locator("#slice-table tbody td").nth(0).text_content() == f"{PAYLOAD}0.dcm"
    expect(page.locator("#series-choice")).to_contain_text(f"“{PAYLOAD[:64]}”")  # the Series Description, as text

    # A per-file error of a raster batch (a JPEG cut short): the server's reason and the file name, side by side;
    # and a file that is no image, left out by the page and named.
    good = TUMOR_SLICE.read_bytes()
    page.set_input_files(
        "#file-input",
        files=[
            {"name": f"{PAYLOAD}a.jpg", "mimeType": "image/jpeg", "buffer": good},
            {"name": f"{PAYLOAD}b.jpg", "mimeType": "image/jpeg", "buffer": good[:400]},
            {"name": f"{PAYLOAD}c.txt", "mimeType": "text/plain", "buffer": PAYLOAD.encode()},
        ],
    )
    expect(page.locator("#file-errors")).to_contain_text(f"{PAYLOAD}b.jpg (", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#file-name")).to_contain_text(f"neither DICOM images nor PNG, JPEG or TIFF: {PAYLOAD}c.txt")

    # A whole-request error whose reason echoes markup (a proxy or a future message could).
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(
            status=400, content_type="application/json", body=json.dumps({"error": {"code": "x", "message": PAYLOAD}})
        ),
    )
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-detail")).to_have_text(f"Server message: {PAYLOAD}")

    assert page.locator("main img, main script, main svg").count() == 0
    watch.assert_clean(page)


def test_page_is_served_so_that_it_cannot_be_framed_or_run_inline_script(live_server: str) -> None:
    response = httpx.get(live_server)
    policy = response.headers["content-security-policy"]

    assert "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Nothing for the policy to allow: no inline script, no inline event handler.
    assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None
    assert re.search(r"\son[a-z]+\s*=", response.text) is None


def test_page_loads_without_console_errors(browser: Browser, live_server: str) -> None:
    # A browser of its own: Chromium asks for /favicon.ico once per browser, on the first page it shows.
    fresh = browser.browser_type.launch(executable_path=find_chromium(), headless=True)
    try:
        page = fresh.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(live_server)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)

        assert errors == []  # e.g. no 404 for /favicon.ico in every visitor's console
    finally:
        fresh.close()


# Files named slow-* take 1.5 s to read, as from a network drive; window.__slowReads counts the reads that finished,
# so a test can wait until the older choice has been read instead of guessing how long that takes.
SLOW_FILES = """
    window.__slowReads = 0;
    const arrayBuffer = Blob.prototype.arrayBuffer;
    File.prototype.arrayBuffer = async function () {
        if (this.name.startsWith("slow-")) {
            await new Promise((resolve) => setTimeout(resolve, 1500));
            const bytes = await arrayBuffer.call(this);
            setTimeout(() => { window.__slowReads += 1; }, 0);  // after the page's own continuation has run
            return bytes;
        }
        return arrayBuffer.call(this);
    };
"""


def wait_for_slow_reads(page: Page, count: int) -> None:
    """Until `count` slow files have been read, and a moment more for what the page does with them."""
    # Polled with evaluate: wait_for_function evaluates a string, which the page's Content-Security-Policy forbids.
    for _ in range(RESULT_TIMEOUT_MS // 50):
        if page.evaluate("window.__slowReads") >= count:
            break
        page.wait_for_timeout(50)
    else:
        raise AssertionError(f"{count} slow file read(s) did not finish")
    page.wait_for_timeout(200)


def record_posts(page: Page) -> list[str]:
    """The URLs of the POST requests the page sends from now on."""
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    return posts


def slow_zip(slice_path: Path) -> dict:
    """A zip of one slice that takes 1.5 s to read (`SLOW_FILES`), as Playwright's set_input_files takes it."""
    return {
        "name": "slow-series.zip",
        "mimeType": "application/zip",
        "buffer": zip_of([(slice_path.name, slice_path.read_bytes())]),
    }


def test_newest_choice_wins_over_an_older_one_still_being_read(page: Page, live_server: str) -> None:
    # A zip on a slow network drive is still being read when the researcher chooses another slice.
    watch = PageWatch(page)
    page.add_init_script(SLOW_FILES)
    posts = record_posts(page)
    page.goto(live_server)
    slow_valid = slow_zip(TUMOR_FREE_SLICE)
    slow_damaged = {"name": "slow-damaged.zip", "mimeType": "application/zip", "buffer": b"PK\x03\x04" + bytes(64)}

    for reads, older in enumerate((slow_valid, slow_damaged), start=1):
        posts.clear()
        page.set_input_files("#file-input", files=[older])
        page.set_input_files("#file-input", TUMOR_SLICE)

        expect(page.locator("#caption")).to_contain_text(TUMOR_SLICE.name, timeout=RESULT_TIMEOUT_MS)
        # The older choice is read: it must neither replace the result nor add an error.
        wait_for_slow_reads(page, reads)
        expect(page.locator("#caption")).to_contain_text(TUMOR_SLICE.name)
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#progress-row")).to_be_hidden()
        assert len(posts) == 1
    watch.assert_clean(page)


def test_cancel_stops_a_running_analysis_from_the_keyboard(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    held: list[Route] = []
    page.route("**/v1/predict/batch*", lambda route: held.append(route))  # the server never answers
    aborted: list[str] = []
    page.on("requestfailed", lambda request: aborted.append(request.url))
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)
    cancel = page.locator("#cancel")
    expect(cancel).to_be_visible()
    expect(page.locator("#status")).to_have_text("Sending the slice…")
    assert Axe().run(page).violations_count == 0
    cancel.focus()
    page.keyboard.press("Enter")

    expect(page.locator("#progress-row")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    assert page.evaluate("document.activeElement.id") == "file-input"  # focus stays on the page, not on <body>
    assert len(held) == 1
    page.wait_for_timeout(300)
    assert aborted == [held[0].request.url]  # the upload itself was stopped, not only hidden
    expect(page.locator("#error")).to_be_hidden()  # and the abort is not reported as an error
    page.unroute("**/v1/predict/batch*")

    # The page is usable again at once.
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    watch.assert_clean(page)


def test_cancel_while_a_slow_zip_is_still_being_read_sends_nothing(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    page.add_init_script(SLOW_FILES)
    posts = record_posts(page)
    page.goto(live_server)
    slow = slow_zip(TUMOR_SLICE)

    page.set_input_files("#file-input", files=[slow])
    expect(page.locator("#progress-label")).to_have_text("Reading the files")
    page.click("#cancel")
    wait_for_slow_reads(page, 1)

    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#progress-row")).to_be_hidden()
    assert posts == []
    watch.assert_clean(page)


def test_damaged_zip_is_reported_as_a_file_problem_not_a_network_one(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    archive = bytearray(zip_of([("slice.dcm", bytes(20_000))], zipfile.ZIP_DEFLATED))
    (entry,) = zipfile.ZipFile(io.BytesIO(bytes(archive))).infolist()
    data_start = 30 + len(entry.filename.encode()) + struct.unpack("<H", archive[28:30])[0]
    archive[data_start : data_start + entry.compress_size] = b"\xff" * entry.compress_size
    page.goto(live_server)

    page.set_input_files(
        "#file-input", files=[{"name": "scan.zip", "mimeType": "application/zip", "buffer": bytes(archive)}]
    )

    expect(page.locator("#error-title")).to_have_text("The files could not be opened.")
    expect(page.locator("#error-detail")).to_have_text("scan.zip: the zip file is damaged")
    expect(page.locator("#progress-row")).to_be_hidden()
    watch.assert_clean(page)


def test_a_zip_entry_name_in_an_error_is_shown_as_file_names_are(page: Page, live_server: str) -> None:
    """Attack review 64 F5: a zip's entry name went into the alert as it was: 3,000 characters, a right-to-left
    override turning the line around, a control character."""
    name = "x" * 3000 + "\u202eMRI.png\a"
    archive = zip_of([(name, b"\x89PNG" + bytes(64))], zipfile.ZIP_BZIP2)
    page.goto(live_server)

    page.set_input_files("#file-input", files=[{"name": "scan.zip", "mimeType": "application/zip", "buffer": archive}])

    detail = page.locator("#error-detail")
    expect(detail).to_contain_text("scan.zip: ")
    shown = detail.text_content() or ""
    assert len(shown) < 400 and "\u202e" not in shown and "\a" not in shown


def test_odd_server_answers_get_honest_messages(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    answers: dict[str, tuple[int, str, dict[str, str]]] = {}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(status=answers["now"][0], body=answers["now"][1], headers=answers["now"][2]),
    )
    page.goto(live_server)

    # Retry-After as an HTTP date, and an error body without a message.
    answers["now"] = (
        503,
        json.dumps({"error": {"code": "busy"}}),
        {"Retry-After": formatdate(time() + 120, usegmt=True)},
    )
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-title")).to_have_text(
        re.compile(r"^The service is not ready to analyse slices\. Try again in (1[01]\d|120) seconds\.$")
    )
    expect(page.locator("#error-detail")).to_have_text("Server message: Service Unavailable")  # the status text

    # A 200 that is not the API's answer is not a connection problem.
    answers["now"] = (200, "{}", {"Content-Type": "application/json"})
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-title")).to_have_text("The service's answer could not be read.")
    expect(page.locator("#error-detail")).to_have_text("the answer holds no results for the 1 files sent")

    # A real connection failure still says so.
    page.unroute("**/v1/**")
    page.route("**/v1/**", lambda route: route.abort("connectionreset"))
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-title")).to_have_text(
        "Could not reach the service. Check the connection and try again."
    )
    expect(page.locator("#progress-row")).to_be_hidden()
    watch.assert_clean(page)


def test_an_answer_that_does_not_fit_the_files_sent_is_said_so_not_drawn(page: Page, live_server: str) -> None:
    """attack26 finding 7: an answer of no slices showed "Cannot read properties of undefined", and 1,200 slices
    for 3 files were drawn, each on one of the 3 (a proxy that rewrites answers)."""
    watch = PageWatch(page)
    rewrites: dict[str, object] = {}

    def rewritten(route: Route) -> None:
        response = route.fetch()
        answer = response.json()
        rewrites["now"](answer)
        route.fulfill(response=response, json=answer)

    page.route("**/v1/predict/batch*", rewritten)
    page.goto(live_server)
    series = [
        {"name": f"{index}.dcm", "mimeType": "application/dicom", "buffer": to_bytes(dataset)}
        for index, dataset in enumerate(mr_series(tumor_channels()))
    ]
    cases = [
        (lambda answer: answer.update(slices=[]), series, "the answer holds no slices"),
        (
            lambda answer: answer.update(slices=answer["slices"] * 400),
            series,
            "the answer holds 1200 slices for the 3 in the files sent",
        ),
        (lambda answer: answer.update(results=[]), [TUMOR_SLICE], "the answer holds 0 results for the 1 files sent"),
    ]
    for rewrite, files, detail in cases:
        rewrites["now"] = rewrite
        page.set_input_files("#file-input", files=files)
        expect(page.locator("#error-title")).to_have_text("The service's answer could not be read.")
        expect(page.locator("#error-detail")).to_have_text(detail)
        expect(page.locator("#progress-row")).to_be_hidden()
    watch.assert_clean(page)


def test_dicom_files_of_two_studies_are_told_apart_from_dicom_mixed_with_images(page: Page, live_server: str) -> None:
    """Both are the code mixed_input; the page titled two studies' files "DICOM files and PNG, JPEG or TIFF images"."""
    watch = PageWatch(page)
    first, second = mr_series(tumor_channels()[:1])[0], mr_series(tumor_channels()[:1])[0]  # a Study() each
    page.goto(live_server)

    page.set_input_files(
        "#file-input",
        files=[
            {"name": "a.dcm", "mimeType": "application/dicom", "buffer": to_bytes(first)},
            {"name": "b.dcm", "mimeType": "application/dicom", "buffer": to_bytes(second)},
        ],
    )

    expect(page.locator("#error-title")).to_have_text(
        "The DICOM files come from several studies or patients. Choose the files of one study."
    )
    expect(page.locator("#error-detail")).to_contain_text("come from 2 studies")
    watch.assert_clean(page)


def test_mixing_dicom_and_images_says_so(page: Page, live_server: str) -> None:
    """The page sends the DICOM image and says it left the JPEG out (browser review 63 F4: a CD's viewer icons); a
    client that sends both gets the server's refusal."""
    watch = PageWatch(page)
    (dataset,) = mr_series(tumor_channels()[:1])
    files = [
        {"name": "a.dcm", "mimeType": "application/dicom", "buffer": to_bytes(dataset)},
        {"name": "b.jpg", "mimeType": "image/jpeg", "buffer": TUMOR_SLICE.read_bytes()},
    ]
    page.goto(live_server)

    page.set_input_files("#file-input", files=files)

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#file-name")).to_have_text(
        "Selected: a.dcm (left out, PNG, JPEG or TIFF images beside the DICOM images: b.jpg)"
    )
    refused = httpx.post(
        f"{live_server}/v1/predict/batch",
        files=[("files", (file["name"], file["buffer"], file["mimeType"])) for file in files],
        timeout=60,
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "mixed_input"
    watch.assert_clean(page)


def test_mask_zip_keeps_every_mask_and_its_csv_is_safe_in_spreadsheets(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    formula = '=HYPERLINK("example.invalid","x").jpg'
    # Two files of one name (from two folders these are refused now: browser review 60 F12) and a formula's.
    slices = [
        ("slice.jpg", TUMOR_SLICE.read_bytes()),
        ("slice.jpg", TUMOR_FREE_SLICE.read_bytes()),
        (formula, TUMOR_SERIES[1].read_bytes()),  # another slice: a series reads a file sent twice once
    ]
    page.goto(live_server)
    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files(
            "#file-input", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data} for name, data in slices]
        )
    masks = [item["prediction"]["mask"] for item in answered.value.json()["results"]]
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)

    with page.expect_download() as downloaded:
        page.click("#download-masks")

    with zipfile.ZipFile(downloaded.value.path()) as archive:
        names = archive.namelist()
        rows = list(csv.DictReader(io.StringIO(archive.read("slices.csv").decode())))
        assert len(names) == len(set(names)) == 5  # three masks, the table and the answer, none hiding another
        for row, mask in zip(rows, masks, strict=True):
            if mask:
                assert archive.read(row["mask_file"]) == base64.b64decode(mask["png"])
    assert sorted(row["file"] for row in rows) == sorted([f"'{formula}", "slice.jpg", "slice.jpg"])
    assert all("/" not in name and "\\" not in name for name in names)
    watch.assert_clean(page)


def test_compressed_dicom_says_its_image_is_not_drawn(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    page.goto(live_server)

    page.set_input_files("#file-input", COMPRESSED_DICOM)

    expect(page.locator("#caption")).to_contain_text(
        "the image itself cannot be drawn in this browser", timeout=RESULT_TIMEOUT_MS
    )
    watch.assert_clean(page)


COUNT_DECODES = """
    window.__decodes = 0;
    const Native = DecompressionStream;
    window.DecompressionStream = class extends Native {
        constructor(format) { window.__decodes += 1; super(format); }
    };
    const nativeBitmap = window.createImageBitmap;
    window.createImageBitmap = (...args) => { window.__decodes += 1; return nativeBitmap(...args); };
"""


def test_image_that_claims_a_huge_size_is_not_decoded_by_the_page(page: Page, live_server: str) -> None:
    # 8000 x 8000 16-bit pixels (128 MB inflated, 256 MB as floats) in about 100 kB: decoding them freezes the tab.
    watch = PageWatch(page)
    page.add_init_script(COUNT_DECODES)
    page.goto(live_server)

    page.set_input_files(
        "#file-input", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": png_of_zeros(8000, 8000)}]
    )

    expect(page.locator("#error-title")).to_have_text("The file or the image is too large.", timeout=RESULT_TIMEOUT_MS)
    assert page.evaluate("window.__decodes") == 0
    watch.assert_clean(page)


def frames_the_page_decodes(page: Page, data: bytes) -> int:
    """How many frames `readDicom` (the page's own DICOM reader) decodes of a file, to draw them."""
    return page.evaluate(
        """async (encoded) => {
            const { readDicom } = await import("/static/formats.js");
            const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
            return (await readDicom(bytes.buffer)).frames.length;
        }""",
        base64.b64encode(data).decode(),
    )


def test_a_file_of_very_many_tiny_frames_is_not_decoded_by_the_page(page: Page, live_server: str) -> None:
    """Review 36: a 20 MB file of 20 million 1 x 1 frames froze the tab for 10 s, one array per frame, before the
    server's refusal (too many slices) could be shown. Past 2048 frames the page leaves a file undrawn."""
    dataset = mr_series(tumor_channels()[:1])[0]
    dataset.Rows = dataset.Columns = 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    page.goto(live_server)

    for frames, drawn in ((3, 3), (2048, 2048), (100_000, 0)):
        dataset.NumberOfFrames = frames
        dataset.PixelData = bytes(frames)
        assert frames_the_page_decodes(page, to_bytes(dataset)) == drawn


def test_a_file_the_browser_cannot_read_says_so_not_permission_problems(page: Page, live_server: str) -> None:
    """Review 36: a file the browser could not read (moved or changed since it was chosen, or too large to hold)
    showed Chromium's own words, "typically due to permission problems", under "The result could not be shown"."""
    page.goto(live_server)

    shown = page.evaluate(
        """async () => {
            const { describeError } = await import("/static/app.js");
            return describeError(new DOMException("The requested file could not be read", "NotReadableError"));
        }"""
    )

    assert shown["title"].startswith("A chosen file could not be read: it may have been moved, changed or deleted")
    assert shown["title"].endswith("Choose the files again.")
