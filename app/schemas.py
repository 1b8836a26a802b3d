"""Response bodies of the HTTP API (pydantic v2), also printed by `brain-tumor predict`.

Field order here is the order clients see in the JSON.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.core.model_store import Manifest, ModelEntry
from app.release import service_version

Size = Annotated[list[int], Field(min_length=2, max_length=2, description="[height, width] in pixels")]


class MaskFormat(StrEnum):
    """Which encodings of the mask to return."""

    RLE = "rle"
    PNG = "png"
    BOTH = "both"

    @property
    def includes_rle(self) -> bool:
        return self in (MaskFormat.RLE, MaskFormat.BOTH)

    @property
    def includes_png(self) -> bool:
        return self in (MaskFormat.PNG, MaskFormat.BOTH)


class RunLengthEncoding(BaseModel):
    """COCO compressed RLE (column-major, starting with a run of zeros), as `pycocotools.mask.encode` writes it."""

    size: Size
    counts: str


class Mask(BaseModel):
    """The predicted tumor mask at the input image's size; `rle` and `png` appear only when requested."""

    size: Size
    rle: RunLengthEncoding | None = Field(default=None, exclude_if=lambda value: value is None)
    png: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="base64 of an 8-bit single-channel PNG, 0 = background, 255 = tumor",
    )
    area_pixels: int = Field(ge=0)
    bbox: list[int] | None = Field(
        description="[x, y, width, height] of the tumor pixels; null when the mask is empty",
    )


class ModelTags(BaseModel):
    """`name@version` of each model that produced the answer."""

    classifier: str
    segmenter: str


class Prediction(BaseModel):
    """The answer for one slice. `mask` is null when no tumor is detected (the segmenter then does not run), and for
    a slice answered on its own (not in a series) when `tumor_probability` is below the segmenter's
    `single_slice_mask_min_probability` or no mask piece reaches its `single_slice_min_component_pixels`
    (GET /v1/models)."""

    tumor_probability: float = Field(
        ge=0.0,
        le=1.0,
        description="the classifier's probability that the slice shows tumor (with flip_average in GET /v1/models: "
        "the mean over the slice and its left-right mirror); reproducible to about 1e-8, not bit for bit: the "
        "models run on the slice batched with others (of the request, or of other clients' requests at the same "
        "moment), and the batch's size changes float32 rounding. Compare answers with a tolerance",
    )
    tumor_detected: bool = Field(
        description="tumor_probability >= threshold; in a series, also that the slice's mask survived the series "
        "clean-up"
    )
    threshold: float = Field(description="the classifier's decision threshold")
    mask: Mask | None


class PredictionResponse(Prediction):
    models: ModelTags
    request_id: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorDetail


class BatchItemSuccess(BaseModel):
    index: int = Field(ge=0, description="position of the file in the request")
    ok: Literal[True] = True
    prediction: Prediction


class BatchItemFailure(BaseModel):
    index: int = Field(ge=0, description="position of the file in the request")
    ok: Literal[False] = False
    error: ErrorDetail


class BatchPredictionResponse(BaseModel):
    results: list[BatchItemSuccess | BatchItemFailure]
    notes: list[str] = Field(
        default_factory=list,
        description="notes on the files as a whole: with series=true, when the numbers their names end with "
        "disagree with the order sent (the series is read in the order sent)",
    )
    models: ModelTags
    request_id: str


class OutputFormat(StrEnum):
    """What a prediction request returns: JSON, a DICOM Segmentation, a DICOM SR volume report, or both DICOM objects
    as one multipart/related answer (DICOM input only; the report and both only from /v1/predict/batch, for a whole
    series)."""

    JSON = "json"
    DICOM_SEG = "dicom-seg"
    DICOM_SR = "dicom-sr"
    DICOM_SEG_SR = "dicom-seg-sr"

    @property
    def whole_series_only(self) -> bool:
        return self in (OutputFormat.DICOM_SR, OutputFormat.DICOM_SEG_SR)


class SeriesSlice(BaseModel):
    """One slice of a DICOM series: the instance (and frame) it came from, and its prediction."""

    index: int = Field(
        ge=0,
        description="position of this slice in `slices`, from 0 (the slices read, numbered among themselves); the "
        "file it came from is file_index",
    )
    file_index: int = Field(
        ge=0,
        description="position in the request of the file the slice (its FLAIR frame) was read from: the numbering of "
        "file_errors[].index, series_used[].files, series_left_out[].files and X-Skipped-File-Indices",
    )
    sop_instance_uid: str = Field(description="the FLAIR instance the slice was read from")
    frame_number: int = Field(ge=1, description="frame within that instance, from 1")
    position_along_normal_mm: float | None = Field(
        description="the slice's Image Position (Patient) along the series' slice normal, turned to point along its "
        "patient axis's positive way (an axial series: from the feet to the head), in mm: the slices sorted by it "
        "ascending are in the anatomical order the series clean-up and the volume use, however the series is stored "
        "(`slices` itself is in the order read); null unless every slice has a position"
    )
    slices_missing_before: int = Field(
        ge=0,
        description="slices missing between this slice and the one before it in that order (counted in the "
        "series' spacing; they add up to slices_missing): where a viewer leaves room for them",
    )
    prediction: Prediction


class SeriesUse(BaseModel):
    """A DICOM series of the request, the role sequence selection gave it, and the evidence for it."""

    role: str = Field(description="FLAIR, T1 pre-contrast, T1 post-contrast, or other")
    series_number: int | None
    series_description: str
    evidence: str = Field(description="why the series has this role: name patterns or sequence attributes matched")
    files: list[int] = Field(
        description="positions of the series' files in the request; one that could not be read (a repeated instance, "
        "a broken file) is in file_errors too"
    )


SeriesUsed = Annotated[
    list[SeriesUse],
    Field(description="FLAIR alone, or T1 pre-contrast, FLAIR, T1 post-contrast: the model's channels, in order"),
]
SeriesLeftOut = Annotated[
    list[SeriesUse],
    Field(description="the request's other series: their files are not read (and not counted as errors)"),
]
SelectionNotes = Annotated[
    list[str], Field(description="what else sequence selection decided, e.g. T1 series left out and why")
]


class SeriesChoice(BaseModel):
    """Which series the models read (chosen by sequence selection, never by upload order) and which were left out."""

    series_used: SeriesUsed
    series_left_out: SeriesLeftOut
    selection_notes: SelectionNotes


class SeriesPredictionResponse(BaseModel):
    """The answer for DICOM files sent together: one result per slice, the series as a whole, and the series read."""

    tumor_detected: bool = Field(description="true when any slice is positive")
    tumor_volume_ml: float | None = Field(
        description="sum of mask areas x slice spacing, in millilitres; null when the geometry is missing"
    )
    slices_missing: int | None = Field(
        description="slices missing between those analysed (positions further apart than the series' spacing): "
        "files that could not be read, or part of a series sent; the volume leaves them out. null when the slices "
        "have no positions (Secondary Captures): nothing is known of gaps"
    )
    tumor_reaches_series_end: bool = Field(
        description="a slice at either end of those analysed shows tumor: the tumor may go on beyond the slices sent, "
        "and the volume may be cut short"
    )
    threshold: float
    slices: list[SeriesSlice] = Field(
        description="one per slice read, in the order read: the files' order in the request (a multi-frame file's "
        "frames in frame order), not sorted; position_along_normal_mm gives the anatomical order"
    )
    file_errors: list[BatchItemFailure] = Field(description="files that could not be read, by their position")
    series_used: SeriesUsed
    series_left_out: SeriesLeftOut
    selection_notes: SelectionNotes
    models: ModelTags
    request_id: str


class ModelInfo(BaseModel):
    name: str
    version: str
    tag: str
    parameters: int
    threshold: float
    flip_average: bool = Field(
        default=False,
        description="the probability is the mean of the model's outputs for the slice and its left-right mirror",
    )

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> ModelInfo:
        return cls(
            name=entry.name,
            version=entry.version,
            tag=entry.tag,
            parameters=entry.parameters,
            threshold=entry.threshold,
            flip_average=entry.flip_average,
        )


class SegmenterInfo(ModelInfo):
    """The segmenter's entry: `ModelInfo` and the mask rules, which only the segmenter's manifest entry sets (on
    the classifier's entry they would read 0, as if the rules were off)."""

    single_slice_mask_min_probability: float = Field(
        default=0.0,
        description="a slice answered on its own (not in a series) gets a mask only when tumor_probability is at "
        "least this; below it the slice is still reported as tumor, without a mask (0: every positive slice)",
    )
    single_slice_min_component_pixels: int = Field(
        default=0,
        description="a slice answered on its own loses mask pieces smaller than this many pixels of the 256 x 256 "
        "grid; when none is left the slice is still reported as tumor, without a mask (0: every piece kept)",
    )
    series_min_component_voxels: int = Field(
        default=0,
        description="in a series, 3-D mask pieces smaller than this many voxels of the 256 x 256 grid are dropped "
        "(the series clean-up), and a slice left without a mask is not detected (0: no clean-up)",
    )

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> SegmenterInfo:
        return cls(
            **ModelInfo.from_entry(entry).model_dump(),
            single_slice_mask_min_probability=entry.single_slice_mask_min_probability,
            single_slice_min_component_pixels=entry.single_slice_min_component_pixels,
            series_min_component_voxels=entry.series_min_component_voxels,
        )


class ModelsResponse(BaseModel):
    """The public part of the model manifest (file names and hashes left out)."""

    classifier: ModelInfo
    segmenter: SegmenterInfo
    input_shape: list[int]
    preprocessing: str
    metrics: dict
    training_data: str
    versions: dict[str, str] = Field(description="framework versions that exported the models")
    format_version: int
    runtime: Literal["keras", "onnxruntime"] = Field(
        description="what runs the models in this service (INFERENCE_RUNTIME): Keras, or ONNX Runtime on the CPU"
    )
    max_batch_files: int = Field(
        description="most files in one /v1/predict/batch request (MAX_BATCH_FILES): a client checks a series against "
        "it before uploading (browser review 44 F6: a series of 300 slices was uploaded, then refused)"
    )
    max_upload_bytes: int = Field(
        description="largest file one upload may hold, in bytes (MAX_UPLOAD_BYTES): a client checks each file against "
        "it before uploading, rather than send a large file whole to have it refused"
    )
    max_batch_upload_bytes: int = Field(
        description="most bytes one /v1/predict/batch request may carry, its files together (MAX_BATCH_UPLOAD_BYTES): "
        "a client checks a series against it before uploading (browser review 60 F1: 300 MB were uploaded, then "
        "refused)"
    )
    service_version: str = Field(
        description="the release of this service (its package version, as in the SEGs' and SRs' Software Versions)"
    )

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        runtime: str,
        max_batch_files: int,
        max_upload_bytes: int,
        max_batch_upload_bytes: int,
    ) -> ModelsResponse:
        return cls(
            runtime=runtime,
            max_batch_files=max_batch_files,
            max_upload_bytes=max_upload_bytes,
            max_batch_upload_bytes=max_batch_upload_bytes,
            service_version=service_version(),
            classifier=ModelInfo.from_entry(manifest.classifier),
            segmenter=SegmenterInfo.from_entry(manifest.segmenter),
            input_shape=manifest.input_shape,
            preprocessing=manifest.preprocessing,
            metrics=without_patient_breakdowns(manifest.metrics),
            training_data=manifest.training_data,
            versions=manifest.versions,
            format_version=manifest.format_version,
        )


PATIENT_BREAKDOWN_SUFFIX = "_by_patient"


def without_patient_breakdowns(metrics: dict) -> dict:
    """The manifest's metrics without the per-patient figures (`volume_dice_by_patient`), at any depth: their keys
    are the test patients' case IDs, which a client has no use for; the model card and the manifest keep them."""
    return {
        key: without_patient_breakdowns(value) if isinstance(value, dict) else value
        for key, value in metrics.items()
        if not key.endswith(PATIENT_BREAKDOWN_SUFFIX)
    }


class HealthStatus(BaseModel):
    status: Literal["alive", "ready"]
