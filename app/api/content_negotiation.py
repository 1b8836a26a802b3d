"""Which answer a predict request gets: JSON, a DICOM SEG, an SR, or SEG and SR as multipart/related.

The whole decision lives here, none of it in the route: `requested_outputs` (the
`output=` query, else what the Accept header allows), then `servable_output` (the first of those this input can have),
and `wants_segmentation` (whether the flow makes a SEG for it).

The Accept header is read as RFC 9110 media ranges with q weights (an attack review found the header matched by
substring, so `application/dicom+json` or `application/dicom;q=0` got a binary SEG). Only a DICOM type named exactly
gets a DICOM answer; no Accept, wildcards, or nothing acceptable gets JSON (existing clients send odd values: never a
406).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from app import schemas

DICOM_MEDIA_TYPE = "application/dicom"
MULTIPART_MEDIA_TYPE = "multipart/related"
JSON_RANGES = ("application/json", "application/*", "*/*")  # the ranges that cover JSON, most specific first
# Accept (RFC 9110 section 12.5.1): comma-separated media ranges, each `type/subtype` and `;name=value` parameters.
# Unquoted values may hold a `/`: clients send `type=application/dicom` unquoted.
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
QUOTED = r'"(?:[^"\\]|\\.)*"'
PARAMETER = rf"\s*;\s*({TOKEN})\s*=\s*({QUOTED}|[^\s;,\"]+)"
LIST_ITEM = re.compile(rf'(?:[^,"]|{QUOTED})+')
MEDIA_RANGE = re.compile(rf"\s*({TOKEN}/{TOKEN})((?:{PARAMETER})*)\s*")
QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header: `media_type` and parameter names in lower case, `q` taken out."""

    media_type: str
    parameters: Mapping[str, str]
    weight: float


def parse_accept(accept: str) -> list[MediaRange]:
    """The media ranges of an Accept header, as RFC 9110 writes them.

    A range that does not parse, or whose q is not an RFC qvalue (0 to 1, at most three decimals), is left out:
    guessing its weight could send a DICOM file to a client that asked for something else.
    """
    ranges = []
    for item in LIST_ITEM.findall(accept):
        match = MEDIA_RANGE.fullmatch(item)
        if match is None:
            continue
        parameters = {
            name.lower(): re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
            for name, value in re.findall(PARAMETER, match[2])
        }
        weight = parameters.pop("q", "1")
        if QVALUE.fullmatch(weight):
            ranges.append(MediaRange(match[1].lower(), parameters, float(weight)))
    return ranges


def dicom_output(media_range: MediaRange) -> schemas.OutputFormat | None:
    """The DICOM answer a range names: only by name, so wildcards and DICOMweb's +json and +xml types never get one."""
    if media_range.media_type == DICOM_MEDIA_TYPE:
        return schemas.OutputFormat.DICOM_SEG
    part_type = media_range.parameters.get("type", "").lower()
    if media_range.media_type == MULTIPART_MEDIA_TYPE and part_type == DICOM_MEDIA_TYPE:
        return schemas.OutputFormat.DICOM_SEG_SR
    return None


def json_weight(ranges: list[MediaRange]) -> float:
    """JSON's q: that of the most specific range covering it (RFC 9110), so `application/json;q=0, */*` refuses it."""
    for name in JSON_RANGES:
        weights = [item.weight for item in ranges if item.media_type == name]
        if weights:
            return max(weights)
    return 0.0


def acceptable_outputs(accept: str | None) -> list[schemas.OutputFormat]:
    """The answers the Accept header allows, preferred first: highest q; on a tie a DICOM answer the client named
    beats JSON. JSON takes the weight of the most specific range covering it (RFC 9110), and ends the list even at
    q=0: it is the answer when nothing else is acceptable or can be made (a DICOM answer of a PNG slice), since
    existing clients send odd Accept values, so no 406.
    """
    ranges = parse_accept(accept or "")
    weights = {schemas.OutputFormat.JSON: json_weight(ranges)}
    for media_range in ranges:
        output = dicom_output(media_range)
        if output is not None:
            weights[output] = max(weights.get(output, 0.0), media_range.weight)
    # sorted() keeps the order of equals: SEG and SR before SEG alone (as before), both before JSON.
    preference = (schemas.OutputFormat.DICOM_SEG_SR, schemas.OutputFormat.DICOM_SEG, schemas.OutputFormat.JSON)
    ranked = [output for output in sorted(preference, key=lambda item: -weights.get(item, 0.0)) if weights.get(output)]
    if schemas.OutputFormat.JSON not in ranked:
        return [*ranked, schemas.OutputFormat.JSON]
    return ranked[: ranked.index(schemas.OutputFormat.JSON) + 1]  # JSON can always be made: nothing after it counts


def requested_outputs(output: schemas.OutputFormat, accept: str | None) -> list[schemas.OutputFormat]:
    """The outputs that would do, preferred first: the query's alone; with output=json, those Accept allows (a SEG,
    SEG and SR, JSON last of all: `acceptable_outputs`)."""
    if output is not schemas.OutputFormat.JSON:
        return [output]
    return acceptable_outputs(accept)


def servable_output(choices: list[schemas.OutputFormat], dicom_input: bool, series: bool) -> schemas.OutputFormat:
    """The first of `choices` this request can be answered with: a SEG or SR needs DICOM input, and SEG and SR a
    series (`/v1/predict/batch`). An output the Accept header prefers but this input cannot have falls back to the
    next (JSON at the latest): a PNG with `Accept: application/dicom, application/json;q=0.5` gets JSON, not a
    400. An explicit `output=` is the only choice, refused with its reason if it cannot be made."""
    for choice in choices:
        if choice is schemas.OutputFormat.JSON or (dicom_input and (series or not choice.whole_series_only)):
            return choice
    return choices[0]


def wants_segmentation(output: schemas.OutputFormat) -> bool:
    """A SEG is made when asked for, and for the report, which references it."""
    return output is not schemas.OutputFormat.JSON
