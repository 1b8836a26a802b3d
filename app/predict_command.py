"""`brain-tumor predict`: files and folders in, the API's answers out as JSON, a table or CSV; masks as PNGs.

Inputs are checked before the models load (a missing path or an empty folder stops the command with one line), no
mask file is ever written twice in a run (two same-named inputs are refused, not silently overwritten), and raster
images are read, decoded and run `INFERENCE_BATCH_SIZE` files at a time, so they take the same memory however many
files there are, and progress can be shown between chunks. A series (DICOM files, or images with `--series`) is read
whole, as one `POST /v1/predict/batch` request: its files together may hold at most `MAX_BATCH_UPLOAD_BYTES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import io
import json
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from app import schemas
from app.core.model_store import ModelStoreError
from app.errors import FileUnreadableError, ServiceError
from app.exit_codes import EXIT_FAILED, EXIT_MODELS, EXIT_OK, EXIT_USAGE, fail, printable
from app.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from app.inference import Predictor
    from app.model_runners import ModelRunner
    from app.prediction import BatchAnswer, PredictionService
    from app.series.sequence_rules import SelectionRules
    from app.uploads import UploadLimits

# `<stem>_predicted_mask.png`, as the upload page names its masks: never the LGG ground truth's `<stem>_mask.png`, so
# a predicted mask written beside the data cannot be taken for (or replace) the annotation.
MASK_SUFFIX = "_predicted_mask"
# Files a folder argument leaves out: ground-truth `*_mask.*` files, and (since MASK_SUFFIX ends with it too) the
# masks an earlier run wrote there.
SKIPPED_SUFFIX = "_mask"
_NUMBER = re.compile(r"(\d+)")


class PrintFormat(StrEnum):
    """What `brain-tumor predict` prints on stdout; not the API's `schemas.OutputFormat`, which picks DICOM outputs."""

    JSON = "json"
    TABLE = "table"
    CSV = "csv"


class InputError(ValueError):
    """The command's inputs cannot be used as given (a missing path, an empty folder, two masks on one file)."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The API's flow and answers, offline: PNG/JPEG/TIFF files one result each (as `POST /v1/predict/batch`), DICOM
    files as one series with one result per slice. Exit codes: see `app.cli.PREDICT_EPILOG`.

    The whole command lives here, `app.cli` only parses its arguments: the inputs are
    checked before the models load, so a missing file is one line in a moment.
    """
    from app.series.sequence_rules import SelectionRules
    from app.uploads import UploadLimits

    try:
        files = collect_inputs(args.files)
        dicom = holds_dicom(files)
        if dicom or args.series:
            check_series_size(files, settings.max_batch_upload_bytes)
        masks = None
        if args.masks_dir:
            masks = mask_targets(
                files,
                Path(args.masks_dir),
                every_file_has_a_mask=not dicom,
                overwrite=args.overwrite,
            )
            prepare_masks_dir(Path(args.masks_dir))
    except InputError as error:
        return fail(f"brain-tumor predict: error: {error}", EXIT_USAGE)
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        predictor = load_predictor_quietly(settings, args.model_dir, args.verbose)
    except ModelStoreError as error:
        return fail(f"brain-tumor predict: cannot load the models: {error}", EXIT_MODELS)
    command = PredictRun(
        predictor=predictor,
        limits=UploadLimits.from_settings(settings),
        rules=SelectionRules.from_settings(settings),
        batch_size=settings.inference_batch_size,
        files=files,
        dicom=dicom,
        mask_format=args.mask_format,
        masks=masks,
        progress=Progress(sys.stderr if show_progress else None),
        writer=MaskWriter(overwrite=args.overwrite),
        series=args.series,
    )
    try:
        report, every_file_ok = asyncio.run(command.run())
    except ServiceError as error:  # the files as a whole: mixed DICOM and images, frames that form no series
        if args.format == PrintFormat.JSON:
            print(json.dumps(error.body(), indent=2))
        return fail(f"brain-tumor predict: error: {error.message}", EXIT_FAILED)
    except InputError as error:  # DICOM masks on one file, or on a file already there: known once the series is read
        return fail(f"brain-tumor predict: error: {error}", EXIT_USAGE)
    try:
        sys.stdout.write(render(report, PrintFormat(args.format)))
        sys.stdout.flush()
    except OSError as error:  # a full disk, a closed pipe: the results are lost, so say so
        discard_standard_output()
        return fail(f"brain-tumor predict: error: cannot write the output: {error.strerror or error}", EXIT_USAGE)
    return EXIT_OK if every_file_ok else EXIT_FAILED


def load_predictor_quietly(settings: Settings, model_dir: Path | None, verbose: bool) -> Predictor:
    """`app.inference.load_predictor`, with TensorFlow's startup log held back unless `verbose` (see
    `app.tensorflow_log`). No warm-up: one run of `predict` compiles what it runs anyway, and a warm-up at
    INFERENCE_BATCH_SIZE would compile sizes it may never use."""
    from app.tensorflow_log import tensorflow_log_held

    with tensorflow_log_held(verbose):
        from app.inference import load_predictor

        return load_predictor(settings, model_dir, warm_up=False)


def discard_standard_output() -> None:
    """Point standard output at /dev/null, so that the interpreter's own flush at exit does not fail again with a
    traceback-like "Exception ignored" (the way the Python docs handle a closed pipe)."""
    # Not a real file (a test's capture): nothing is left to flush at exit.
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def collect_inputs(arguments: Sequence[str]) -> list[Path]:
    """The files to predict: each file argument, and the files directly inside each folder argument.

    A folder gives its files in natural order (`slice_2` before `slice_10`), leaving out subfolders, hidden files
    and files named `*_mask.*` (ground-truth masks beside LGG slices, or the `*_predicted_mask.png` of an earlier run
    written there). An entry that is no regular file (a link that leads nowhere, a pipe) is kept in its place, and
    `read_file` gives it an error there: left out, it made a slice of a series vanish without a word.

    Raises
    ------
    InputError
        If a path does not exist, or a folder holds no file to predict.
    """
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                (
                    child
                    for child in path.iterdir()
                    if not child.is_dir() and not child.name.startswith(".") and not child.stem.endswith(SKIPPED_SUFFIX)
                ),
                key=natural_key,
            )
            if not found:
                raise InputError(
                    f"no files to predict in the folder {argument} (hidden and *_mask.* files are skipped)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():  # a FIFO would hang the read, a device has no end
            raise InputError(f"{argument} is not a regular file (a pipe, a device or a socket)")
        elif path.is_symlink():
            raise InputError(f"{argument} is a symbolic link that leads nowhere (a missing target or a loop)")
        else:
            raise InputError(f"no such file or folder: {argument}")
    return files


def natural_key(path: Path) -> list[str | int]:
    return [int(part) if part.isdigit() else part.lower() for part in _NUMBER.split(path.name)]


def mask_targets(
    files: Sequence[Path], masks_dir: Path, every_file_has_a_mask: bool = True, overwrite: bool = False
) -> list[Path]:
    """Where each file's mask goes: `masks_dir/<stem>_predicted_mask.png` (a DICOM instance with several frames gets
    `<stem>_frame<N>_predicted_mask.png` per frame).

    Parameters
    ----------
    every_file_has_a_mask
        True for raster images: then two files sharing a name is refused here, before anything runs. False for
        DICOM, where only the files holding FLAIR frames get masks (`pre/IM1.dcm`, `flair/IM1.dcm`, `post/IM1.dcm`
        is fine): `MaskWriter` refuses a second mask on one file instead.
    overwrite
        False refuses a target that is already a file (for raster images; `MaskWriter` checks DICOM masks).

    Raises
    ------
    InputError
        If two inputs would write the same mask (`a/slice.png` and `b/slice.png`, `slice.png` and `slice.tif`, a
        file given twice), a mask would overwrite an input, or (without `overwrite`) a file already there, such as
        the mask of an earlier run: rather than one file silently replacing another.
    """
    targets = [masks_dir / f"{path.stem}{MASK_SUFFIX}.png" for path in files]
    inputs = {os.path.abspath(path) for path in files}
    for path, target in zip(files, targets, strict=True):
        if os.path.abspath(target) in inputs:
            raise InputError(f"the mask of {path} would overwrite the input {target}; choose another --masks-dir")
    if not every_file_has_a_mask:
        return targets
    by_target: dict[str, list[Path]] = {}
    for path, target in zip(files, targets, strict=True):
        by_target.setdefault(os.path.abspath(target), []).append(path)
    for target, sharing in by_target.items():
        if len(sharing) > 1:
            raise InputError(
                f"the masks of {' and '.join(map(str, sharing))} would all be written to {target}; "
                "predict same-named files in separate runs, each with its own --masks-dir"
            )
    if not overwrite:
        for target in targets:
            if target.exists() or target.is_symlink():
                raise InputError(already_there(target))
    return targets


def already_there(target: Path) -> str:
    return (
        f"the mask file {target} already exists; choose another --masks-dir, or pass --overwrite to replace the "
        "masks of an earlier run"
    )


def prepare_masks_dir(masks_dir: Path) -> None:
    """Create `masks_dir` before the models load, so an unusable one stops the command before any work is done.

    Raises
    ------
    InputError
        If it is a file, or cannot be created or written.
    """
    if masks_dir.exists() and not masks_dir.is_dir():
        raise InputError(f"cannot use --masks-dir {masks_dir}: it is a file, not a folder")
    try:
        masks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot use --masks-dir {masks_dir}: {error.strerror}") from error
    if not os.access(masks_dir, os.W_OK | os.X_OK):
        raise InputError(f"cannot use --masks-dir {masks_dir}: it is not writable")


@dataclass
class Progress:
    """`[done/total] what` lines on a stream (standard error), or nothing when `stream` is None."""

    stream: TextIO | None
    done: int = 0

    def advance(self, count: int, total: int, what: str) -> None:
        self.done += count
        if self.stream is not None:
            print(f"[{self.done}/{total}] {what}", file=self.stream, flush=True)


@dataclass
class MaskWriter:
    """Writes masks as 8-bit PNGs (0 background, 255 tumor); refuses to write one file twice in a run, and to replace
    a file already there unless `overwrite`."""

    written: set[Path] = field(default_factory=set)
    overwrite: bool = False

    def write(self, target: Path, mask: np.ndarray) -> str:
        from app.masks import png_bytes

        key = Path(os.path.abspath(target))
        if key in self.written:
            raise InputError(
                f"two slices' masks would both be written to {target}; predict same-named files in separate runs, "
                "each with its own --masks-dir"
            )
        data = png_bytes(mask)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symbolic link planted where the mask goes is never written through, --overwrite or not.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if self.overwrite else os.O_EXCL)
            with os.fdopen(os.open(target, flags, 0o644), "wb") as stream:
                stream.write(data)
        except OSError as error:  # the file already there, a full disk, a folder that is a file
            if isinstance(error, FileExistsError) and error.filename == str(target):
                raise InputError(already_there(target)) from error
            raise InputError(f"cannot write the mask file {target}: {error.strerror}") from error
        self.written.add(key)
        return str(target)


@dataclass
class PredictRun:
    """One `brain-tumor predict`: the models, the inputs, where masks go and how progress shows.

    `batch_size` is both the most slices per model call and the number of raster files read and decoded at once.
    With `series`, the raster files are the slices of one volume in order: decoded together, so that their masks get
    the series clean-up (as `POST /v1/predict/batch?series=true`). DICOM files always form a series.
    """

    predictor: Predictor
    limits: UploadLimits
    batch_size: int
    files: list[Path]
    dicom: bool
    mask_format: schemas.MaskFormat
    masks: list[Path] | None
    progress: Progress
    writer: MaskWriter = field(default_factory=MaskWriter)
    rules: SelectionRules | None = None
    series: bool = False

    def _service(self, run_models: ModelRunner) -> PredictionService:
        from app.prediction import PredictionService
        from app.series.sequence_rules import SelectionRules

        return PredictionService(
            self.predictor, run_models, self.limits, offload=False, rules=self.rules or SelectionRules()
        )

    async def run(self) -> tuple[dict, bool]:
        """The report (the JSON the command prints) and whether every file was predicted.

        Raises
        ------
        app.errors.ServiceError
            If the files cannot be predicted together (DICOM mixed with images, frames that form no series).
        """
        if self.dicom:
            return await self._series(self._read(self.files))
        return await self._images()

    def _read(self, files: Sequence[Path]) -> list[bytes | ServiceError]:
        return [read_file(path, self.limits) for path in files]

    async def _images(self) -> tuple[dict, bool]:
        """Raster images, one result per file, as `POST /v1/predict/batch`: `batch_size` files read and run at a
        time, or with `series` all at once (the clean-up needs the whole volume)."""
        from app.model_runners import predictor_runner
        from app.prediction import BatchAnswer

        if self.series:
            uploads = self._read(self.files)
            answer = await self._service(self._series_runner()).predict_files(uploads, self.mask_format, series=True)
            assert isinstance(answer, BatchAnswer)  # no DICOM among them
            results = self._image_results(0, answer)
        else:
            service = self._service(predictor_runner(self.predictor, self.batch_size))
            results = []
            total = len(self.files)
            for start in range(0, total, self.batch_size):
                chunk = self.files[start : start + self.batch_size]
                answer = await service.predict_files(self._read(chunk), self.mask_format)
                assert isinstance(answer, BatchAnswer)  # no DICOM among them
                results.extend(self._image_results(start, answer))
                self.progress.advance(len(chunk), total, chunk[-1].name)
        report = {"results": results, "models": self.predictor.model_tags}
        return report, all(result["ok"] for result in results)

    def _image_results(self, start: int, answer: BatchAnswer) -> list[dict]:
        """The results of the files from `start` on, their masks written."""
        results = []
        for offset, (prediction, outcome) in enumerate(zip(answer.predictions, answer.outcomes, strict=True)):
            index = start + offset
            item = {"index": index, "file": str(self.files[index])}
            results.append(self._result(item, prediction, outcome, self.masks[index] if self.masks else None))
        return results

    async def _series(self, uploads: list[bytes | ServiceError]) -> tuple[dict, bool]:
        """DICOM files as one series: one result per slice, named after the file holding its FLAIR frame."""
        from app import payloads
        from app.prediction import SeriesAnswer
        from app.series.rejection_notes import WITHDRAWAL_CODES

        answer = await self._service(self._series_runner()).predict_files(uploads, self.mask_format)
        assert isinstance(answer, SeriesAnswer)  # DICOM files, no SEG asked for
        positions = instance_positions(uploads)
        frames = Counter(item.sop_instance_uid for item in answer.slices or [])
        results = []
        for index, (item, prediction) in enumerate(zip(answer.slices or [], answer.result.predictions, strict=True)):
            position = positions.get(item.sop_instance_uid)
            target = None
            if self.masks and position is not None:
                target = self.masks[position]
                if frames[item.sop_instance_uid] > 1:
                    target = target.with_name(
                        f"{target.stem.removesuffix(MASK_SUFFIX)}_frame{item.frame_number}{MASK_SUFFIX}.png"
                    )
            entry = {
                "index": index,
                "file": None if position is None else str(self.files[position]),
                "file_index": item.file_index,
                "sop_instance_uid": item.sop_instance_uid,
                "frame_number": item.frame_number,
                "position_along_normal_mm": item.position_along_normal_mm,
                "slices_missing_before": item.slices_missing_before,
            }
            results.append(self._result(entry, prediction, item.prediction, target))
        failures = [
            {"index": position, "file": str(self.files[position]), "ok": False, "error": error.to_dict()}
            for position, error in sorted(answer.file_errors.items())
        ]
        series = payloads.series_summary(answer.result, answer.choice)
        report = {"series": series, "results": results, "file_errors": failures, "models": self.predictor.model_tags}
        # A rejection note applied and the images it withdrew are left out as asked: listed, no failure.
        return report, all(item["error"]["code"] in WITHDRAWAL_CODES for item in failures)

    def _result(self, item: dict, prediction: object, payload: object, target: Path | None) -> dict:
        if isinstance(payload, ServiceError):
            return {**item, "ok": False, "error": payload.to_dict()}
        assert isinstance(payload, schemas.Prediction)
        item = {**item, "ok": True, "prediction": payload.model_dump(mode="json")}
        mask = getattr(prediction, "mask", None)
        if target is not None and mask is not None:
            item["mask_file"] = self.writer.write(target, mask)
        return item

    def _series_runner(self) -> ModelRunner:
        """`predictor_runner` with progress per chunk of slices: a DICOM series (or a `series` of images) is one call
        of the flow, so its progress can only be told from inside the runner."""
        from app.model_runners import predictor_runner

        def advance(count: int, total: int) -> None:
            self.progress.advance(count, total, "slices")

        return predictor_runner(self.predictor, self.batch_size, on_chunk=advance)


def holds_dicom(files: Sequence[Path]) -> bool:
    """True if any of `files` is DICOM, told from its first bytes (a file that cannot be read is not: its error shows
    in its place later)."""
    from app.dicom.dicom_header import DICOM_SIGNATURE_BYTES, is_dicom

    for path in files:
        if not_regular(path):
            continue
        try:
            with open_regular(path) as stream:
                if is_dicom(stream.read(DICOM_SIGNATURE_BYTES) or b""):
                    return True
        except OSError:
            continue
    return False


def check_series_size(files: Sequence[Path], max_bytes: int) -> None:
    """Refuse a series whose files together are larger than `max_bytes`: a series is read whole before it is
    decoded, as one `POST /v1/predict/batch` request, which the service bounds the same way.

    Raises
    ------
    InputError
        If the files' sizes add up to more than `max_bytes`.
    """
    total = 0
    for path in files:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue  # `read_file` gives it its error in place
    if total > max_bytes:
        raise InputError(
            f"a series is read whole, and its {len(files)} files hold {total} bytes; at most {max_bytes} "
            "(MAX_BATCH_UPLOAD_BYTES, as one /v1/predict/batch request): predict fewer files at a time"
        )


def not_regular(path: Path) -> str | None:
    """Why `path` is never opened, or None for a regular file (or a folder, or a path `stat` cannot reach: opening
    it says why). A pipe's read waits for a writer; a device's may never end, or block (a folder's link to /dev/ptmx
    would hang the command before any output)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a folder fails to open at once, and says so
        return None
    return "it is a pipe" if stat.S_ISFIFO(mode) else "it is not a regular file (a device or a socket)"


def open_regular(path: Path) -> io.BufferedReader:
    """`path` opened for reading without waiting, once the open file is found regular: `not_regular` looks before
    opening, but a special file that `stat` calls regular can still wait for ever (a link to /proc/kmsg), and the file
    can be swapped between the look and the open. A read that would wait raises `BlockingIOError`, or gives None.

    Raises
    ------
    OSError
        It cannot be opened, is a folder (`IsADirectoryError`), or is no regular file.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_file(path: Path, limits: UploadLimits | None = None) -> bytes | ServiceError:
    """The file's bytes, or the error that takes its place. With `limits`, at most `max_upload_bytes` + 1 bytes are
    read: a file over the limit (a 3 GB file, /dev/zero) is refused as the API refuses it, without filling memory."""
    if reason := not_regular(path):  # a folder's entry; an argument is refused
        return FileUnreadableError(f"cannot read the file: {reason}")
    try:
        with open_regular(path) as stream:
            data = stream.read() if limits is None else stream.read(limits.max_upload_bytes + 1)
    except BlockingIOError:
        data = None
    except OSError as error:
        return FileUnreadableError(f"cannot read the file: {error.strerror or error}")
    if data is None:
        return FileUnreadableError("cannot read the file: its read would wait (a special file)")
    if limits is not None and (error := _size_error(len(data), limits)) is not None:
        return error  # its traceback holds no frame with the bytes read: a refused file keeps no memory
    return data


def _size_error(size: int, limits: UploadLimits) -> ServiceError | None:
    """`check_upload_size`'s refusal of a file of `size` bytes, without the traceback (attack review 65 F1: the
    error kept `read_file`'s frame alive, and with it 20 MiB read from each of 100 links to /proc files)."""
    from app.uploads import check_upload_size

    try:
        check_upload_size(size, limits, complete=False)
    except ServiceError as error:
        return error.with_traceback(None)
    return None


def instance_positions(uploads: Sequence[bytes | ServiceError]) -> dict[str, int]:
    """SOP Instance UID -> position of the file that holds it (to name a slice's mask after its file)."""
    from app.dicom.dicom_header import read_header

    positions = {}
    for position, data in enumerate(uploads):
        if not isinstance(data, bytes):
            continue
        header = read_header(data, ["SOPInstanceUID"])
        if header is None:  # a file the series reader could not read either; it is in file_errors
            continue
        uid = getattr(header, "SOPInstanceUID", None)
        if uid is not None:
            positions.setdefault(str(uid), position)
    return positions


def render(report: dict, print_format: PrintFormat) -> str:
    """The report as the command prints it on standard output."""
    if print_format == PrintFormat.JSON:
        return json.dumps(report, indent=2) + "\n"
    rows = report["results"] + report.get("file_errors", [])
    if print_format == PrintFormat.CSV:
        return csv_text(rows)
    return table_text(rows, report.get("series"))


CSV_COLUMNS = (
    "index",
    "file",
    "sop_instance_uid",
    "frame_number",
    "ok",
    "tumor_probability",
    "tumor_detected",
    "threshold",
    "area_pixels",
    "mask_file",
    "error_code",
    "error_message",
)


def flat_row(result: dict) -> dict[str, object]:
    """One result as CSV_COLUMNS (empty where a value does not apply)."""
    prediction = result.get("prediction") or {}
    mask = prediction.get("mask") or {}
    error = result.get("error") or {}
    return {
        "index": result["index"],
        "file": result.get("file") or "",
        "sop_instance_uid": result.get("sop_instance_uid", ""),
        "frame_number": result.get("frame_number", ""),
        "ok": str(result["ok"]).lower(),
        "tumor_probability": prediction.get("tumor_probability", ""),
        "tumor_detected": str(prediction["tumor_detected"]).lower() if prediction else "",
        "threshold": prediction.get("threshold", ""),
        "area_pixels": mask.get("area_pixels", 0 if prediction else ""),
        "mask_file": result.get("mask_file", ""),
        "error_code": error.get("code", ""),
        "error_message": error.get("message", ""),
    }


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a DICOM file's SOP Instance UID of
    `=HYPERLINK(...)`, a file named `@SUM(...).png`) gets a leading apostrophe, which spreadsheets read as "this is
    text", as the upload page's slices.csv does; numbers stay as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_text(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {
            key: formula_safe(printable(value) if isinstance(value, str) else value)
            for key, value in flat_row(row).items()
        }
        for row in rows
    )
    return buffer.getvalue()


def probability_text(probability: float) -> str:
    """A probability to 3 decimals, its ends as ">0.999" and "<0.001": rounded, 0.9997 read "1.000", a certainty no
    model output is (the page says "> 99.9 %"). One word, so that a cell stays one column for awk."""
    if probability >= 0.9995:
        return ">0.999"
    return "<0.001" if probability < 0.0005 else f"{probability:.3f}"


def table_text(rows: Sequence[dict], series: dict | None) -> str:
    """Aligned columns for a person: one line per file (or DICOM slice), then the series' verdict."""
    header = ["#", "file", "result", "probability", "area px", "mask or error"]
    if series is not None:
        header.insert(2, "frame")
    lines = [header]
    for row in rows:
        flat = flat_row(row)
        if not row["ok"]:
            result, detail = "error", f"{flat['error_code']}: {flat['error_message']}"
        else:
            result = "tumor" if flat["tumor_detected"] == "true" else "no tumor"
            detail = str(flat["mask_file"])
        probability = "" if flat["tumor_probability"] == "" else probability_text(float(flat["tumor_probability"]))
        cells = [str(flat["index"]), str(flat["file"]), result, probability, str(flat["area_pixels"]), detail]
        if series is not None:
            cells.insert(2, str(flat["frame_number"]))
        lines.append([printable(cell) for cell in cells])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = (
        "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
        )
        + "\n"
    )
    if series is not None:
        verdict = "tumor detected" if series["tumor_detected"] else "no tumor detected"
        volume = series["tumor_volume_ml"]
        text += f"series: {verdict}, volume {'unknown (no geometry)' if volume is None else f'{volume:.2f} mL'}\n"
    return text
