from __future__ import annotations

import io
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, generate_uid

from app.dicom.dicom_header import read_dicom_header, read_header
from app.series.info import SeriesInfo
from app.series.sequence_roles import SequenceRole, classify_series, select_sequences
from app.series.sequence_rules import SelectionRules
from app.settings import Settings
from tests.dicom.builders import Study, mr_dataset, mr_series, to_bytes, tumor_channels


def series_header(
    description: str = "",
    series_number: int = 1,
    scanning_sequence: str | list[str] = "SE",
    repetition_ms: float = 9000.0,
    echo_ms: float = 100.0,
    inversion_ms: float | None = None,
    contrast_agent: str | None = None,
    study: Study | None = None,
) -> Dataset:
    """One instance's header of a series with the given sequence attributes (tiny pixels: only headers matter)."""
    dataset = mr_dataset(
        np.zeros((4, 4), np.uint16),
        study or Study(),
        generate_uid(),
        series_number=series_number,
        series_description=description,
    )
    dataset.ScanningSequence = scanning_sequence
    dataset.RepetitionTime = repetition_ms
    dataset.EchoTime = echo_ms
    if inversion_ms is not None:
        dataset.InversionTime = inversion_ms
    if contrast_agent is not None:
        dataset.ContrastBolusAgent = contrast_agent
    return dataset


def named_study() -> dict[str, Dataset]:
    study = Study()
    return {
        "flair": series_header("AX T2 FLAIR", 4, "IR", 9000.0, 120.0, 2500.0, study=study),
        "pre": series_header("AX T1 SE", 2, "SE", 500.0, 12.0, study=study),
        "post": series_header("AX T1 SE", 7, "SE", 500.0, 12.0, contrast_agent="GADOLINIUM", study=study),
    }


def test_three_series_in_any_order_give_the_same_mapping() -> None:
    series = named_study()

    selections = [select_sequences(order) for order in itertools.permutations(series.values())]

    for selection in selections:
        assert selection.analysed
        assert selection.channel_series == (
            series["pre"].SeriesInstanceUID,
            series["flair"].SeriesInstanceUID,
            series["post"].SeriesInstanceUID,
        )
        assert selection == selections[0]


def test_series_are_told_apart_by_sequence_attributes_without_names() -> None:
    study = Study()
    flair = series_header("", 3, ["IR"], 11000.0, 140.0, inversion_ms=2800.0, study=study)
    pre = series_header("", 5, "GR", 25.0, 4.0, study=study)
    post = series_header("", 9, "GR", 25.0, 4.0, contrast_agent="GADOTERATE", study=study)

    selection = select_sequences([post, flair, pre])

    assert selection.channel_series == (pre.SeriesInstanceUID, flair.SeriesInstanceUID, post.SeriesInstanceUID)
    roles = {item.series.series_instance_uid: item.role for item in selection.classifications}
    assert roles[post.SeriesInstanceUID] is SequenceRole.T1_POST


def test_t1_only_study_is_not_analysed_with_the_reason() -> None:
    series = named_study()

    selection = select_sequences([series["post"], series["pre"]])

    assert not selection.analysed
    assert selection.channel_series == ()
    assert selection.reason is not None
    assert selection.reason.startswith("the study has no FLAIR series")
    assert "T1 pre-contrast (Series Description matches *T1*" in selection.reason
    assert "T1 post-contrast" in selection.reason


def with_protocol(dataset: Dataset, protocol_name: str) -> Dataset:
    dataset.ProtocolName = protocol_name
    return dataset


@pytest.mark.parametrize(
    ("description", "protocol_name", "role", "evidence"),
    [
        # The examination's protocol names every sequence: the Series Description decides (it was refused as T1).
        ("AX FLAIR", "MR BRAIN W WO T1 T2 FLAIR", SequenceRole.FLAIR, "Series Description matches *FLAIR*"),
        ("AX T1 SE", "MR BRAIN W WO T1 T2 FLAIR", SequenceRole.T1_PRE, "Series Description matches *T1*"),
        # A description that says nothing of the sequence leaves it to the Protocol Name.
        ("", "t2_tirm_tra_dark-fluid", SequenceRole.FLAIR, "Protocol Name matches *DARK*FLUID*"),
        ("AX 5MM", "T1 SE AXIAL", SequenceRole.T1_PRE, "Protocol Name matches *T1*"),
    ],
)
def test_the_series_description_decides_before_the_protocol_name(
    description: str, protocol_name: str, role: SequenceRole, evidence: str
) -> None:
    header = with_protocol(series_header(description, repetition_ms=9000.0, echo_ms=120.0), protocol_name)

    classification = classify_series(SeriesInfo.from_dataset(header))

    assert classification.role is role
    assert classification.evidence.startswith(evidence)


def test_contrast_in_the_examination_protocol_does_not_make_a_named_flair_post_contrast() -> None:
    study = Study()
    flair = with_protocol(series_header("AX FLAIR", 3, study=study), "BRAIN W AND WO CONTRAST")
    other = with_protocol(series_header("AX FLAIR POST GAD", 9, study=study), "BRAIN W AND WO CONTRAST")

    selection = select_sequences([other, flair])

    by_uid = {item.series.series_instance_uid: item for item in selection.classifications}
    assert not by_uid[flair.SeriesInstanceUID].contrast
    assert by_uid[other.SeriesInstanceUID].contrast
    assert selection.flair is not None and selection.flair.series_instance_uid == flair.SeriesInstanceUID


def test_t2_weighted_mr_test_file_is_not_flair() -> None:
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)  # SE, TR 4000, TE 240

    classification = classify_series(SeriesInfo.from_dataset(dataset))
    selection = select_sequences([dataset])

    assert classification.role is SequenceRole.OTHER
    assert not selection.analysed


def test_t1_flair_is_t1_not_flair() -> None:
    t1_flair = series_header("SAG T1 FLAIR", scanning_sequence="IR", repetition_ms=2000.0, inversion_ms=860.0)

    assert classify_series(SeriesInfo.from_dataset(t1_flair)).role is SequenceRole.T1_PRE


def test_named_flair_with_a_short_inversion_time_is_not_flair() -> None:
    stir = series_header("FLAIR STIR", scanning_sequence="IR", inversion_ms=150.0)

    classification = classify_series(SeriesInfo.from_dataset(stir))

    assert classification.role is SequenceRole.OTHER
    assert "Inversion Time 150 ms is below the FLAIR minimum 1500 ms" in classification.evidence


def test_non_mr_series_is_other() -> None:
    dataset = series_header("AX FLAIR")
    dataset.Modality = "CT"

    assert classify_series(SeriesInfo.from_dataset(dataset)).evidence == "Modality CT, not MR"


def test_values_that_are_no_defined_term_are_never_echoed() -> None:
    """Attack review 61 F4: a Modality or Scanning Sequence came back whole in the evidence, the 422's message and
    the DICOM node's and pacs-sync's records: control characters, a name, 66 KB of values."""
    other = series_header("AX FLAIR")
    other.Modality = "XX\x1b[31m\nSMITH^JOHN"
    spin_echo = series_header("AX T2", scanning_sequence="SE")
    spin_echo.ScanningSequence = ["SE", "SMITH\x1b", *["GR"] * 2, *["Q"] * 3000]

    assert classify_series(SeriesInfo.from_dataset(other)).evidence == "another Modality, not MR"
    assert classify_series(SeriesInfo.from_dataset(spin_echo)).evidence == (
        "Scanning Sequence SE\\GR\\GR\\3001 other values, no inversion recovery: neither FLAIR nor T1"
    )


def test_flair_goes_alone_when_the_t1_series_are_ambiguous() -> None:
    study = Study()
    flair = series_header("AX FLAIR", 3, study=study)
    first_t1 = series_header("AX T1", 4, "SE", 500.0, 12.0, study=study)
    second_t1 = series_header("COR T1", 5, "SE", 500.0, 12.0, study=study)

    selection = select_sequences([second_t1, first_t1, flair])

    assert selection.channel_series == (flair.SeriesInstanceUID,)
    assert selection.notes == (
        "T1 series left out (found 2 pre-contrast and 0 post-contrast; one of each is needed): FLAIR analysed alone",
    )


def test_pre_contrast_flair_with_confirming_attributes_wins_over_others() -> None:
    study = Study()
    named_only = series_header("FLAIR", 2, study=study)
    confirmed = series_header("AX FLAIR", 6, "IR", inversion_ms=2200.0, study=study)
    post_contrast = series_header("AX FLAIR +C", 8, "IR", inversion_ms=2200.0, contrast_agent="GD", study=study)

    for order in itertools.permutations([named_only, confirmed, post_contrast]):
        selection = select_sequences(order)
        assert selection.flair is not None
        assert selection.flair.series_instance_uid == confirmed.SeriesInstanceUID
        assert selection.notes[0] == (
            "3 FLAIR series found; used the one with series number 6, axial; ranked by evidence for FLAIR, then no "
            "contrast, then axial slices, then not lossy-compressed, then Series Number"
        )


def test_an_original_flair_is_read_before_its_lossy_copy_under_the_same_number() -> None:
    """Review 36b: a PACS's lossy copy of the FLAIR series (Lossy Image Compression 01, same Series Number) won when
    its Series Instance UID was the lower one, and the answer came from its one slice."""
    study = Study()
    original = series_header("AX FLAIR", 4, study=study)
    copy = series_header("AX FLAIR", 4, study=study)
    copy.SeriesInstanceUID, copy.LossyImageCompression = "1.2.3.4", "01"  # sorts before any generated UID

    for order in itertools.permutations([original, copy]):
        selection = select_sequences(order)
        assert selection.flair is not None and selection.flair.series_instance_uid == original.SeriesInstanceUID

    # Interop review 64 F5: a JPEG Baseline copy whose header does not say it was lossy compressed is one too.
    del copy.LossyImageCompression
    copy.file_meta = FileMetaDataset()
    copy.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    for order in itertools.permutations([original, copy]):
        selection = select_sequences(order)
        assert selection.flair is not None and selection.flair.series_instance_uid == original.SeriesInstanceUID


def jpeg_2000_copy(dataset: Dataset, irreversible: bool) -> Dataset:
    """`dataset` compressed in the JPEG 2000 syntax that may be lossy, coded with the 9-7 or the 5-3 wavelet, its
    Lossy Image Compression attributes removed (as a sender that did not say)."""
    copy = pydicom.dcmread(io.BytesIO(to_bytes(dataset)))
    if irreversible:
        copy.compress(JPEG2000, j2k_cr=[20])
    else:
        copy.compress(JPEG2000Lossless)
        copy.file_meta.TransferSyntaxUID = JPEG2000
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        copy.pop(keyword, None)
    return copy


@pytest.mark.parametrize("irreversible", [True, False], ids=["9-7 wavelet", "5-3 wavelet"])
def test_a_jpeg_2000_copy_coded_irreversibly_reads_as_lossy_before_the_series_are_chosen(
    irreversible: bool, tmp_path: Path
) -> None:
    """Review 73 F3: a JPEG 2000 copy that kept no Lossy Image Compression ranked as an original (its SEG said "01"
    since interop review 64 F1); its codestream tells. One coded reversibly is taken at its header's word. Interop
    review 65 F1: the node (headers of spooled files) and pacs-sync (headers of fetched bytes) read headers that stop
    before the pixel data (`read_header`), and chose a 9-7 JPEG 2000 copy over the uncompressed original."""
    data = to_bytes(jpeg_2000_copy(mr_series(tumor_channels()[:1])[0], irreversible))
    path = tmp_path / "copy.dcm"
    path.write_bytes(data)

    assert SeriesInfo.from_dataset(read_dicom_header(data).dataset).lossy is irreversible
    for source in (path, data):
        header = read_header(source)
        assert header is not None
        assert SeriesInfo.from_dataset(header).lossy is irreversible
        assert header.get("LossyImageCompressionMethod") == ("ISO_15444_1" if irreversible else None)


def test_a_copy_with_one_lossy_instance_is_a_lossy_copy_whatever_the_order() -> None:
    """Interop review 65 F2: a series' lossy flag came from its first instance: a copy whose first slice was lossless
    and the others lossy beat the original in the node, and in the HTTP flow by the order of the files."""
    study = Study()
    originals = mr_series(tumor_channels(), study=study)
    copies = mr_series(tumor_channels(), study=study)
    for index, copy in enumerate(copies):
        copy.SeriesInstanceUID, copy.SeriesNumber = "1.2.3.4", originals[0].SeriesNumber  # sorts before any other
        if index:
            copy.LossyImageCompression = "01"

    for order in (originals + copies, copies + originals, copies[::-1] + originals):
        selection = select_sequences(order)
        assert selection.flair is not None
        assert selection.flair.series_instance_uid == originals[0].SeriesInstanceUID


def test_an_axial_flair_is_read_before_a_sagittal_one_with_a_lower_number() -> None:
    """Attack finding: a sagittal 3D FLAIR (series 3) was read instead of the axial FLAIR (series 6); the models
    learned axial slices."""
    study = Study()
    sagittal = series_header("SAG 3D FLAIR", 3, study=study)
    sagittal.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    axial = series_header("AX FLAIR", 6, study=study)

    for order in itertools.permutations([sagittal, axial]):
        selection = select_sequences(order)
        assert selection.flair is not None and selection.flair.series_instance_uid == axial.SeriesInstanceUID
        assert "used the one with series number 6, axial;" in selection.notes[0]


def test_the_note_says_when_series_numbers_tie() -> None:
    study = Study()
    first, second = series_header("FLAIR", 1, study=study), series_header("FLAIR", 1, study=study)

    selection = select_sequences([first, second])

    assert "another FLAIR series has that number: the lowest Series Instance UID decided" in selection.notes[0]
    assert selection.flair.series_instance_uid == min(first.SeriesInstanceUID, second.SeriesInstanceUID)


def test_every_instance_of_a_series_may_be_given() -> None:
    study = Study()
    flair = series_header("AX FLAIR", study=study)
    second = flair.copy()
    second.SOPInstanceUID = generate_uid()

    selection = select_sequences([flair, second])

    assert selection.channel_series == (flair.SeriesInstanceUID,)
    assert len(selection.classifications) == 1


def test_rules_come_from_the_settings() -> None:
    settings = Settings(
        sequence_flair_patterns="*DARKFL*",
        sequence_t1_patterns="*T1*",
        sequence_post_contrast_patterns="*KM*",
        sequence_flair_min_inversion_ms=1800.0,
    )
    rules = SelectionRules.from_settings(settings)
    post = series_header("T1 KM", scanning_sequence="SE", repetition_ms=500.0, echo_ms=10.0)

    assert rules.flair_patterns == ("*DARKFL*",)
    assert classify_series(SeriesInfo.from_dataset(series_header("ax darkfl")), rules).role is SequenceRole.FLAIR
    assert classify_series(SeriesInfo.from_dataset(series_header("AX FLAIR")), rules).role is SequenceRole.OTHER
    assert classify_series(SeriesInfo.from_dataset(post), rules).role is SequenceRole.T1_POST
    unnamed_ir = series_header("", scanning_sequence="IR", inversion_ms=1600.0)
    assert classify_series(SeriesInfo.from_dataset(unnamed_ir), rules).role is SequenceRole.OTHER


def test_rules_reject_an_inverted_t1_inversion_range() -> None:
    with pytest.raises(ValueError, match=r"t1_inversion_ms must be a range .* got \(900.0, 300.0\)"):
        SelectionRules(t1_inversion_ms=(900.0, 300.0))


def test_settings_split_comma_separated_patterns() -> None:
    settings = SimpleNamespace(
        **Settings(sequence_flair_patterns=" *FLAIR* , *DF* ,").model_dump(include={"sequence_flair_patterns"})
    )
    assert settings.sequence_flair_patterns == ["*FLAIR*", "*DF*"]


def test_series_without_a_number_sort_after_every_numbered_one() -> None:
    """Series Number is an IS (up to 2^31 - 1): a stand-in for "no number" must sort after all of them."""

    def info(uid: str, number: int | None) -> SeriesInfo:
        return SeriesInfo(uid, number, "MR", "", "", (), None, None, None, "")

    ordered = sorted([info("1.3", None), info("1.2", 2**31 - 1), info("1.1", 1)], key=SeriesInfo.sort_key)

    assert [item.series_instance_uid for item in ordered] == ["1.1", "1.2", "1.3"]
