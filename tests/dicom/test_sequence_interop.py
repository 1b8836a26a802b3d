"""Ordinary clinical series around the FLAIR and T1 ones (dicom22 review, findings 4 and 7).

Finding 4: a 3-plane localizer (GR, TR 8.6 / TE 4) counted as a second pre-contrast T1 and turned the three-channel
mode off; a T2* GRE (TR 650 / TE 20) or SWI series was read as the pre-contrast T1 channel. Finding 7: a sagittal
or coronal FLAIR sent alone was segmented with no note (the models learned axial slices).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from app.dicom.dicom_frame import frame_value
from app.dicom.dicom_header import read_dicom_header
from app.dicom.dicom_sr_reader import read_volume_report
from app.dicom.slice_orientation import InPlaneTurn, in_plane_turn, slice_plane
from app.errors import NoFlairSeriesError
from app.series.choice import choose_series
from app.series.info import SeriesInfo
from app.series.sequence_roles import SequenceRole, classify_series, orientation_note, select_sequences
from app.series.sequence_rules import SelectionRules
from app.settings import Settings
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import SLICE_GAP_MM, Study, mr_dataset, mr_series, to_bytes, tumor_channels, write_files
from tests.node.node_support import ThresholdPredictor

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL_NOTE = (
    "the FLAIR series (number {number}) has sagittal slices (90 degrees from axial by Image Orientation (Patient)): "
    "the models learned axial slices, so accuracy may be lower"
)


def tilted_axial(degrees: float) -> tuple[float, ...]:
    """Axial slices tilted about the left-right axis (an angulated axial along the AC-PC line)."""
    angle = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, round(math.cos(angle), 6), round(math.sin(angle), 6))


def header(
    description: str = "",
    series_number: int = 1,
    scanning_sequence: str | list[str] = "SE",
    repetition_ms: float | None = 9000.0,
    echo_ms: float | None = 100.0,
    inversion_ms: float | None = None,
    flip_angle: float | None = None,
    contrast_agent: str | None = None,
    protocol_name: str | None = None,
    image_type: list[str] | None = None,
    sequence_variant: str | list[str] = "NONE",
    orientation: tuple[float, ...] = AXIAL,
    study: Study | None = None,
    series_uid: str | None = None,
) -> Dataset:
    """One instance's header of a series with the given attributes (tiny pixels: only headers matter)."""
    dataset = mr_dataset(
        np.zeros((4, 4), np.uint16),
        study or Study(),
        series_uid or generate_uid(),
        series_number=series_number,
        series_description=description,
    )
    dataset.ScanningSequence = scanning_sequence
    dataset.SequenceVariant = sequence_variant
    dataset.ImageOrientationPatient = list(orientation)
    for keyword, value in (
        ("RepetitionTime", repetition_ms),
        ("EchoTime", echo_ms),
        ("InversionTime", inversion_ms),
        ("FlipAngle", flip_angle),
        ("ContrastBolusAgent", contrast_agent),
        ("ProtocolName", protocol_name),
        ("ImageType", image_type),
    ):
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


def role_of(dataset: Dataset, rules: SelectionRules | None = None) -> SequenceRole:
    return classify_series(SeriesInfo.from_dataset(dataset), rules).role


def t1_study(study: Study) -> dict[str, Dataset]:
    """FLAIR and the pre- and post-contrast T1 pair of one study, as in the review's t2star_channel.py."""
    return {
        "flair": header("AX FLAIR", 4, "IR", 9000.0, 120.0, 2500.0, study=study),
        "pre": header("AX T1 SE", 3, "SE", 500.0, 10.0, study=study),
        "post": header("AX T1 POST GAD", 7, "SE", 500.0, 10.0, contrast_agent="Gadovist", study=study),
    }


def scout(study: Study, **attributes: Any) -> list[Dataset]:
    """A 3-plane scout: one gradient-echo slice in each plane, TR 8.6 ms, TE 4 ms, flip angle 20 degrees."""
    series_uid = generate_uid()
    scan: dict[str, Any] = {"scanning_sequence": "GR", "repetition_ms": 8.6, "echo_ms": 4.0, "flip_angle": 20.0}
    scan |= {"sequence_variant": "SP", "image_type": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"], **attributes}
    return [
        header(series_number=1, orientation=plane, study=study, series_uid=series_uid, **scan)
        for plane in (AXIAL, SAGITTAL, CORONAL)
    ]


@pytest.mark.parametrize(
    "attributes",
    [
        {"description": "localizer", "protocol_name": "AAHead_Scout"},
        {"image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
        {"description": "3-Plane Loc"},
        {"description": "", "protocol_name": "AAHead_Scout_64ch-head-coil"},
        {"description": "SURVEY"},
        {"description": "3-pl T2* FGRE S"},
        {},  # no name, no LOCALIZER: its slices in three planes say it
    ],
    ids=["siemens-names", "image-type", "ge-name", "protocol-name", "philips-name", "ge-t2star-name", "three-planes"],
)
def test_a_localizer_beside_the_t1_pair_leaves_the_three_channels_on(attributes: dict[str, Any]) -> None:
    """Review finding 4: "found 2 pre-contrast and 1 post-contrast ... FLAIR analysed alone" with a localizer."""
    study = Study()
    series = t1_study(study)
    localizer = scout(study, **attributes)

    for order in itertools.permutations([localizer, [series["flair"]], [series["pre"]], [series["post"]]]):
        selection = select_sequences(dataset for datasets in order for dataset in datasets)
        assert selection.channel_series == tuple(series[role].SeriesInstanceUID for role in ("pre", "flair", "post"))
        assert selection.notes == ()
        (left_out,) = (item for item in selection.classifications if item.series.series_number == 1)
        assert left_out.role is SequenceRole.OTHER


def test_the_localizer_evidence_names_what_decided() -> None:
    study = Study()
    by_name, by_type, by_planes = scout(study, description="localizer"), scout(study), scout(study)
    for dataset in by_type:
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    assert classify_series(SeriesInfo.from_dataset(by_name[0])).evidence == (
        "Series Description matches *LOC*: a localizer (planning scan), never a channel"
    )
    assert classify_series(SeriesInfo.from_dataset(by_type[0])).evidence == (
        "Image Type says LOCALIZER: a localizer (planning scan), never a channel"
    )
    (unnamed,) = select_sequences(by_planes).classifications
    assert unnamed.role is SequenceRole.OTHER
    assert unnamed.evidence == (
        "slices in 3 planes (axial, coronal, sagittal), as in a localizer: not a T1 channel (Repetition Time 8.6 ms "
        "and Echo Time 4 ms; no contrast agent stated)"
    )
    # One slice of it alone looks like a T1 spoiled gradient echo: only the planes, a name or the Image Type tell.
    assert role_of(by_planes[0]) is SequenceRole.T1_PRE


@pytest.mark.parametrize(
    ("description", "scanning_sequence", "repetition_ms", "echo_ms", "flip_angle"),
    [
        ("AX T2* GRE", "GR", 650.0, 20.0, 20.0),
        ("SWI_Images", "GR", 28.0, 20.0, 15.0),
        ("", "GR", 650.0, 20.0, 20.0),  # T2* GRE without a name: its echo time says it
        ("", "GR", 28.0, 20.0, 15.0),  # SWI without a name
        ("Ax SWAN", "GR", 40.0, 24.0, 15.0),
        ("t2_fl2d_tra_hemo", "GR", 700.0, 19.9, 20.0),
    ],
)
def test_t2_star_and_susceptibility_series_are_never_the_pre_contrast_channel(
    description: str, scanning_sequence: str, repetition_ms: float, echo_ms: float, flip_angle: float
) -> None:
    """Review finding 4: with no T1 pre series, the T2* (or SWI) series was read as the pre-contrast T1 channel."""
    study = Study()
    series = t1_study(study)
    t2_star = header(description, 8, scanning_sequence, repetition_ms, echo_ms, flip_angle=flip_angle, study=study)

    alone = select_sequences([series["flair"], t2_star, series["post"]])
    with_pair = select_sequences([series["flair"], series["pre"], t2_star, series["post"]])

    assert alone.channel_series == (series["flair"].SeriesInstanceUID,)
    assert alone.notes == (
        "T1 series left out (found 0 pre-contrast and 1 post-contrast; one of each is needed): FLAIR analysed alone",
    )
    assert with_pair.channel_series == tuple(series[role].SeriesInstanceUID for role in ("pre", "flair", "post"))
    assert role_of(t2_star) is SequenceRole.OTHER


def test_the_evidence_says_why_a_short_tr_gradient_echo_is_not_t1() -> None:
    t2_star = header("", scanning_sequence="GR", repetition_ms=650.0, echo_ms=20.0, flip_angle=20.0)

    assert classify_series(SeriesInfo.from_dataset(t2_star)).evidence == (
        "Repetition Time 650 ms and Echo Time 20 ms, but a gradient echo with that Echo Time is T2*-weighted (a T1 "
        "gradient echo has Echo Time below 10 ms)"
    )


@pytest.mark.parametrize(
    ("dataset", "evidence"),
    [
        (
            header("", scanning_sequence=["GR", "EP"], repetition_ms=800.0, echo_ms=30.0),
            "echo planar (diffusion, perfusion or functional imaging), not T1-weighted",
        ),
        (
            header("", scanning_sequence="GR", repetition_ms=12.0, echo_ms=4.0, sequence_variant=["SS", "TRSS"]),
            "a time-reversed steady state (T2-weighted), not T1-weighted",
        ),
    ],
    ids=["bold-epi", "psif"],
)
def test_other_short_tr_sequences_that_are_not_t1_weighted(dataset: Dataset, evidence: str) -> None:
    classification = classify_series(SeriesInfo.from_dataset(dataset))

    assert classification.role is SequenceRole.OTHER
    assert classification.evidence.endswith(evidence)


@pytest.mark.parametrize(
    ("description", "protocol_name"),
    [
        ("AX T2* GRE", "MR BRAIN W WO T1 T2 FLAIR"),
        ("Ax DWI", "MR BRAIN W WO T1 T2 FLAIR"),
        ("ADC", "BRAIN TUMOR T1 FLAIR"),
        ("SWI_Images", "t1_and_flair_protocol"),
        ("TOF 3D multi-slab", "MR BRAIN T1"),
    ],
)
def test_a_description_naming_another_contrast_decides_before_the_examination_protocol(
    description: str, protocol_name: str
) -> None:
    """The Protocol Name often names the whole examination: a T2* series was T1 by the protocol's ``T1``."""
    dataset = header(description, scanning_sequence="GR", repetition_ms=25.0, echo_ms=4.0, protocol_name=protocol_name)

    classification = classify_series(SeriesInfo.from_dataset(dataset))

    assert classification.role is SequenceRole.OTHER
    assert classification.evidence.startswith("Series Description matches ")
    assert classification.evidence.endswith(": another contrast, neither FLAIR nor T1")


@pytest.mark.parametrize(
    ("dataset", "role"),
    [
        (header("", scanning_sequence="GR", repetition_ms=25.0, echo_ms=4.0), SequenceRole.T1_PRE),  # SPGR
        (header("", scanning_sequence="GR", repetition_ms=4.5, echo_ms=2.0, flip_angle=10.0), SequenceRole.T1_PRE),
        (header("", scanning_sequence="GR", repetition_ms=250.0, echo_ms=4.8, flip_angle=70.0), SequenceRole.T1_PRE),
        (header("", scanning_sequence="GR", repetition_ms=7.4, echo_ms=9.2, flip_angle=15.0), SequenceRole.T1_PRE),
        (header("", scanning_sequence="SE", repetition_ms=500.0, echo_ms=12.0), SequenceRole.T1_PRE),
        (
            header("", scanning_sequence=["GR", "IR"], repetition_ms=2300.0, echo_ms=2.3, inversion_ms=900.0),
            SequenceRole.T1_PRE,
        ),  # MPRAGE
        (header("t1_mprage_sag_p2_iso", scanning_sequence=["GR", "IR"], echo_ms=2.3), SequenceRole.T1_PRE),
        (header("AX T1 SE", scanning_sequence="SE", repetition_ms=500.0, echo_ms=10.0), SequenceRole.T1_PRE),
        (header("t1_vibe_fs_tra POST", scanning_sequence="GR", echo_ms=2.0), SequenceRole.T1_POST),
        (header("SAG T1 FLAIR", scanning_sequence="IR", repetition_ms=2000.0, inversion_ms=860.0), SequenceRole.T1_PRE),
        (header("AX T2 FLAIR", scanning_sequence="IR", inversion_ms=2500.0), SequenceRole.FLAIR),
        (header("t2_tirm_tra_dark-fluid", scanning_sequence="IR", inversion_ms=2500.0), SequenceRole.FLAIR),
        (header("t2_tirm_tra", scanning_sequence="IR", inversion_ms=2500.0), SequenceRole.FLAIR),  # by its TI
        (header("", scanning_sequence="IR", inversion_ms=2800.0), SequenceRole.FLAIR),
        (header("3D FLAIR", scanning_sequence="SE", repetition_ms=5000.0, echo_ms=390.0), SequenceRole.FLAIR),
    ],
    ids=[
        "spgr",
        "vibe",
        "flash-2d",
        "in-phase-second-echo",
        "t1-se",
        "mprage",
        "mprage-named",
        "t1-se-named",
        "vibe-post",
        "t1-flair",
        "t2-flair",
        "dark-fluid",
        "tirm-by-ti",
        "unnamed-flair",
        "3d-flair",
    ],
)
def test_real_t1_and_flair_series_keep_their_roles(dataset: Dataset, role: SequenceRole) -> None:
    assert role_of(dataset) is role


def test_enhanced_mr_sequence_attributes_are_read_from_the_functional_groups() -> None:
    """An Enhanced MR object has no Scanning Sequence or Echo Time: Echo Pulse Sequence and the MR Echo group."""

    def enhanced(echo_ms: float) -> Dataset:
        dataset = header("", scanning_sequence="GR", repetition_ms=None, echo_ms=None)
        for keyword in ("ScanningSequence", "SequenceVariant", "ImageOrientationPatient"):
            delattr(dataset, keyword)
        dataset.EchoPulseSequence = "GRADIENT"
        timing, echo, plane = Dataset(), Dataset(), Dataset()
        timing.RepetitionTime, echo.EffectiveEchoTime, plane.ImageOrientationPatient = 650.0, echo_ms, list(AXIAL)
        shared = Dataset()
        shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
        shared.PlaneOrientationSequence = Sequence([plane])
        frame = Dataset()
        frame.MREchoSequence = Sequence([echo])
        dataset.SharedFunctionalGroupsSequence = Sequence([shared])
        dataset.PerFrameFunctionalGroupsSequence = Sequence([frame])
        return dataset

    t2_star, t1 = SeriesInfo.from_dataset(enhanced(20.0)), SeriesInfo.from_dataset(enhanced(4.0))

    assert (t2_star.scanning_sequence, t2_star.repetition_time_ms, t2_star.echo_time_ms) == (("GR",), 650.0, 20.0)
    assert t2_star.plane == "axial"
    assert classify_series(t2_star).role is SequenceRole.OTHER
    assert classify_series(t1).role is SequenceRole.T1_PRE


def test_localizer_and_other_contrast_names_come_from_the_settings() -> None:
    settings = Settings(sequence_localizer_patterns="*UEBERSICHT*", sequence_other_patterns=" *HAEMO* , *PD*,")
    rules = SelectionRules.from_settings(settings)
    spin_echo = {"scanning_sequence": "SE", "repetition_ms": 500.0, "echo_ms": 12.0}

    assert rules.localizer_patterns == ("*UEBERSICHT*",)
    assert rules.other_patterns == ("*HAEMO*", "*PD*")
    assert classify_series(SeriesInfo.from_dataset(header("Uebersicht 3 Ebenen", **spin_echo)), rules).localizer
    assert role_of(header("AX PD", **spin_echo), rules) is SequenceRole.OTHER
    assert role_of(header("localizer", **spin_echo), rules) is SequenceRole.T1_PRE  # the defaults replaced
    t2_star = header("AX T2* GRE", 1, "GR", 650.0, 20.0)
    assert role_of(t2_star, rules) is SequenceRole.OTHER  # no longer by its name: by its Echo Time


def test_a_localizer_sent_alone_is_not_analysed() -> None:
    """The one series of a request is read as FLAIR unless positively something else: a localizer never is."""
    study = Study()
    slices = [header("localizer", 1, "GR", 8.6, 4.0, study=study, series_uid="1.2.3.4") for _ in range(3)]
    headers = [read_dicom_header(to_bytes(dataset)) for dataset in slices]

    with pytest.raises(NoFlairSeriesError) as raised:
        choose_series(headers)

    assert raised.value.message == (
        "the request's one series (number 1) is not analysed (Series Description matches *LOC*: a localizer "
        "(planning scan), never a channel); the models read FLAIR"
    )


def oriented(datasets: list[Dataset], orientation: tuple[float, ...]) -> list[Dataset]:
    """The series with its slices in `orientation`, `SLICE_GAP_MM` apart along the new slice normal."""
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    for index, dataset in enumerate(datasets):
        dataset.ImageOrientationPatient = list(orientation)
        position = -120.0 * (row + column) + index * SLICE_GAP_MM * normal
        dataset.ImagePositionPatient = [round(float(value), 3) for value in position]
    return datasets


@pytest.mark.parametrize(
    ("orientation", "note"),
    [
        (SAGITTAL, SAGITTAL_NOTE.format(number=1)),
        (CORONAL, SAGITTAL_NOTE.format(number=1).replace("sagittal", "coronal")),
        (tilted_axial(40.0), SAGITTAL_NOTE.format(number=1).replace("sagittal", "oblique axial").replace("90", "40")),
        (tilted_axial(15.0), None),
        (tilted_axial(29.0), None),
        (AXIAL, None),
    ],
    ids=["sagittal", "coronal", "oblique-40", "oblique-15", "oblique-29", "axial"],
)
def test_a_flair_sent_alone_that_is_not_axial_is_answered_with_a_note(
    orientation: tuple[float, ...], note: str | None
) -> None:
    """Review finding 7: a sagittal reslice got Dice 0.80 against 0.89 for the axial series, with no note."""
    series = oriented(mr_series(tumor_channels()), orientation)
    headers = [read_dicom_header(to_bytes(dataset)) for dataset in series]

    choice = choose_series(headers)

    assert choice.channel_series == (series[0].SeriesInstanceUID,)
    assert choice.notes == ((note,) if note else ())


def test_the_orientation_limit_is_a_rule() -> None:
    tilted = SeriesInfo.from_dataset(header("AX FLAIR", orientation=tilted_axial(20.0)))

    assert tilted.plane == "axial" and tilted.tilt_degrees == pytest.approx(20.0)
    assert orientation_note(tilted) is None
    assert orientation_note(tilted, SelectionRules(axial_max_tilt_degrees=10.0)) == (
        "the FLAIR series (number 1) has oblique axial slices (20 degrees from axial by Image Orientation (Patient)): "
        "the models learned axial slices, so accuracy may be lower"
    )
    with pytest.raises(ValueError, match=r"axial_max_tilt_degrees must be in \[0, 90\); got 90"):
        SelectionRules(axial_max_tilt_degrees=90.0)


def test_a_sagittal_flair_chosen_among_several_series_gets_the_note() -> None:
    study = Study()
    series = t1_study(study)
    for dataset in series.values():
        dataset.ImageOrientationPatient = list(SAGITTAL)

    selection = select_sequences(series.values())

    assert selection.channel_series == tuple(series[role].SeriesInstanceUID for role in ("pre", "flair", "post"))
    assert selection.notes == (SAGITTAL_NOTE.format(number=4),)


def test_a_steeply_tilted_axial_flair_is_ranked_after_a_straight_one() -> None:
    study = Study()
    steep = header("AX FLAIR", 3, orientation=tilted_axial(40.0), study=study)
    straight = header("AX FLAIR", 6, orientation=tilted_axial(10.0), study=study)

    selection = select_sequences([steep, straight])

    assert selection.flair is not None and selection.flair.series_instance_uid == straight.SeriesInstanceUID
    assert len(selection.notes) == 1  # which FLAIR and why; no orientation note


@pytest.mark.parametrize("path", ["dicom-node", "pacs-sync"])
def test_the_study_record_holds_the_orientation_note_once(path: str, tmp_path: Path) -> None:
    """The node and pacs-sync record the selection's notes and the flow's: the same note, once."""
    series = oriented(mr_series(tumor_channels()), SAGITTAL)
    processor = ModelStudyProcessor(ThresholdPredictor())

    if path == "dicom-node":
        analysis = processor(write_files(series, tmp_path))
    else:  # pacs-sync chooses from one header per series, then hands over the chosen series' files
        selection = processor.select([series[0]])
        analysis = processor.analyse(
            selection, {series[0].SeriesInstanceUID: [to_bytes(dataset) for dataset in series]}, files=len(series)
        )

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["notes"] == [SAGITTAL_NOTE.format(number=1)]
    assert read_volume_report(analysis.datasets[-1])["notes"] == analysis.summary["notes"]  # and the SR says it


def test_a_study_with_a_localizer_keeps_three_channels_in_the_node_record(tmp_path: Path) -> None:
    """Review finding 4, through the node's processor: the localizer is listed, unused, with its reason."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX FLAIR")
    pre = mr_series(tumor_channels(0), study, series_number=3, series_description="AX T1 SE")
    post = mr_series(tumor_channels(2), study, series_number=7, series_description="AX T1 POST GAD")
    localizer = [
        header("localizer", 1, "GR", 8.6, 4.0, orientation=plane, study=study, series_uid="1.2.826.0.1.3680043.9.1")
        for plane in (AXIAL, SAGITTAL, CORONAL)
    ]
    for index, dataset in enumerate(localizer):
        dataset.InstanceNumber = index + 1

    analysis = ModelStudyProcessor(ThresholdPredictor())(write_files([*localizer, *flair, *pre, *post], tmp_path))

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["channels"] == 3
    assert analysis.summary["notes"] == []
    assert analysis.summary["series"][0] == {
        "series_number": 1,
        "role": "other",
        "evidence": "Series Description matches *LOC*: a localizer (planning scan), never a channel",
        "used": False,
    }


def double_oblique_axial() -> tuple[float, ...]:
    """Slices whose normal is nearest the head-feet axis but 53.8 degrees from it (tilted about two axes), rows
    running from the patient's left to right and columns from posterior to anterior: stored turned 180 degrees."""
    normal = np.array([0.571, 0.571, 0.591]) / np.linalg.norm([0.571, 0.571, 0.591])
    row = -np.cross([0.0, 1.0, 0.0], normal)
    row /= np.linalg.norm(row)
    column = np.cross(normal, row)
    return (*row, *column)


def test_the_series_choice_and_the_turn_read_one_rule_for_axial() -> None:
    """The choice called such slices "oblique axial" (normal nearest the head-feet axis) while the turn, at 45
    degrees, left them as stored (newcomer review 28, finding 4)."""
    orientation = double_oblique_axial()
    info = SeriesInfo.from_dataset(header("AX FLAIR", orientation=orientation))

    assert slice_plane(orientation) == ("axial", pytest.approx(53.8, abs=0.1))
    assert info.plane == "axial" and info.tilt_degrees == pytest.approx(53.8, abs=0.1)
    assert in_plane_turn(orientation) == InPlaneTurn(flip_rows=True, flip_columns=True)
    assert slice_plane((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))[0] == "sagittal"
    assert in_plane_turn((0.0, 1.0, 0.0, 0.0, 0.0, -1.0)).is_identity


def test_the_series_choice_reads_a_frame_attribute_as_the_flow_does() -> None:
    """An enhanced image's per-frame functional group wins over a stray top-level value, for the choice as for the
    frames' geometry; the choice read the top level first (newcomer review 28, finding 5)."""
    dataset = header("AX FLAIR", orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # top level: sagittal
    plane = Dataset()
    plane.ImageOrientationPatient = list(AXIAL)
    group = Dataset()
    group.PlaneOrientationSequence = [plane]
    dataset.PerFrameFunctionalGroupsSequence = [group]

    info = SeriesInfo.from_dataset(dataset)

    assert info.plane == "axial"
    assert info.plane == slice_plane(frame_value(dataset, 0, "PlaneOrientationSequence", "ImageOrientationPatient"))[0]
