"""The page's fixes from browser review 31: a DICOM slice drawn and named from the file the server read, not from a
refused repeat of its instance; a MONOCHROME1 series on one scale, under its file's window, and a MinIsWhite TIFF
series too; a failed file inside a raster series is a missing slice in the strip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import tifffile
from PIL import Image
from playwright.sync_api import Page, expect
from pydicom.fileset import FileSet

from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.canvas_pixels import canvas_rgba
from tests.web.conftest import series_answer_with
from tests.web.test_page_drops_contrast_and_windows import RECORD_SENT, drop_folder
from tests.web.test_page_series_answers import RASTER_SERIES, RESULT_TIMEOUT_MS, png_bytes, upload, write_series


def brightest_drawn(page: Page) -> int:
    """The brightest grey value on the slice canvas as drawn now."""
    return int(canvas_rgba(page)[..., 0].max())


# ------------------------------------------------------------------ F1: a refused repeat of a DICOM instance


def test_a_refused_repeat_of_a_dicom_instance_is_neither_drawn_nor_named_for_the_slice_read(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A second file with the SOP Instance UID of an earlier one is refused in its place, and the first is read; the
    page drew the second file's pixels under the first one's mask and named the slice after the refused file."""
    paths = write_series(mr_series(tumor_channels()), tmp_path)
    repeat = pydicom.dcmread(paths[1])
    repeat.PixelData = bytes(len(repeat.PixelData))  # a re-export of the same instance, here all black
    (tmp_path / "IM9999").write_bytes(to_bytes(repeat))
    page.goto(live_server)

    answer = upload(page, [*paths, tmp_path / "IM9999"])

    assert [failure["index"] for failure in answer["file_errors"]] == [3]
    expect(page.locator("#file-errors")).to_contain_text("IM9999 (")
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(["IM0000", "IM0001", "IM0002"])
    page.locator("#slice-slider").fill("2")
    expect(page.locator("#caption")).to_contain_text("Slice 2 of 3 (IM0001)")
    assert brightest_drawn(page) > 100  # the slice read, not the black repeat


# ---------------------------------------------------------------------- F2: a patient CD's folder of DICOM files


def test_a_patient_cd_folder_is_analysed_as_its_dicom_series_and_says_what_it_left_out(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A CD's folder holds a DICOMDIR and files that are no image beside the series: sent along, the server refused the
    whole series as "DICOM files and PNG, JPEG or TIFF images cannot be analysed together", of a folder without any
    PNG, JPEG or TIFF file."""
    (tmp_path / "DICOM").mkdir()
    images = write_series(mr_series(tumor_channels()), tmp_path / "DICOM")
    file_set = FileSet()
    for path in images:
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "file-set")
    directory = (tmp_path / "file-set" / "DICOMDIR").read_bytes()  # DICOM by its preamble; an index, no image
    extras = {"DICOMDIR": directory, "Thumbs.db": bytes(range(256)) * 4, "README.TXT": b"Open VIEWER.EXE to view."}
    for name, data in extras.items():
        (tmp_path / name).write_bytes(data)
    page.goto(live_server)

    answer = upload(page, [*images, *(tmp_path / name for name in extras)])

    assert len(answer["slices"]) == 3
    assert answer["file_errors"] == []
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#file-name")).to_have_text(
        "Selected: 3 files, IM0000 … IM0002 (left out, neither DICOM images nor PNG, JPEG or TIFF: DICOMDIR, "
        "README.TXT, Thumbs.db)"
    )
    expect(page.locator("#series-choice")).to_contain_text("3 files")


def test_files_that_are_no_image_beside_raster_slices_are_left_out_not_made_missing_slices(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Review 36: a folder of JPEG slices with two notes beside them sent the notes too; the server took each as a
    missing slice, the strip drew a gap, and two tumor slices lost their masks to the series clean-up."""
    extras = {"desktop.ini": b"[.ShellClassInfo]\r\n", "slice notes.txt": b"motion on slice 20\n"}
    for name, data in extras.items():
        (tmp_path / name).write_bytes(data)
    page.goto(live_server)

    answer = upload(page, [*RASTER_SERIES, *(tmp_path / name for name in extras)])

    assert len(answer["results"]) == len(RASTER_SERIES) and all(item["ok"] for item in answer["results"])
    expect(page.locator("#file-name")).to_contain_text(
        "(left out, neither DICOM images nor PNG, JPEG or TIFF: desktop.ini, slice notes.txt)"
    )
    expect(page.locator("#strip .strip-gap")).to_have_count(0)


# -------------------------------------------------------- F3: DICOM Bits Stored and Pixel Padding Value on the page


def drawn_slice(page: Page) -> tuple[str, str, list[int]]:
    """The default window (Level, Width) and the grey values the page drew for the slice shown."""
    grey = canvas_rgba(page)[..., 0].reshape(-1).tolist()
    return page.locator("#window-level").input_value(), page.locator("#window-width").input_value(), grey


def test_dicom_bits_above_bits_stored_and_padding_pixels_are_drawn_as_the_models_read_them(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """The page's DICOM reader ignored Bits Stored and Pixel Padding Value, which the server honours: an overlay in the
    bits above Bits Stored drew a white band across the slice (and darkened it), and a padding of -32768 around the
    head set the default window's floor, so the head was drawn white."""
    outside = np.hypot(*np.mgrid[-128:128, -128:128]) > 120
    heads = [channel.astype(np.int16) * 4 for channel in tumor_channels()]
    for head in heads:
        head[outside] = head[~outside].min()  # what the server makes of padding: the image's darkest pixel
    cases = {
        "reference": (heads, {}),
        "padded": ([np.where(outside, np.int16(-32768), head) for head in heads], {"PixelPaddingValue": -32768}),
        "reference-12-bit": ([head.astype(np.uint16) for head in heads], {"BitsStored": 12, "HighBit": 11}),
        # An overlay plane in bit 15 over rows 100-109, above the 12 bits stored.
        "overlay": ([head.astype(np.uint16) | overlay_band() for head in heads], {"BitsStored": 12, "HighBit": 11}),
        # Browser review 60 F2: 12-bit signed pixels padded -2048, the padding written 2048 (a vendor's US 2048).
        "reference-12-bit-signed": (heads, {"BitsStored": 12, "HighBit": 11}),
        "padded-2048": (
            [np.where(outside, np.int16(-2048), head) for head in heads],
            {"BitsStored": 12, "HighBit": 11, "PixelPaddingValue": 2048},
        ),
    }
    page.goto(live_server)
    drawn = {}
    for name, (images, attributes) in cases.items():
        datasets = mr_series(images)
        for dataset in datasets:
            for keyword, value in attributes.items():
                setattr(dataset, keyword, value)
        (tmp_path / name).mkdir()
        upload(page, write_series(datasets, tmp_path / name))
        page.locator("#slice-slider").fill("2")
        drawn[name] = drawn_slice(page)

    for name, reference in (
        ("padded", "reference"),
        ("overlay", "reference-12-bit"),
        ("padded-2048", "reference-12-bit-signed"),
    ):
        level, width, grey = drawn[name]
        expected_level, expected_width, expected_grey = drawn[reference]
        assert (level, width) == (expected_level, expected_width), name
        differing = int(np.count_nonzero(np.array(grey) != np.array(expected_grey)))
        assert differing == 0, f"{name}: {differing} of {len(grey)} pixels drawn otherwise than {reference}"


def overlay_band() -> np.ndarray:
    band = np.zeros((256, 256), np.uint16)
    band[100:110] = 0x8000
    return band


# ------------------------------------------------------------------------------------- F5: MONOCHROME1 windows


def test_a_monochrome1_series_is_drawn_on_one_scale_with_the_file_window_applied_as_it_is(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """The page inverted each MONOCHROME1 frame around its own range, so a series' slices were not on one scale (the
    server negates every frame alike), and applied the file's Window Center to the inverted values, where it applies
    to the stored ones. A MONOCHROME1 series storing 4095 - v is drawn as the MONOCHROME2 series storing v, every
    slice, with and without a window in the files; the Level shown is in the file's own values."""
    top = 4095
    heads = [channel.astype(np.uint16) * 4 for channel in tumor_channels()]  # maxima differ: 828, 892, 772
    center, width = 300, 500
    cases = {
        "monochrome2": (heads, "MONOCHROME2", {}),
        "monochrome1": ([top - head for head in heads], "MONOCHROME1", {}),
        "monochrome2-window": (heads, "MONOCHROME2", {"WindowCenter": center, "WindowWidth": width}),
        "monochrome1-window": (
            [top - head for head in heads],
            "MONOCHROME1",
            {"WindowCenter": top - center, "WindowWidth": width},
        ),
    }
    page.goto(live_server)
    drawn = {}
    for name, (images, photometric, attributes) in cases.items():
        datasets = mr_series(images)
        for dataset in datasets:
            dataset.PhotometricInterpretation = photometric
            for keyword, value in attributes.items():
                setattr(dataset, keyword, value)
        (tmp_path / name).mkdir()
        upload(page, write_series(datasets, tmp_path / name))
        drawn[name] = []
        for number in ("1", "2", "3"):
            page.locator("#slice-slider").fill(number)
            drawn[name].append(drawn_slice(page))

    for inverted, reference in (("monochrome1", "monochrome2"), ("monochrome1-window", "monochrome2-window")):
        for number, ((level, width_shown, grey), (expected_level, expected_width, expected_grey)) in enumerate(
            zip(drawn[inverted], drawn[reference], strict=True), start=1
        ):
            assert float(level) == top - float(expected_level), f"{inverted} slice {number}"
            assert float(width_shown) == float(expected_width), f"{inverted} slice {number}"
            differing = int(np.count_nonzero(np.abs(np.array(grey) - np.array(expected_grey)) > 1))
            assert differing == 0, f"{inverted} slice {number}: {differing} pixels drawn otherwise than {reference}"
    assert float(drawn["monochrome1-window"][0][0]) == top - center  # the file's Window Center, as it is


def test_a_miniswhite_tiff_series_is_drawn_as_the_minisblack_series_of_the_same_values(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """The page turned each MinIsWhite TIFF around its own range, so the slices of a series were shifted each by its
    own amount under the series' one window (the server takes the complement of the sample type, the same for every
    slice). A 16-bit MinIsWhite series storing 65535 - v is drawn as the MinIsBlack series storing v, every slice."""
    heads = [channel.astype(np.uint16) * 4 for channel in tumor_channels()]  # maxima differ: 828, 892, 772
    page.goto(live_server)
    drawn = {}
    for photometric, images in (("minisblack", heads), ("miniswhite", [np.invert(head) for head in heads])):
        (tmp_path / photometric).mkdir()
        paths = [tmp_path / photometric / f"slice_{index}.tif" for index in range(len(images))]
        for path, image in zip(paths, images, strict=True):
            tifffile.imwrite(path, image, photometric=photometric)
        upload(page, paths)
        drawn[photometric] = []
        for number in ("1", "2", "3"):
            page.locator("#slice-slider").fill(number)
            drawn[photometric].append(drawn_slice(page))

    for number, (inverted, reference) in enumerate(zip(drawn["miniswhite"], drawn["minisblack"], strict=True), 1):
        assert inverted[:2] == reference[:2], f"slice {number}: the default window"
        differing = int(np.count_nonzero(np.abs(np.array(inverted[2]) - np.array(reference[2])) > 1))
        assert differing == 0, f"slice {number}: {differing} pixels drawn otherwise than the MinIsBlack slice"


def test_tiled_and_planar_tiffs_are_drawn_as_the_same_slices_in_strips(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F11: the server reads TIFF slices stored in tiles or one plane per sample (tifffile), and the
    page drew them black. Each layout, compressed and differenced or not, is drawn as the same slices in strips."""
    heads = np.stack([channel.astype(np.uint16) * 4 for channel in tumor_channels()], axis=-1)
    layouts = {
        "strips": {},
        "tiles": {"tile": (64, 64), "compression": "zlib", "predictor": True},
        "planar": {"planarconfig": "separate", "rowsperstrip": 100},
        "planar_tiles": {"planarconfig": "separate", "tile": (80, 80), "compression": "lzw"},
    }
    page.goto(live_server)
    drawn = {}
    for layout, options in layouts.items():
        (tmp_path / layout).mkdir()
        paths = [tmp_path / layout / f"slice_{index}.tif" for index in range(2)]
        for path, image in zip(paths, (heads, heads[::-1]), strict=True):
            planes = options.get("planarconfig") == "separate"  # tifffile takes the planes first
            tifffile.imwrite(path, image.transpose(2, 0, 1) if planes else image, photometric="rgb", **options)
        upload(page, paths)
        drawn[layout] = []
        for number in ("1", "2"):
            page.locator("#slice-slider").fill(number)
            drawn[layout].append(drawn_slice(page))

    assert max(drawn["strips"][0][2]) > 100, "the reference slice is drawn"
    for layout in ("tiles", "planar", "planar_tiles"):
        for number, (shown, reference) in enumerate(zip(drawn[layout], drawn["strips"], strict=True), 1):
            assert shown[:2] == reference[:2], f"{layout} slice {number}: the default window"
            differing = int(np.count_nonzero(np.abs(np.array(shown[2]) - np.array(reference[2])) > 1))
            assert differing == 0, f"{layout} slice {number}: {differing} pixels drawn otherwise than in strips"


# --------------------------------------------------------------------------- F6: the folders inside a zip


def test_the_slices_of_a_zip_keep_the_order_of_their_paths_in_it(page: Page, live_server: str, tmp_path: Path) -> None:
    """Zip entries were sorted by base name alone (slice_10 before slice_2 aside, a/slice_1 before b/...); they keep
    the natural order of their paths. Slices of two folders in one zip are refused (browser review 60 F12: one volume
    over two patients)."""
    rng = np.random.default_rng(31)
    archive_path = tmp_path / "study.zip"
    two_folders = tmp_path / "two.zip"
    with zipfile.ZipFile(archive_path, "w") as archive, zipfile.ZipFile(two_folders, "w") as two:
        for entry in ("a/slice_10.png", "a/slice_2.png", "a/slice_1.png"):
            noise = png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
            archive.writestr(entry, noise)
            two.writestr(entry.replace("a/slice_1.", "b/slice_1."), noise)
    page.goto(live_server)

    upload(page, [archive_path])

    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(
        ["slice_1.png", "slice_2.png", "slice_10.png"]
    )
    page.set_input_files("#file-input", [two_folders])
    expect(page.locator("#error-title")).to_have_text(
        "The slices come from several folders. Choose one folder (one patient's series) at a time.",
        timeout=RESULT_TIMEOUT_MS,
    )
    expect(page.locator("#error-detail")).to_contain_text("come from 2 folders (two.zip/a, two.zip/b)")


def test_two_zips_or_a_zip_and_a_loose_slice_are_slices_from_two_places(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 61 F1: a zip's entries were placed by their path in the zip alone, so two patients' zips of
    slices at their top level (same-named slices: interleaved), or a zip and a loose slice, were one series."""
    rng = np.random.default_rng(37)
    zips = [tmp_path / "patient_a.zip", tmp_path / "patient_b.zip"]
    for archive_path in zips:
        with zipfile.ZipFile(archive_path, "w") as archive:
            for name in ("slice_1.png", "slice_2.png"):
                archive.writestr(name, png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))))
    loose = tmp_path / "slice_3.png"
    loose.write_bytes(png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))))
    page.goto(live_server)
    page.evaluate(RECORD_SENT)
    title = "The slices come from several folders. Choose one folder (one patient's series) at a time."

    page.set_input_files("#file-input", zips)
    expect(page.locator("#error-title")).to_have_text(title, timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error-detail")).to_contain_text("come from 2 folders (patient_a.zip, patient_b.zip)")
    page.set_input_files("#file-input", [zips[0], loose])
    expect(page.locator("#error-detail")).to_contain_text("come from 2 folders (patient_a.zip, (top level))")
    assert page.evaluate("window.sentSizes") == []

    backslashes = tmp_path / "windows.zip"  # PowerShell 5.1's Compress-Archive writes folders so (attack review 64 F2)
    with zipfile.ZipFile(zips[0]) as source, zipfile.ZipFile(backslashes, "w") as archive:
        for folder in ("patient_a", "patient_b"):
            for info in source.infolist():
                archive.writestr(f"{folder}\\{info.filename}", source.read(info))
    page.set_input_files("#file-input", [backslashes])
    expect(page.locator("#error-detail")).to_contain_text(
        "come from 2 folders (windows.zip/patient_a, windows.zip/patient_b)"
    )

    shift_jis = tmp_path / "japanese.zip"  # "表" is 0x95 0x5C in Shift-JIS: half of it reads "\\" (review 72 F11)
    with zipfile.ZipFile(zips[0]) as source, zipfile.ZipFile(shift_jis, "w") as archive:
        for info in source.infolist():
            archive.writestr(
                f"XY{info.filename}" if info.filename == "slice_1.png" else info.filename, source.read(info)
            )
    shift_jis.write_bytes(shift_jis.read_bytes().replace(b"XYslice_1", b"\x95\x5cslice_1"))
    upload(page, [shift_jis])
    expect(page.locator("#slice-table tbody tr")).to_have_count(2)

    # Names not flagged UTF-8 (browser review 60 F7): code page 437 (Windows Explorer) and UTF-8 (macOS) each read as
    # written; both were decoded to "M\ufffdller", two patients' folders one.
    unflagged = tmp_path / "explorer.zip"
    with zipfile.ZipFile(zips[0]) as source, zipfile.ZipFile(unflagged, "w") as archive:
        for folder in ("MQller", "MWller", "MZZller"):
            for info in source.infolist():
                archive.writestr(f"{folder}/{info.filename}", source.read(info))
    written = unflagged.read_bytes().replace(b"MQller", b"M\x81ller").replace(b"MWller", b"M\x84ller")
    unflagged.write_bytes(written.replace(b"MZZller", "Möller".encode()))
    page.set_input_files("#file-input", [unflagged])
    expect(page.locator("#error-detail")).to_contain_text(
        "come from 3 folders (explorer.zip/Mäller, explorer.zip/Möller, explorer.zip/Müller)"
    )

    upload(page, [zips[0]])  # one zip alone is one place
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(["slice_1.png", "slice_2.png"])


def test_zips_made_by_tar_and_choices_of_hidden_files_or_too_many_entries_say_what_they_hold(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 62 F1, F2, F5: `tar -a -cf x.zip .` names its entries "./slice.png", read as a hidden folder
    "." and refused as "no files were chosen"; a choice of hidden files only was "no files were chosen" too; and a
    zip of 30,000 entries was unpacked whole before they were counted, and crashed the tab."""
    rng = np.random.default_rng(62)
    tar_made = tmp_path / "tar_made.zip"
    with zipfile.ZipFile(tar_made, "w") as archive:
        archive.writestr("./", b"")
        for name in ("slice_1.png", "slice_2.png"):
            archive.writestr(f"./{name}", png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))))
    page.goto(live_server)

    upload(page, [tar_made])
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(["slice_1.png", "slice_2.png"])

    hidden = tmp_path / ".slice_12.png"
    hidden.write_bytes(png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))))
    page.set_input_files("#file-input", [hidden])
    expect(page.locator("#error-detail")).to_contain_text("only hidden or system files were chosen (1 file whose")

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as archive:
        for index in range(5000):
            archive.writestr(f"slice_{index}.png", b"")
    page.set_input_files("#file-input", [many])
    expect(page.locator("#error-title")).to_have_text(
        "The zip holds more files than the page reads. Choose one patient's series, or the files themselves."
    )
    expect(page.locator("#error-detail")).to_contain_text("holds 5,000 entries, more than the page reads")


def test_thumbnails_in_system_folders_of_the_chosen_folder_are_left_out(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 61 F7: one patient's folder on a Synology share (thumbnails in `@eaDir/<image>/`) was refused as
    several folders, the thumbnails counted as slices; hidden folders are left out as hidden files are."""
    folder = tmp_path / "patient"
    rng = np.random.default_rng(41)
    for name in ("slice_1.png", "slice_2.png"):
        image = png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
        (folder / "@eaDir" / name).mkdir(parents=True)
        (folder / name).write_bytes(image)
        (folder / "@eaDir" / name / "SYNOFILE_THUMB_M.jpg").write_bytes(image)
        (folder / ".thumbnails").mkdir(exist_ok=True)
        (folder / ".thumbnails" / name).write_bytes(image)
    page.goto(live_server)

    page.set_input_files("#folder-input", str(folder))

    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(
        ["slice_1.png", "slice_2.png"], timeout=RESULT_TIMEOUT_MS
    )
    hidden = folder.rename(
        tmp_path / ".patient"
    )  # the chosen folder's own name is not judged, dropped too (review 72 F2)
    page.goto(live_server)
    drop_folder(page, hidden)
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(
        ["slice_1.png", "slice_2.png"], timeout=RESULT_TIMEOUT_MS
    )


# ------------------------------------------------------------------ F7: files too large together, not one file


def answering(body: str):
    """A route handler that answers 413 with `body`."""
    return lambda route: route.fulfill(status=413, content_type="application/json", body=body)


def test_files_too_large_together_are_not_called_one_file_too_large(page: Page, live_server: str) -> None:
    """A request over MAX_BATCH_UPLOAD_BYTES or DECODE_MEMORY_BYTES with files each fine on its own (256 slices of a
    large series) was titled "The file or the image is too large."."""
    many = [{"name": f"slice_{index:03d}.png", "mimeType": "image/png", "buffer": b"\x89PNG"} for index in range(3)]
    answers = {
        "payload_too_large": "request body must be at most 134217728 bytes (MAX_BATCH_UPLOAD_BYTES); Content-Length is "
        "141239270",
        "over_memory_budget": "this request's 3 files would take 608786432 bytes (580.6 MiB) to decode",
    }
    titles = {
        "payload_too_large": "Too large to upload: the file, or the files together, are over the server's size limit.",
        "over_memory_budget": "Too large to decode: the file, or the files together, would take more memory than the "
        "server allows. Choose fewer or smaller files.",
    }
    page.goto(live_server)
    for code, message in answers.items():
        body = json.dumps({"error": {"code": code, "message": message}})
        page.route("**/v1/predict/batch*", answering(body))

        page.set_input_files("#file-input", many)

        expect(page.locator("#error-title")).to_have_text(titles[code])
        expect(page.locator("#error-detail")).to_have_text(f"Server message: {message}")
        page.unroute("**/v1/predict/batch*")


# ------------------------------------------------------------------- F8: a failed file inside a raster series


def test_an_empty_file_named_as_a_slice_of_a_raster_series_is_a_missing_slice(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 62 F3: an empty file (or a saved error page) in a slice's place was left out as "neither DICOM
    nor PNG, JPEG or TIFF": its neighbours joined without a gap, the volume short with no caveat. Sent, the server
    refuses it, and it is the missing slice it is."""
    empty = tmp_path / "TCGA_DU_A5TW_19980228_20b.png"  # sorts between _20 and _21, as the page orders names
    empty.write_bytes(b"")
    page.goto(live_server)

    upload(page, [RASTER_SERIES[0], RASTER_SERIES[1], empty, RASTER_SERIES[2]])

    expect(page.locator("#strip .strip-gap")).to_have_count(1)
    expect(page.locator("#file-name")).not_to_contain_text("neither DICOM")


def test_a_failed_file_inside_a_raster_series_is_a_missing_slice_not_a_gapless_neighbour(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """The server's series clean-up takes a failed file between two slices as a missing slice; the page's strip and
    its "next to a slice with tumor" marks took the slices either side of it as neighbours."""
    broken = tmp_path / "TCGA_DU_A5TW_19980228_20b.png"  # sorts between _20 and _21, as the page orders names
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a whole PNG")
    sent = [RASTER_SERIES[0], RASTER_SERIES[1], broken, RASTER_SERIES[2], RASTER_SERIES[3]]
    # Near and beside the tumor; tumor; (failed); near, beside the tumor only across the failed file; tumor-free.
    faked = series_answer_with(live_server, RASTER_SERIES, [0.100, 0.6, 0.105, 0.075], threshold=0.116)
    failed = {"index": 2, "ok": False, "error": {"code": "invalid_image", "message": "the PNG data breaks off"}}
    faked["results"] = [*faked["results"][:2], failed, *faked["results"][2:]]
    for index, item in enumerate(faked["results"]):
        item["index"] = index
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(faked)),
    )
    page.goto(live_server)

    upload(page, sent)

    # The strip keeps the failed file's place, empty, between the second and third slice.
    assert page.locator("#strip > div:not(.strip-threshold)").evaluate_all(
        "items => items.map((item) => item.className.includes('strip-gap') ? 'gap' : item.dataset.index)"
    ) == ["0", "1", "gap", "2", "3"]
    beside = page.locator("#strip .strip-bar").evaluate_all(
        "bars => bars.map((bar) => bar.classList.contains('beside-tumor'))"
    )
    assert beside == [True, False, False, False]
    expect(page.locator("#slice-summary")).to_have_text(
        "4 slices, 1 with tumor, 2 close to the threshold (1 of them next to a slice with tumor)"
    )
    expect(page.locator("#strip-legend")).to_contain_text(
        "Hatched space: missing slices (files that could not be analysed"
    )
    expect(page.locator("#file-errors")).to_contain_text("TCGA_DU_A5TW_19980228_20b.png (the PNG data breaks off)")
