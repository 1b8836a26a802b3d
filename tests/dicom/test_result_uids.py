"""What the SEG and the SR say of the models (`app.dicom.result_uids`): one reading of the tags for both."""

from __future__ import annotations

import pytest

from app.dicom.result_uids import models_digest, segmenter_name_version


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("resunet@1.6.0", ("resunet", "1.6.0")),
        ("name@with@at@2", ("name@with@at", "2")),
        ("resunet", ("resunet", "unknown")),  # the SR had named it "segmenter", version "resunet"
        ("resunet@", ("resunet", "unknown")),
        ("", ("segmenter", "unknown")),
    ],
)
def test_the_segmenter_is_named_one_way(tag: str, expected: tuple[str, str]) -> None:
    assert segmenter_name_version({"classifier": "cnn@1", "segmenter": tag}) == expected


def test_a_missing_segmenter_tag_is_unknown() -> None:
    assert segmenter_name_version({"classifier": "cnn@1"}) == ("segmenter", "unknown")


def test_the_models_digest_ignores_the_order_of_the_tags() -> None:
    first = models_digest({"classifier": "cnn@1", "segmenter": "resunet@2"})

    assert first == models_digest({"segmenter": "resunet@2", "classifier": "cnn@1"})
    assert first != models_digest({"classifier": "cnn@1", "segmenter": "resunet@3"})
