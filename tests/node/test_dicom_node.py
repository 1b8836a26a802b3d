"""The DICOM node over real networking on 127.0.0.1: dcmtk's storescu/echoscu send, a pynetdicom SCP receives results.

The models are replaced by a threshold on the FLAIR channel (`ThresholdPredictor`), so that these tests check the
node (spooling, quiet period, once-only processing, sending, retries) and the series flow without loading Keras.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, generate_uid
from pynetdicom.sop_class import ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from app.dicom.dicom_seg import SEG_SERIES_DESCRIPTION, SEG_SERIES_NUMBER
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_sr import SR_SERIES_DESCRIPTION, SR_SERIES_NUMBER
from app.dicom.dicom_sr_reader import predecessors, read_volume_report
from app.node.dicom_sender import TAKES_NEITHER_REPORT, Destination
from app.node.dicom_spool import study_key
from app.node.node_config import NodeConfig
from app.settings import Settings
from tests.dicom.builders import (
    SLICE_GAP_MM,
    Study,
    htj2k_lossless,
    lossy_copies,
    mr_dataset,
    mr_series,
    to_bytes,
    tumor_channels,
    write_files,
)
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    RESULTS_AE,
    Clock,
    ResultStore,
    associations_ended,
    dcmtk,
    expected_result,
    free_port,
    process_and_send,
    record,
    send_study,
    store_dataset,
    storescu,
)


def test_echo_answers_an_allowed_calling_ae(make_node: Any) -> None:
    node = make_node()

    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", CALLING_AE, "-aec", NODE_AE, "127.0.0.1", str(node.config.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_is_refused(make_node: Any, tmp_path: Path) -> None:
    node = make_node()
    files = write_files(mr_series(tumor_channels()[:1]), tmp_path / "in")

    echo = subprocess.run(
        [dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", NODE_AE, "127.0.0.1", str(node.config.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    store = storescu(node, files, calling_ae="INTRUDER")

    assert echo.returncode != 0
    assert "Association Rejected" in echo.stderr + echo.stdout
    assert store.returncode != 0
    assert node.spool.pending_studies() == {}
    assert list((node.spool.root / "studies").iterdir()) == []


def test_series_from_storescu_comes_back_as_seg_and_sr(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    sent = storescu(node, write_files(series, tmp_path / "in"))
    assert sent.returncode == 0, sent.stderr

    assert process_and_send(node) == []  # still inside the quiet period
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    expected = expected_result(series)
    (seg,) = results.by_modality("SEG")
    (sr,) = results.by_modality("SR")
    decoded = read_segmentation_masks(seg)
    for slice_input, prediction in zip(expected.inputs, expected.predictions, strict=True):
        mask = prediction.mask if prediction.mask is not None else np.zeros((256, 256), np.uint8)
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid][0], mask)
    report = read_volume_report(sr)
    assert report["tumor_volume_ml"] == pytest.approx(round(expected.tumor_volume_ml, 3))
    assert report["slices_analysed"] == 3
    assert report["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == series[0].StudyInstanceUID
    assert dciodvfy_errors(seg, "Segmentation") == []
    assert dciodvfy_errors(sr, "ComprehensiveSR") == []
    log = node.spool.sent_log()
    assert {(entry["modality"], entry["status"], entry["destination"]) for entry in log} == {
        ("SEG", "sent", f"{RESULTS_AE}@127.0.0.1:{results.port}"),
        ("SR", "sent", f"{RESULTS_AE}@127.0.0.1:{results.port}"),
    }
    assert {entry["sop_instance_uid"] for entry in log} == {seg.SOPInstanceUID, sr.SOPInstanceUID}


def test_a_study_with_type2_values_that_break_their_type_still_gets_its_results(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 35: a study whose Patient's Sex was "m" or whose Accession Number had 20 characters was recorded
    failed and the node sent nothing. Now the first is left empty, the second copied as it came."""
    node = make_node()
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.PatientSex, dataset.AccessionNumber = "m", "A" * 20
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    (seg,) = results.by_modality("SEG")
    (sr,) = results.by_modality("SR")
    for made in (seg, sr):
        assert made.PatientSex == "" and made.AccessionNumber == "A" * 20
        assert made.PatientID == series[0].PatientID and made.StudyInstanceUID == series[0].StudyInstanceUID
    assert [run["status"] for run in record(node)["runs"]] == ["analysed"]


def test_a_study_whose_seg_cannot_be_made_still_gets_its_report_saying_why(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 62 F1: any refusal of the SEG's input (here slices without a Frame of Reference UID, as some
    converters strip it) recorded the study failed, and the archive got nothing, not even the report that tells an
    analysed study from one never seen."""
    node = make_node()
    series = mr_series(tumor_channels())
    for dataset in series:
        del dataset.FrameOfReferenceUID

    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert results.by_modality("SEG") == []
    (sr,) = results.by_modality("SR")
    report = read_volume_report(sr)
    assert report["tumor_volume_ml"] > 0 and report["segmentation_sop_instance_uids"] == []
    assert (
        "No DICOM SEG was made of this series: the slices cannot be covered by one DICOM SEG: Source images have no "
        "Frame Of Reference UID, but it is required by the IOD." in report["notes"]
    )
    (run,) = record(node)["runs"]
    assert run["status"] == "analysed", run
    assert "Frame Of Reference" in run["summary"]["segmentation_refused"]
    assert dciodvfy_errors(sr, "ComprehensiveSR") == []


@pytest.mark.parametrize("inside", [ImplicitVRLittleEndian, JPEGLSLossless], ids=lambda uid: uid.name)
def test_file_meta_elements_inside_a_data_set_are_left_out_not_read_as_its_transfer_syntax(
    inside: str, make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """Interop review 61 F8: some older senders pass a file's content on with its group 0002 elements; their
    Transfer Syntax UID was read in place of the presentation context's, and each instance was refused C000 for
    pixel data it does not hold."""
    node = make_node()
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.add(DataElement(0x00020002, "UI", str(dataset.SOPClassUID)))
        dataset.add(DataElement(0x00020003, "UI", str(dataset.SOPInstanceUID)))
        dataset.add(DataElement(0x00020010, "UI", inside))

    answers = [store_dataset(node.config.port, dataset) for dataset in series]
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert [answer.Status for answer in answers] == [0x0000] * 3
    assert len(results.by_modality("SEG")) == 1 and len(results.by_modality("SR")) == 1
    kept = pydicom.dcmread(node.spool.instance_files(study_key(series[0].StudyInstanceUID, series[0].PatientID))[0])
    assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not [element for element in kept if element.tag.group == 2]


def test_a_damaged_file_meta_element_at_the_head_of_a_data_set_is_refused_as_unreadable(tmp_path: Path) -> None:
    """Review 70 F5: a group 0002 element pydicom cannot read let its error out of the stripping, and the instance was
    answered Out of Resources, "the node cannot write its spool", which a sender retries: the instance is refused
    (C000), an element of undefined length being no file meta's (attack review 64 F1)."""
    from app.node.dicom_received_instance import InstanceRefusedError, without_file_meta_elements

    body = b"\x02\x00\x10\x00UN\x00\x00\xff\xff\xff\xff" + b"\x00" * 8  # UN of undefined length, never ended

    with pytest.raises(InstanceRefusedError) as refused:
        without_file_meta_elements(b"meta" + body, len(body), ExplicitVRLittleEndian)
    assert refused.value.status == 0xC000


def test_a_file_meta_element_of_undefined_length_at_the_head_of_a_data_set_is_refused_unread() -> None:
    """Attack review 64 F1: the element cap counts top-level elements; ONE group 0002 sequence of undefined length
    holding 1.5 million empty items (11 MiB) was read whole, 38 s and +1 GiB, and the instance stored. No file meta
    element has an undefined length: refused (C000) before pydicom reads it."""
    from app.node.dicom_received_instance import InstanceRefusedError, without_file_meta_elements

    for vr in (b"UN", b"SQ"):
        items = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 1000 + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        body = b"\x02\x00\x99\x00" + vr + b"\x00\x00\xff\xff\xff\xff" + items + b"\x08\x00\x16\x00UI\x00\x00"

        with pytest.raises(InstanceRefusedError, match="undefined length") as refused:
            without_file_meta_elements(b"meta" + body, len(body), ExplicitVRLittleEndian)
        assert refused.value.status == 0xC000


def test_a_data_set_that_starts_with_more_file_meta_elements_than_a_file_holds_is_refused_unread(
    make_node: Any,
) -> None:
    """Attack review 63 F2: the stripping read group 0002 elements to their end, uncounted: 4 million empty ones (30
    MiB) cost 19 s of the node's CPU before the header's element cap was reached. A file meta holds about twenty."""
    from app.node.dicom_received_instance import MAX_FILE_META_ELEMENTS, without_file_meta_elements

    element = b"\x02\x00\x16\x00UI\x00\x00"  # (0002,0016), empty
    body = element * MAX_FILE_META_ELEMENTS + b"\x08\x00\x16\x00UI\x00\x00"
    assert without_file_meta_elements(b"meta" + body, len(body), ExplicitVRLittleEndian) == (b"meta" + body[-8:], True)

    node = make_node()
    (dataset,) = mr_series(tumor_channels())[:1]
    for element_number in range(MAX_FILE_META_ELEMENTS + 1):
        dataset.add(DataElement(0x00021000 + element_number, "LO", "x"))

    answer = store_dataset(node.config.port, dataset)

    assert answer.Status == 0xC000
    assert "file meta elements" in answer.ErrorComment
    assert node.spool.instance_files(study_key(dataset.StudyInstanceUID, dataset.PatientID)) == []


def test_a_series_in_htj2k_is_taken_and_gives_the_masks_of_its_uncompressed_copy(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """Interop review 35: the node refused High-Throughput JPEG 2000 at association though the service decodes it
    (dcmtk's storescu does not send it: pynetdicom proposes the files' own syntax)."""
    node = make_node()
    series = mr_series(tumor_channels())
    expected = expected_result(series)
    for dataset in series:
        assert store_dataset(node.config.port, htj2k_lossless(dataset)).Status == 0x0000
    associations_ended(node)
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    (seg,) = results.by_modality("SEG")
    decoded = read_segmentation_masks(seg)
    for slice_input, prediction in zip(expected.inputs, expected.predictions, strict=True):
        mask = prediction.mask if prediction.mask is not None else np.zeros((256, 256), np.uint8)
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid][0], mask)


def test_a_lossy_copy_of_a_series_beside_its_original_leaves_the_original_analysed(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 35: a PACS that archived a series lossy forwards it under new SOP Instance UIDs, each copy
    naming its original (Source Image Sequence); with the originals there, the study was recorded failed."""
    node = make_node()
    series = mr_series(tumor_channels())
    copies = lossy_copies(series)
    assert storescu(node, write_files([*series, *copies], tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert [run["status"] for run in record(node)["runs"]] == ["analysed"]
    (seg,) = results.by_modality("SEG")
    assert set(read_segmentation_masks(seg)) == {original.SOPInstanceUID for original in series}


def test_lossy_copies_after_their_analysed_originals_change_no_result(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 37: copies that came after their originals were analysed were counted as files not read; the
    study was analysed again, and a revised SEG and SR said its slices were missing from the result."""
    node = make_node()
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    first = {dataset.SOPInstanceUID for dataset in results.received}
    copies = lossy_copies(series)

    assert storescu(node, write_files(copies, tmp_path / "copies")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert len(first) == 2 and {dataset.SOPInstanceUID for dataset in results.received} == first  # the same objects
    assert not any(dataset.SeriesDescription.endswith(" - revised") for dataset in results.received)
    last = record(node)["runs"][-1]
    assert last["status"] == "analysed" and not any("not read" in note for note in last["summary"]["notes"])


def flair_and_a_late_slice() -> tuple[Study, list[Dataset], Dataset]:
    """A new study's three FLAIR slices, and a fourth slice of the same series, to send after them."""
    study, series_uid = Study(), generate_uid()
    images = tumor_channels()
    flair = [
        mr_dataset(image, study, series_uid, instance_number=index + 1, position_mm=index * SLICE_GAP_MM)
        for index, image in enumerate(images)
    ]
    late = mr_dataset(images[0], study, series_uid, instance_number=4, position_mm=3 * SLICE_GAP_MM)
    return study, flair, late


def test_second_send_does_not_duplicate_and_a_late_instance_supersedes(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    study, first_three, late = flair_and_a_late_slice()
    files = write_files(first_three, tmp_path / "in")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    assert len(results.received) == 2

    assert storescu(node, files).returncode == 0  # the router sends the same series again
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == []
    assert len(results.received) == 2
    assert node.spool.pending_studies() == {}

    assert storescu(node, write_files([late], tmp_path / "late")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    first_seg, second_seg = results.by_modality("SEG")
    assert int(first_seg.NumberOfFrames) == 3 and int(second_seg.NumberOfFrames) == 4
    assert second_seg.SeriesInstanceUID != first_seg.SeriesInstanceUID
    assert second_seg.SeriesNumber == first_seg.SeriesNumber == SEG_SERIES_NUMBER
    assert {sr.SeriesNumber for sr in results.by_modality("SR")} == {SR_SERIES_NUMBER}
    # Same Series Number: the description tells the revised series from the one it replaces (interop review 35).
    first_sr, second_sr = results.by_modality("SR")
    assert (first_seg.SeriesDescription, first_sr.SeriesDescription) == (SEG_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION)
    assert second_seg.SeriesDescription == SEG_SERIES_DESCRIPTION + " - revised"
    assert second_sr.SeriesDescription == SR_SERIES_DESCRIPTION + " - revised"
    first_run, second_run = record(node)["runs"]
    assert second_run["supersedes"] == first_run["run_id"]
    assert (first_run["instances"], second_run["instances"]) == (3, 4)
    # The new report names the one it replaces, so a PACS showing both can tell which is current.
    assert predecessors(first_sr) == []
    assert predecessors(second_sr) == [first_sr.SOPInstanceUID]
    (item,) = second_sr.PredecessorDocumentsSequence
    assert item.StudyInstanceUID == first_sr.StudyInstanceUID
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == first_sr.SeriesInstanceUID
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID == first_sr.SOPClassUID
    assert dciodvfy_errors(second_sr, "ComprehensiveSR") == []


def test_a_series_the_models_do_not_read_after_a_supersede_makes_the_same_results_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 35: once a late slice had superseded the first results, every later series of the study (a
    DWI, a T2, which the models do not read) made another SEG and SR with new UIDs, all describing the same masks."""
    node = make_node()
    study, flair, late = flair_and_a_late_slice()
    send_study(node, clock, flair, tmp_path / "flair")
    send_study(node, clock, [late], tmp_path / "late")
    for number, description in ((5, "Ax DWI"), (6, "AX T2 FSE")):
        other = mr_series(tumor_channels(), study=study, series_number=number, series_description=description)
        assert storescu(node, write_files(other, tmp_path / description)).returncode == 0
        clock.advance(QUIET_SECONDS)
        process_and_send(node)

    runs = record(node)["runs"]
    assert len(runs) == 4
    made = [{result["sop_instance_uid"] for result in run["results"]} for run in runs]
    assert made[0] != made[1] == made[2] == made[3]  # the late slice changed the masks (and its note); the others not
    notes = {result["sop_instance_uid"] for result in runs[1]["results"] if result["modality"] == "KO"}
    assert len(notes) == 1  # the rejection note, which this destination does not accept
    assert {dataset.SOPInstanceUID for dataset in results.received} == (made[0] | made[1]) - notes


def test_restart_mid_series_loses_no_instance(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    files = write_files(series, tmp_path / "in")
    first = make_node()
    assert storescu(first, files[:2]).returncode == 0
    first.stop()  # the process goes away mid-series, before the quiet period ends

    restarted = make_node()
    assert len(restarted.spool.pending_studies()) == 1  # found on disk
    assert storescu(restarted, files[2:]).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(restarted)) == 1

    (seg,) = results.by_modality("SEG")
    assert set(read_segmentation_masks(seg)) == {dataset.SOPInstanceUID for dataset in series}


def test_restarted_node_waits_a_quiet_period_before_a_study_left_pending(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    files = write_files(series, tmp_path / "in")
    first = make_node()
    assert storescu(first, files[:2]).returncode == 0
    first.stop()
    clock.advance(QUIET_SECONDS)  # down for longer than the quiet period: the sender has the rest still to send

    restarted = make_node()
    assert process_and_send(restarted) == []  # not processed half-received the moment the node is back
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(restarted)) == 1
    (seg,) = results.by_modality("SEG")
    assert int(seg.NumberOfFrames) == 2


def test_three_series_sent_in_any_order_are_paired_by_their_attributes(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=3, series_description="AX T2 FLAIR")
    pre = mr_series(tumor_channels(0), study, series_number=5, series_description="AX T1")
    post = mr_series(tumor_channels(2), study, series_number=8, series_description="AX T1")
    for dataset in post:
        dataset.ContrastBolusAgent = "GADOLINIUM"
    mixed = [*post, *flair, *pre]
    random.Random(7).shuffle(mixed)
    assert storescu(node, write_files(mixed, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    (seg,) = results.by_modality("SEG")
    assert {dataset.SOPInstanceUID for dataset in flair} <= set(read_segmentation_masks(seg))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair[0].SeriesInstanceUID  # the segmented one
    referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    assert referenced == {flair[0].SeriesInstanceUID, pre[0].SeriesInstanceUID, post[0].SeriesInstanceUID}
    (run,) = record(node)["runs"]
    assert run["summary"]["channels"] == 3
    roles = {item["series_number"]: item["role"] for item in run["summary"]["series"]}
    assert roles == {3: "FLAIR", 5: "T1 pre-contrast", 8: "T1 post-contrast"}


def test_t1_only_study_is_recorded_as_not_analysed_and_nothing_is_sent(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    t1 = mr_series(tumor_channels(0), series_description="AX T1")
    assert storescu(node, write_files(t1, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    (run,) = record(node)["runs"]
    assert run["status"] == "not_analysed"
    assert run["reason"].startswith("the study has no FLAIR series")
    assert results.received == []
    assert node.spool.sent_log() == []


def test_unreachable_destination_is_retried_on_a_later_pass(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    port = free_port()
    node = make_node(destination_port=port)  # nothing listens there yet
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    (run,) = record(node)["runs"]
    (state,) = run["sent"].values()
    assert (state["status"], state["attempts"]) == ("failed", 2)  # first try and one retry
    assert {entry["status"] for entry in node.spool.sent_log()} == {"failed"}

    late_store = ResultStore(port)
    try:
        assert node.send_unsent() == 0  # still waiting for its backoff
        clock.advance(600)
        assert node.send_unsent() == 1
        assert sorted(dataset.Modality for dataset in late_store.received) == ["SEG", "SR"]
        (state,) = record(node)["runs"][0]["sent"].values()
        assert state["status"] == "sent"
        assert node.send_unsent() == 0
    finally:
        late_store.close()


def test_destinations_are_parsed_and_validated() -> None:
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    with pytest.raises(ValueError, match=r"must be AE@host:port \(e.g. PACS@10.0.0.5:104\); got 'PACS:104'"):
        Destination.parse("PACS:104")
    for ae_title in ("A_VERY_LONG_AE_TITLE", "PA\\CS", "PÄCS"):  # too long, a backslash, not ASCII
        with pytest.raises(ValueError, match="AE title: an AE title is 1 to 16 printable ASCII") as refusal:
            Destination.parse(f"{ae_title}@host:104")
        assert str(refusal.value).endswith(f"got {ae_title!r}")


def test_a_destination_host_that_no_name_lookup_could_answer_is_refused_at_start() -> None:
    """Attack review 64 F7: any text before the port was taken as the host, the AE title cut at the first "@": the
    node started and every send failed for ever (gaierror)."""
    for text in ("PACS@1@10.0.0.5:104", "A@pacs1:104;B@pacs2:104"):  # review 72 F6: a list joined by ";"
        with pytest.raises(ValueError, match="several separated by commas"):
            Destination.parse(text)
    assert Destination.parse("PACS@orthanc_pacs.local:4242") == Destination("PACS", "orthanc_pacs.local", 4242)
    for host in ("host name", " 10.0.0.5", "10.0.0.5;10.0.0.6", "-pacs", "999.1.1.1", "1.2.3.4.5", "a" * 64 + ".org"):
        text = f"PACS@{host}:104"
        with pytest.raises(ValueError, match="host must be an IP address or a host name"):
            Destination.parse(text)
    with pytest.raises(ValueError, match="must be AE@host:port"):
        Destination.parse("PACS@pacs:\uff11\uff10\uff14")  # full-width digits


def test_an_ipv6_destination_is_read_with_or_without_its_brackets() -> None:
    """Interop review 62 F6: `PACS@[2001:db8::5]:104`, the usual form, kept its brackets in the host, passed the
    start and failed every send (the name "[2001:db8::5]" cannot be resolved)."""
    assert Destination.parse("V6@[2001:db8::5]:104") == Destination("V6", "2001:db8::5", 104)
    assert Destination.parse("V6@2001:db8::5:104") == Destination("V6", "2001:db8::5", 104)
    for text in ("V6@[pacs.example.org]:104", "V6@[::1:104", "V6@::1]:104"):
        with pytest.raises(ValueError, match="brackets must hold an IPv6 address"):
            Destination.parse(text)
    for text in ("V6@2001:db8::5", "V6@::1", "V6@fe80::1"):  # the port forgotten: review 71 F8
        with pytest.raises(ValueError, match=r"IPv6 address goes in brackets: AE@\[address\]:port"):
            Destination.parse(text)


def test_the_node_refuses_an_ae_title_no_peer_could_call(tmp_path: Path) -> None:
    for ae_title in ("A_VERY_LONG_AE_TITLE", "PA\\CS", "    "):  # too long, a backslash, all spaces
        with pytest.raises(ValueError, match="the node's AE title: an AE title is 1 to 16 printable ASCII"):
            NodeConfig(spool_dir=tmp_path, ae_title=ae_title)


def test_node_config_comes_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        dicom_node_ae_title="AINODE",
        dicom_node_port=11999,
        dicom_node_spool_dir=tmp_path,
        dicom_node_allowed_calling_ae_titles="ROUTER, SCANNER1",
        dicom_node_destinations="PACS@pacs:104,VNA@vna.local:11112",
        dicom_node_quiet_seconds=20,
    )

    config = NodeConfig.from_settings(settings, port=12000)

    assert config.ae_title == "AINODE"
    assert config.port == 12000  # the command line wins
    assert config.allowed_calling_ae_titles == ("ROUTER", "SCANNER1")
    assert config.destinations == (Destination("PACS", "pacs", 104), Destination("VNA", "vna.local", 11112))
    assert config.quiet_seconds == 20.0


def test_cli_has_the_dicom_node_command(tmp_path: Path) -> None:
    from app.cli import build_parser

    args = build_parser().parse_args(["dicom-node", "--port", "11113", "--ae-title", "AINODE", "--spool-dir", "x"])

    assert (args.port, args.ae_title, args.spool_dir) == (11113, "AINODE", "x")
    assert args.run.__name__ == "dicom_node"


@pytest.mark.parametrize(
    ("tool", "options", "transfer_syntax", "proposal"),
    [
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70", "-xs"),  # JPEG lossless, first-order prediction
        ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80", "-xt"),  # JPEG-LS lossless
        ("dcmcrle", [], "1.2.840.10008.1.2.5", "-xr"),  # RLE lossless
        ("dcmconv", ["+td"], "1.2.840.10008.1.2.1.99", "-xd"),  # deflated explicit VR little endian
    ],
)
def test_a_series_compressed_by_dcmtk_is_kept_and_gives_the_masks_of_its_uncompressed_copy(
    make_node: Any,
    results: ResultStore,
    clock: Clock,
    tmp_path: Path,
    tool: str,
    options: list[str],
    transfer_syntax: str,
    proposal: str,
) -> None:
    # The node checks what it keeps (header, codestream, pixel data length): lossless encodings of a valid series must
    # pass those checks and decode to the same pixels, so the SEG equals the uncompressed series' masks.
    node = make_node()
    series = mr_series(tumor_channels())
    compressed = []
    for path in write_files(series, tmp_path / "in"):
        target = tmp_path / "compressed" / path.name
        target.parent.mkdir(exist_ok=True)
        subprocess.run([dcmtk(tool), *options, str(path), str(target)], check=True, capture_output=True, timeout=60)
        compressed.append(target)
    assert pydicom.dcmread(compressed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax

    # -R with `proposal`: propose the files' own transfer syntax only, so the node receives them compressed.
    sent = subprocess.run(
        [dcmtk("storescu"), "-R", proposal, "-aet", CALLING_AE, "-aec", NODE_AE, "127.0.0.1", str(node.config.port)]
        + [str(path) for path in compressed],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr + sent.stdout
    associations_ended(node)
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    (seg,) = results.by_modality("SEG")
    decoded = read_segmentation_masks(seg)
    expected = expected_result(series)
    for slice_input, prediction in zip(expected.inputs, expected.predictions, strict=True):
        mask = prediction.mask if prediction.mask is not None else np.zeros((256, 256), np.uint8)
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid][0], mask)


def test_a_revision_that_turns_negative_sends_a_rejection_note_for_the_earlier_seg_and_sr(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 37: C-STORE cannot delete; after a corrected series turned a study negative, the earlier SEG
    stayed the study's only SEG, nothing marking it withdrawn. The revision now comes with an IHE IOCM rejection
    note (Key Object Selection, 113001 "Rejected for Quality Reasons") listing the earlier SEG and SR."""
    store = ResultStore(free_port(), (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage))
    try:
        node = make_node(destination_port=store.port)
        series = mr_series(tumor_channels())
        assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
        clock.advance(QUIET_SECONDS)
        process_and_send(node)
        (first_seg,), (first_sr,) = store.by_modality("SEG"), store.by_modality("SR")
        for dataset in series:  # corrected: one bright pixel, nothing the threshold models call tumor
            corrected = np.zeros_like(dataset.pixel_array)
            corrected[0, 0] = 255
            dataset.PixelData = corrected.tobytes()

        assert storescu(node, write_files(series, tmp_path / "corrected")).returncode == 0
        clock.advance(QUIET_SECONDS)
        process_and_send(node)

        assert len(store.by_modality("SEG")) == 1 and len(store.by_modality("SR")) == 2  # negative: no new SEG
        (note,) = store.by_modality("KO")
        rejected = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in note.ContentSequence}
        assert rejected == {first_seg.SOPInstanceUID, first_sr.SOPInstanceUID}
        assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
        assert (note.PatientID, note.StudyInstanceUID) == (first_seg.PatientID, first_seg.StudyInstanceUID)
        assert dciodvfy_errors(to_bytes(note), "KeyObjectSelectionDocument") == []
    finally:
        store.close()


@pytest.mark.parametrize("refusing", ["its context", 0x0122, 0xA900, 0xC000], ids=["context", "0122", "A900", "C000"])
@pytest.mark.parametrize("declined", ["SEG", "SR"])
def test_a_destination_that_takes_no_seg_or_no_sr_gets_the_other_and_the_study_counts_delivered(
    declined: str, refusing: str | int, make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 62 F3: a report archive that accepts SR and not Segmentation Storage had the SEG retried for
    ever (every pass a new association proposing it alone), the study never delivered, never purged; interop review
    66 F1: so had an image archive that takes SEG and not Comprehensive SR its SR, until the full spool refused every
    study. Accepting no context for a class, or answering its C-STORE with a lasting refusal (0x0122 SOP Class not
    supported, 0xA9xx the data set does not match it, 0xCxxx cannot understand), is its answer for good: the result
    is recorded "declined", as a rejection note is."""
    port = free_port()
    node = make_node(destination_port=port)
    taken = "SR" if declined == "SEG" else "SEG"
    if refusing == "its context":
        destination = ResultStore(port, sop_classes=(ComprehensiveSRStorage if taken == "SR" else SegmentationStorage,))
    else:
        destination = ResultStore(port, refused=(declined,), refusal_status=int(refusing))
    try:
        send_study(node, clock, mr_series(tumor_channels()), tmp_path / "in")
        clock.advance(3600)

        assert node.send_unsent() == 0
        assert [dataset.Modality for dataset in destination.received] == [taken]
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "sent" and len(state["declined"]) == 1
        assert {(entry["modality"], entry["status"]) for entry in node.spool.sent_log()} == {
            (declined, "declined"),
            (taken, "sent"),
        }
    finally:
        destination.close()


def test_a_destination_that_refuses_both_the_sr_and_the_seg_has_failed_and_is_retried(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Declining is a destination's answer about one class: one that refuses the SR and the SEG alike takes nothing
    the node makes (a misconfigured destination, a full archive answering 0x0122), so the study waits for it, the
    failure logged and counted, and goes once the destination takes them."""
    port = free_port()
    node = make_node(destination_port=port)
    refusing = ResultStore(port, refused=("SR", "SEG"), refusal_status=0x0122)
    try:
        send_study(node, clock, mr_series(tumor_channels()), tmp_path / "in")
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "failed" and not state.get("declined") and not refusing.received
        assert state["last_error"] == TAKES_NEITHER_REPORT

        refusing.refused = ()
        clock.advance(3600)
        assert node.send_unsent() == 1
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "sent" and not state.get("declined")
        assert sorted(dataset.Modality for dataset in refusing.received) == ["SEG", "SR"]
    finally:
        refusing.close()


@pytest.mark.parametrize("warning", [0x0001, 0x0107, 0x0116, 0xB000], ids=["0001", "0107", "0116", "B000"])
def test_results_stored_with_a_warning_status_are_delivered_once(
    warning: int, make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 63 F1: only Bxxx counted as a warning; a destination answering 0001, 0107 or 0116 (warnings,
    PS3.7 C.1.2 and Annex C.4.2: stored) had the SEG and SR sent again every pass, for ever."""
    port = free_port()
    node = make_node(destination_port=port)
    warning_archive = ResultStore(port, stored_status=warning)
    try:
        send_study(node, clock, mr_series(tumor_channels()), tmp_path / "in")
        clock.advance(3600)

        assert node.send_unsent() == 0
        assert sorted(dataset.Modality for dataset in warning_archive.received) == ["SEG", "SR"]
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "sent"
    finally:
        warning_archive.close()


def test_the_sr_goes_first_so_a_destination_that_aborts_on_the_seg_still_has_it(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 63 F5: the SEG went first; an archive that drops the association on a SEG it cannot take never
    got the SR, and the log blamed the node's AE title."""
    port = free_port()
    node = make_node(destination_port=port)
    archive = ResultStore(port, aborted_on=("SEG",))
    try:
        send_study(node, clock, mr_series(tumor_channels()), tmp_path / "in")

        assert [dataset.Modality for dataset in archive.received] == ["SR"]
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "failed" and len(state["stored"]) == 1
        assert "AE title" not in state["last_error"]
        clock.advance(3600)
        assert node.send_unsent() == 1  # the SEG alone, on a later pass
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "failed" and "AE title" not in state["last_error"]
    finally:
        archive.close()


def test_a_seg_refused_for_want_of_resources_is_retried_later(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    """0xA7xx (out of resources) is a passing refusal, unlike those above: the SEG is "failed", sent again on a later
    pass, and the study counts delivered once it is stored (review 71 F10)."""
    port = free_port()
    node = make_node(destination_port=port)
    busy = ResultStore(port, refused=("SEG",), refusal_status=0xA700)
    try:
        send_study(node, clock, mr_series(tumor_channels()), tmp_path / "in")
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "failed" and "0xA700" in state["last_error"] and not state.get("declined")
        assert [dataset.Modality for dataset in busy.received] == ["SR"]

        busy.refused = ()
        clock.advance(3600)
        assert node.send_unsent() == 1
        (state,) = record(node)["runs"][-1]["sent"].values()
        assert state["status"] == "sent" and not state.get("declined")
        assert sorted(dataset.Modality for dataset in busy.received) == ["SEG", "SR"]
    finally:
        busy.close()


def test_a_revision_withdraws_only_what_a_destination_that_declined_the_seg_holds(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 71 F1: a run whose SEG a destination declined counted "sent", so a revision's rejection note named that
    SEG to the destination, which never had it."""
    port = free_port()
    node = make_node(destination_port=port)
    reports_only = ResultStore(port, sop_classes=(ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage))
    try:
        study, first_three, late = flair_and_a_late_slice()
        send_study(node, clock, first_three, tmp_path / "in")
        (first_sr,) = reports_only.by_modality("SR")
        send_study(node, clock, [late], tmp_path / "late")

        (note,) = reports_only.by_modality("KO")
        rejected = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in note.ContentSequence}
        assert rejected == {first_sr.SOPInstanceUID}
        assert reports_only.by_modality("SEG") == []
    finally:
        reports_only.close()


def test_a_destination_without_key_object_selection_still_gets_the_revision(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """The rejection note is optional: a destination that accepts SEG and SR only has the revision delivered."""
    node = make_node()
    study, first_three, late = flair_and_a_late_slice()
    send_study(node, clock, first_three, tmp_path / "in")
    send_study(node, clock, [late], tmp_path / "late")

    assert [len(results.by_modality(modality)) for modality in ("SEG", "SR", "KO")] == [2, 2, 0]
    last = record(node)["runs"][-1]
    assert [result["modality"] for result in last["results"]] == ["SEG", "SR", "KO"]
    (state,) = last["sent"].values()
    assert (state["status"], state["declined"]) == ("sent", [last["results"][-1]["file"]])  # review 38 F5: not "sent"
    log = [entry for entry in node.spool.sent_log() if entry["run_id"] == last["run_id"]]
    assert {(entry["modality"], entry["status"]) for entry in log} == {
        ("SEG", "sent"),
        ("SR", "sent"),
        ("KO", "declined"),
    }
