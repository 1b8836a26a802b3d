"""What the page says about a series and does across uploads, in headless Chromium against the real service: raster
files sent as one series, the series clean-up, the series the server left out, error titles by code, mask file
names, spacing that does not carry over, a SEG download overtaken by a new upload, and one slice per wheel notch or
arrow key."""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import io
import json
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Route, expect

from tests.conftest import TEST_DATA, TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import Study, mr_series, to_bytes, tumor_channels
from tests.web.conftest import series_answer_with

RESULT_TIMEOUT_MS = 60_000
RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
SERIES_SIZE_TITLE = (
    "The slices differ in size, so they cannot be analysed as one series. Choose slices of one size, or analyse "
    "them one at a time."
)


def is_batch(response) -> bool:
    return "/v1/predict/batch" in response.url and response.request.method == "POST"


def upload(page: Page, files) -> dict:
    """Choose `files` and wait for the result; the batch answer's JSON."""
    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", files)
    assert answered.value.status == 200
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    # The new result, not the one shown until it came (kept visible meanwhile, marked previous): drawn slices read
    # right after were the previous series' under load (a CI run).
    expect(page.locator("#result")).not_to_have_class(re.compile(r"\bprevious\b"), timeout=RESULT_TIMEOUT_MS)
    return answered.value.json()


def post_batch(base_url: str, paths: list[Path], query: str) -> dict:
    files = [("files", (path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
    response = httpx.post(f"{base_url}/v1/predict/batch?{query}", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def write_series(datasets: list, directory: Path, names: list[str] | None = None) -> list[Path]:
    paths = []
    for index, dataset in enumerate(datasets):
        path = directory / (names[index] if names else f"IM{index:04d}")
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    return paths


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def downloaded_masks(page: Page) -> zipfile.ZipFile:
    with page.expect_download() as downloaded:
        page.click("#download-masks")
    return zipfile.ZipFile(downloaded.value.path())


# ------------------------------------------------------------------------------- raster files as one series


def test_several_raster_files_are_one_series_request_and_a_single_file_is_not(
    page: Page, unsure_live_server: str
) -> None:
    """On models that outline a slice sent alone only at probability 1.0: sent alone, every slice is "detected, not
    outlined"; sent as the series the page calls them, they get the series' masks and no "sent alone" wording."""
    page.goto(unsure_live_server)
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if "/v1/" in request.url else None)

    shown = upload(page, RASTER_SERIES)

    assert posted == [
        f"{unsure_live_server}/v1/models",  # the limit on files, checked before uploading (browser review 44 F6)
        f"{unsure_live_server}/v1/predict/batch?mask_format=png&series=true",
    ]
    expected = post_batch(unsure_live_server, RASTER_SERIES, "mask_format=png&series=true")
    assert [item["prediction"] for item in shown["results"]] == [item["prediction"] for item in expected["results"]]
    positives = sum(item["prediction"]["tumor_detected"] for item in expected["results"])
    verdict = "Tumor detected" if positives else "No tumor detected"
    expect(page.locator("#decision")).to_have_text(f"{verdict} ({positives} of 4 slices)")
    viewer = page.locator("#viewer")
    viewer.focus()
    viewer.press("Home")
    for number in range(1, 5):
        if number > 1:
            viewer.press("ArrowUp")
        expect(page.locator("#slice-number")).to_have_text(f"{number} / 4")
        expect(page.locator("#caption")).not_to_contain_text("sent alone")

    posted.clear()
    upload(page, [TUMOR_SLICE])

    assert posted == [f"{unsure_live_server}/v1/predict/batch?mask_format=png"]
    expect(page.locator("#caption")).to_contain_text("a slice sent alone is outlined only when")


def test_raster_slices_of_different_sizes_are_refused_as_one_series_with_a_clear_title(
    page: Page, live_server: str
) -> None:
    slice_image = Image.open(TUMOR_SLICE)
    files = [
        {"name": "a.png", "mimeType": "image/png", "buffer": png_bytes(slice_image)},
        {"name": "b.png", "mimeType": "image/png", "buffer": png_bytes(slice_image.resize((128, 128)))},
    ]
    page.goto(live_server)

    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", files)

    assert answered.value.status == 400
    server_message = answered.value.json()["error"]["message"]
    assert "(file 2 as sent)" in server_message
    expect(page.locator("#error-title")).to_have_text(SERIES_SIZE_TITLE)
    # The page sends the files in its own order under neutral names: it adds the odd file's own (browser review 53 F2).
    named = server_message.replace("(file 2 as sent)", "(file 2 as sent: b.png)")
    expect(page.locator("#error-detail")).to_have_text(f"Server message: {named}")
    expect(page.locator("#error-detail")).to_contain_text("must share one size")
    expect(page.locator("#result")).to_be_hidden()


def test_a_slice_at_or_above_the_threshold_cleared_by_the_series_clean_up_says_so(
    page: Page, cleared_live_server: str
) -> None:
    page.goto(cleared_live_server)

    answer = upload(page, RASTER_SERIES)

    first = answer["results"][0]["prediction"]
    assert first["tumor_probability"] >= first["threshold"] and not first["tumor_detected"]
    expect(page.locator("#decision")).to_have_text("No tumor detected (0 of 4 slices)")
    page.locator("#slice-slider").fill("1")
    expect(page.locator("#comparison")).to_have_text("is at or above")
    expect(page.locator("#cleared-note")).to_be_visible()
    expect(page.locator("#cleared-note")).to_contain_text("survived the series clean-up")
    expect(page.locator("#caption")).to_have_text(
        f"Slice 1 of 4 ({RASTER_SERIES[0].name}): no tumor: its predicted tumor area did not survive the series "
        "clean-up"
    )
    expect(page.locator("#slice-slider")).to_have_attribute(
        "aria-valuetext", re.compile(r"^Slice 1 of 4: no tumor \(series clean-up\), probability ")
    )
    expect(page.locator("#slice-table tbody tr").first).to_contain_text("No tumor (series clean-up)")


# ---------------------------------------------------------------------------------------- across uploads


def test_spacing_entered_for_one_upload_is_not_used_for_the_next(page: Page, live_server: str) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)
    page.fill("#pixel-spacing", "0.9375")
    page.fill("#slice-spacing", "5")
    expect(page.locator("#volume")).to_contain_text("(from the spacing entered)")

    upload(page, [TUMOR_SLICE])

    expect(page.locator("#pixel-spacing")).to_have_value("")
    expect(page.locator("#slice-spacing")).to_have_value("")
    expect(page.locator("#area")).not_to_contain_text("mm²")
    expect(page.locator("#volume")).to_have_text(
        "not computed for a single slice (send the slices of a series together)"
    )
    expect(page.locator("#slice-spacing")).to_be_hidden()  # one slice has no volume, so no slice spacing to ask for

    upload(page, RASTER_SERIES)

    expect(page.locator("#pixel-spacing")).to_have_value("")
    expect(page.locator("#volume")).to_have_text("enter the pixel and slice spacing below to get it")
    expect(page.locator("#slice-spacing")).to_be_visible()


def test_a_seg_download_still_running_is_dropped_when_a_new_upload_starts(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    paths = write_series(mr_series(tumor_channels()), tmp_path)
    held: list[Route] = []
    page.route(
        "**/v1/predict/batch?output=dicom-seg*", lambda route: held.append(route)
    )  # the SEG answer waits until released
    downloads: list = []
    page.on("download", lambda download: downloads.append(download))
    page.goto(live_server)
    upload(page, paths)

    page.click("#download-seg")
    expect(page.locator("#seg-status")).to_have_text("Asking the server for the DICOM SEG…")
    for _ in range(100):  # the route handler runs when Playwright next waits
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    upload(page, [TUMOR_SLICE])
    expect(page.locator("#caption")).to_contain_text(TUMOR_SLICE.name)
    outcome = page.locator("#status").text_content()
    assert outcome.startswith("Tumor detected: tumor probability")
    with contextlib.suppress(PlaywrightError):  # the page aborted the request: nothing left to continue
        held[0].continue_()
    page.wait_for_timeout(2000)

    assert downloads == []
    expect(page.locator("#status")).to_have_text(outcome)
    expect(page.locator("#error")).to_be_hidden()


# ------------------------------------------------------------------------------------------------ mask zip


def test_dicom_masks_are_numbered_in_the_page_slice_order(page: Page, live_server: str, tmp_path: Path) -> None:
    datasets = mr_series(tumor_channels())  # positions 0, 5, 10 mm
    # Sent in name order a, b, c: the slice at 10 mm first, so the request order is not the page's order.
    paths = write_series([datasets[2], datasets[0], datasets[1]], tmp_path, ["a.dcm", "b.dcm", "c.dcm"])
    masks_by_uid = {}
    page.goto(live_server)

    answer = upload(page, paths)
    for item in answer["slices"]:
        masks_by_uid[item["sop_instance_uid"]] = item["prediction"]["mask"]
    uid_of = {path.name: pydicom.dcmread(path).SOPInstanceUID for path in paths}

    with downloaded_masks(page) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("slices.csv").decode())))
        assert [row["file"] for row in rows] == ["b.dcm", "c.dcm", "a.dcm"]  # the page's slices 1, 2, 3
        for number, row in enumerate(rows, start=1):
            assert row["slice"] == str(number)
            assert row["mask_file"] == f"slice_{number:04d}_mask.png"
            mask = masks_by_uid[uid_of[row["file"]]]
            if mask:
                assert archive.read(row["mask_file"]) == base64.b64decode(mask["png"])
        assert sorted(archive.namelist()) == [
            "answer.json",
            "slice_0001_mask.png",
            "slice_0002_mask.png",
            "slice_0003_mask.png",
            "slices.csv",
        ]


def test_raster_mask_names_cannot_overwrite_the_ground_truth_masks(page: Page, live_server: str) -> None:
    folder = sorted((TEST_DATA / "TCGA_DU_A5TW_19980228").iterdir())  # slices and their ground-truth masks
    page.goto(live_server)
    upload(page, folder)

    with downloaded_masks(page) as archive:
        names = set(archive.namelist())

    assert names.isdisjoint(path.name for path in folder)
    assert names == {f"{path.stem}_predicted_mask.png" for path in RASTER_SERIES} | {"slices.csv", "answer.json"}


def test_a_one_pixel_mask_is_called_too_small_to_see(page: Page, live_server: str) -> None:
    """The series clean-up can keep one pixel of a large 3-D piece: the service's own answer, its mask cut to that."""
    answer = post_batch(live_server, [TUMOR_SLICE], "mask_format=png")
    speck = np.zeros((256, 256), dtype=np.uint8)
    speck[50, 100] = 255
    answer["results"][0]["prediction"]["mask"].update(
        png=base64.b64encode(png_bytes(Image.fromarray(speck))).decode(), area_pixels=1, bbox=[100, 50, 1, 1]
    )
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.goto(live_server)

    upload(page, [TUMOR_SLICE])

    expect(page.locator("#caption")).to_have_text(
        f"{TUMOR_SLICE.name}: predicted tumor area of only 1 pixel (at column 101, row 51), too small to see"
    )
    expect(page.locator("#area")).to_have_text("1 pixel (0.0 % of the 256 × 256 slice)")


def test_a_rectangular_slice_is_sized_in_rows_by_columns(page: Page, live_server: str, tmp_path: Path) -> None:
    """Browser review 59 F6: a slice of 192 rows and 256 columns was "the 256 × 192 slice" (width first), where DICOM
    and the API's errors give rows first."""
    wide = tmp_path / "wide.png"
    Image.open(TUMOR_SLICE).crop((0, 32, 256, 224)).save(wide)
    page.goto(live_server)

    answer = upload(page, [wide])

    mask = answer["results"][0]["prediction"]["mask"]
    assert mask["size"] == [192, 256]
    expect(page.locator("#area")).to_contain_text("% of the 192-row × 256-column slice)")


# ---------------------------------------------------------------------------------- DICOM series and errors


def upload_study(page: Page, live_server: str, tmp_path: Path, *series: tuple[int, str]) -> dict:
    """Upload one study of tumor series, each (series number, description), on the page; the API's answer."""
    study = Study()
    datasets = [
        dataset
        for number, description in series
        for dataset in mr_series(tumor_channels(), study=study, series_number=number, series_description=description)
    ]
    page.goto(live_server)
    return upload(page, write_series(datasets, tmp_path))


def test_the_dicom_series_read_and_left_out_are_named(page: Page, live_server: str, tmp_path: Path) -> None:
    answer = upload_study(page, live_server, tmp_path, (2, "AX FLAIR"), (3, "AX T1"))

    (left_out,) = answer["series_left_out"]
    assert left_out["role"] == "T1 pre-contrast"
    (note,) = answer["selection_notes"]
    expect(page.locator("#series-choice")).to_have_text(
        "Series read: FLAIR (series 2, “AX FLAIR”, 3 files). "
        "Left out: T1 pre-contrast (series 3, “AX T1”, 3 files), for the reason the notes below give (its role: "
        f"{left_out['evidence']}). "
        f"{note[0].upper()}{note[1:]}."
    )

    upload(page, RASTER_SERIES)  # PNG/JPEG/TIFF: no series to choose among
    expect(page.locator("#series-choice")).to_be_hidden()


def test_a_second_flair_series_left_out_is_not_given_its_flair_evidence_as_the_reason(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F13: "Left out: FLAIR (series 3, …): Series Description matches *FLAIR*.", why it is a
    FLAIR, not why it was left out (another FLAIR ranks first, as the notes say)."""
    answer = upload_study(page, live_server, tmp_path, (2, "AX FLAIR"), (3, "AX FLAIR 2"))

    (left_out,) = answer["series_left_out"]
    assert left_out["role"] == "FLAIR" and answer["selection_notes"]
    expect(page.locator("#series-choice")).to_contain_text(
        "Left out: FLAIR (series 3, “AX FLAIR 2”, 3 files), for the reason the notes below give (its role: "
        f"{left_out['evidence']})."
    )


def test_copies_left_out_of_the_series_read_are_told_apart_from_a_series_left_out(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A lossy copy of a file read is left out of its series, which is read: the page said "Left out: FLAIR (series 2,
    …, 1 file)" beside "Series read: FLAIR (series 2, …)", as if the series read were also left out."""
    flair = mr_series(tumor_channels(), series_number=2, series_description="AX FLAIR")
    lossy = copy.deepcopy(flair[1])
    source = pydicom.Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = flair[1].SOPClassUID, flair[1].SOPInstanceUID
    lossy.SourceImageSequence = [source]
    lossy.SOPInstanceUID = lossy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    paths = write_series([*flair, lossy], tmp_path)
    page.goto(live_server)

    answer = upload(page, paths)

    (left_out,) = answer["series_left_out"]
    assert (left_out["role"], left_out["files"]) == ("FLAIR", [3])
    expect(page.locator("#series-choice")).to_have_text(
        "Series read: FLAIR (series 2, “AX FLAIR”, 3 files). "
        f"1 file left out of FLAIR (series 2): {left_out['evidence']}."
    )


def test_a_repeated_dicom_instance_is_not_counted_as_read(page: Page, live_server: str, tmp_path: Path) -> None:
    """Browser review 29, F5: "Series read: FLAIR (…, 4 files)" for three slices shown, one file being a repeat."""
    paths = write_series(mr_series(tumor_channels(), series_number=2, series_description="AX FLAIR"), tmp_path)
    repeat = tmp_path / "IM0000 copy"
    repeat.write_bytes(paths[0].read_bytes())
    page.goto(live_server)

    answer = upload(page, [*paths, repeat])

    (failure,) = answer["file_errors"]  # the second of the two copies the page sent
    assert failure["error"]["code"] == "invalid_dicom_image"
    expect(page.locator("#series-choice")).to_have_text(
        "Series read: FLAIR (series 2, “AX FLAIR”, 3 files, 1 more not read)."
    )


def test_a_t1_only_dicom_series_gets_a_title_from_its_code(page: Page, live_server: str, tmp_path: Path) -> None:
    paths = write_series(mr_series(tumor_channels(), series_description="AX T1"), tmp_path)
    page.goto(live_server)

    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", paths)

    error = answered.value.json()["error"]
    assert error["code"] == "no_flair_series"
    expect(page.locator("#error-title")).to_have_text(
        "No FLAIR series among the chosen DICOM files: the models read FLAIR only."
    )
    expect(page.locator("#error-detail")).to_have_text(f"Server message: {error['message']}")


def test_a_damaged_image_gets_a_title_from_its_code(page: Page, live_server: str) -> None:
    truncated = TUMOR_SLICE.read_bytes()[:400]
    page.goto(live_server)

    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", [{"name": "cut.jpg", "mimeType": "image/jpeg", "buffer": truncated}])

    assert answered.value.json()["results"][0]["error"]["code"] == "undecodable_image"
    expect(page.locator("#error-title")).to_have_text(
        "The image file is damaged or cut short and could not be decoded."
    )


# ------------------------------------------------------------------------------------- scrolling the slices


def wheel(page: Page, delta_y: float, delta_mode: int) -> None:
    """One wheel event over the viewer as a browser sends it: deltaMode 0 pixels, 1 lines, 2 pages."""
    page.eval_on_selector(
        "#viewer",
        """(viewer, [deltaY, deltaMode]) => viewer.dispatchEvent(
            new WheelEvent("wheel", { deltaY, deltaMode, bubbles: true, cancelable: true }))""",
        [delta_y, delta_mode],
    )


def test_one_wheel_notch_moves_one_slice_however_the_browser_measures_it(page: Page, live_server: str) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)
    page.locator("#slice-slider").fill("1")
    number = page.locator("#slice-number")

    wheel(page, 3, 1)  # Firefox: three lines
    expect(number).to_have_text("2 / 4")
    page.locator("#viewer").hover()
    page.mouse.wheel(0, 100)  # Chromium on Windows: 100 pixels
    expect(number).to_have_text("3 / 4")
    wheel(page, -120, 0)  # macOS: 120 pixels back
    expect(number).to_have_text("2 / 4")
    wheel(page, 1, 2)  # a page
    expect(number).to_have_text("3 / 4")
    for _ in range(4):  # a touchpad: small steps add up to one slice
        wheel(page, 12, 0)
    expect(number).to_have_text("3 / 4")
    wheel(page, 12, 0)
    expect(number).to_have_text("4 / 4")


def test_arrow_keys_go_the_same_way_on_the_image_and_on_the_probability_strip(page: Page, live_server: str) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)
    number = page.locator("#slice-number")

    for element, key, expected in [
        ("#viewer", "Home", "1 / 4"),
        ("#viewer", "ArrowUp", "2 / 4"),
        ("#strip", "ArrowUp", "3 / 4"),
        ("#slice-slider", "ArrowUp", "4 / 4"),
        ("#viewer", "ArrowDown", "3 / 4"),
        ("#strip", "ArrowDown", "2 / 4"),
        ("#slice-slider", "ArrowDown", "1 / 4"),
        ("#viewer", "ArrowRight", "2 / 4"),
        ("#strip", "ArrowLeft", "1 / 4"),
        ("#viewer", "PageUp", "4 / 4"),
        ("#strip", "PageDown", "1 / 4"),
    ]:
        page.focus(element)
        page.keyboard.press(key)
        expect(number).to_have_text(expected)


def test_a_series_opens_on_its_largest_tumor_and_shows_no_probability_as_certain(page: Page, live_server: str) -> None:
    """Review 36: a series opened on its first positive slice in anatomical order, whose mask could be one pixel
    ("too small to see"), and probabilities from 0.9995 on read "100.0 %"."""
    faked = series_answer_with(live_server, RASTER_SERIES, [0.5, 0.6, 0.9996, 0.0001], threshold=0.116)
    for item, area in zip(faked["results"][:3], (1, 40, 900), strict=True):
        item["prediction"]["mask"]["area_pixels"] = area
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(faked)),
    )
    page.goto(live_server)

    upload(page, RASTER_SERIES)

    expect(page.locator("#caption")).to_contain_text(f"Slice 3 of 4 ({RASTER_SERIES[2].name})")
    probabilities = page.locator("#slice-table tbody tr td:nth-child(3)").all_text_contents()
    assert probabilities == ["50.0 %", "60.0 %", "> 99.9 %", "< 0.1 %"]
