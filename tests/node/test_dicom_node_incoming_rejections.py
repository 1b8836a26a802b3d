"""An IHE IOCM rejection note coming to the DICOM node (interop review 48 F1): a Key Object Selection titled in CID
7011 for a study the node answered. The node ignored it, so the SEG and SR made of the rejected images stood at the
destination and every later analysis read them. Now the rejected instances are left out for good and the study is
analysed again: its new results revise the earlier ones, which the node's own rejection note withdraws."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom.sop_class import ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from app.dicom.dicom_sr_reader import predecessors
from app.dicom.incoming_rejection import MAX_NOTE_BYTES
from app.node import dicom_received_instance, dicom_spool
from app.node.dicom_spool import (
    MAX_REJECTION_NOTES,
    REJECTION_NOTES_DIR,
    Spool,
    SpoolFullError,
    SpoolLimits,
    UnreadableRejectionsError,
    study_key,
)
from app.settings import MIB
from tests.dicom.builders import (
    deflated_and_padded,
    key_object_selection,
    mr_series,
    referenced,
    to_bytes,
    tumor_channels,
    write_files,
)
from tests.node.node_support import (
    QUIET_SECONDS,
    Clock,
    ResultStore,
    free_port,
    process_and_send,
    record,
    send_study,
    store_dataset,
    store_file_as_it_is,
    storescu,
)

ALL_RESULTS = (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage)


def rejected_by(note: Dataset) -> set[str]:
    return {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in note.ContentSequence}


def send_note(node: Any, clock: Clock, note: Dataset) -> None:
    """C-STORE the note (answered Success), wait out the quiet period, process and send."""
    assert store_dataset(node.config.port, note).Status == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)


def test_a_rejection_note_leaves_its_instances_out_and_the_study_is_analysed_again(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series, tmp_path / "first")
        (seg,), (sr,) = store.by_modality("SEG"), store.by_modality("SR")
        assert series[-1].SOPInstanceUID in referenced(seg)

        send_note(node, clock, key_object_selection(series, series[-1:]))

        runs = record(node)["runs"]
        assert [run["instances"] for run in runs] == [3, 2]
        (_, new_seg), (_, new_sr) = store.by_modality("SEG"), store.by_modality("SR")
        assert series[-1].SOPInstanceUID not in referenced(new_seg) | referenced(new_sr)
        assert list(predecessors(new_sr)) == [sr.SOPInstanceUID]
        (withdrawal,) = store.by_modality("KO")
        assert rejected_by(withdrawal) == {seg.SOPInstanceUID, sr.SOPInstanceUID}
        spooled = json.loads(next((node.spool.root / "studies").glob("*/rejected.json")).read_text())
        assert spooled == {series[-1].SOPInstanceUID: "113001"}
    finally:
        store.close()


def test_a_rejected_instance_sent_again_stays_left_out(
    make_node: Any, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """IOCM: rejected means rejected. Answered Success (a router's whole send goes through), not kept, and logged
    by study key alone."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    send_note(node, clock, key_object_selection(series, series[-1:]))

    with caplog.at_level(logging.INFO, logger="app.node.dicom_node"):
        send_study(node, clock, series, tmp_path / "again")

    assert [run["instances"] for run in record(node)["runs"]] == [3, 2]
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert len(node.spool.instance_files(key)) == 2
    (ignored,) = [line for line in caplog.records if "rejected by an incoming rejection note" in line.getMessage()]
    assert getattr(ignored, "fields", None) == {"study_key": key}


def test_every_instance_rejected_withdraws_the_earlier_results_and_makes_none(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series, tmp_path / "first")
        (seg,), (sr,) = store.by_modality("SEG"), store.by_modality("SR")

        send_note(node, clock, key_object_selection(series, series, codes.DCM.IncorrectModalityWorklistEntry))

        last = record(node)["runs"][-1]
        assert (last["status"], last["instances"]) == ("not_analysed", 0)
        (withdrawal,) = store.by_modality("KO")
        assert rejected_by(withdrawal) == {seg.SOPInstanceUID, sr.SOPInstanceUID}
        assert withdrawal.PatientID == series[0].PatientID
        assert (len(store.by_modality("SEG")), len(store.by_modality("SR"))) == (1, 1)
        assert node.spool.unsent_studies() == []
    finally:
        store.close()


def test_an_ordinary_key_object_selection_changes_nothing(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")

    send_note(node, clock, key_object_selection(series, series[-1:], codes.DCM.OfInterest))

    assert [run["instances"] for run in record(node)["runs"]] == [3]
    assert node.spool.pending_studies() == {}


@pytest.mark.parametrize("named", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian], ids=lambda uid: uid.name)
def test_a_note_whose_data_set_starts_with_file_meta_elements_is_read_in_its_contexts_transfer_syntax(
    named: str, make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 62 F5: an old sender passing a file's content on leaves its group 0002 at the head of the data
    set. Images were read without them since 1.3.0, a rejection note in the transfer syntax they named: refused 0xC000
    ("cut short", "cannot be inflated"), and the study analysed with the slice the PACS had rejected."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    note = key_object_selection(series, series[-1:])
    note.add(DataElement(0x00020002, "UI", str(note.SOPClassUID)))
    note.add(DataElement(0x00020003, "UI", str(note.SOPInstanceUID)))
    note.add(DataElement(0x00020010, "UI", named))

    send_note(node, clock, note)

    assert [run["instances"] for run in record(node)["runs"]] == [3, 2]


class Killed(Exception):
    """The node killed while it removes the rejected instances."""


def test_a_note_recorded_by_a_node_killed_before_it_removed_the_instances_still_leaves_them_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = mr_series(tumor_channels())
    spool = Spool(tmp_path / "spool")
    for dataset in series:
        spool.store_instance(dataset.StudyInstanceUID, dataset.PatientID, dataset.SOPInstanceUID, b"DICM")
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    spool.clear_pending(key, spool.pending_since(key) or 0.0)

    def killed(path: Path, missing_ok: bool = False) -> None:
        raise Killed

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(Killed):
        spool.reject_instances(key, [series[0].SOPInstanceUID], "113001", b"KOS", "1.2.3")
    monkeypatch.undo()

    restarted = Spool(tmp_path / "spool")
    assert len(restarted.instance_files(key)) == 3
    assert len(restarted.instances_to_analyse(key)) == 2
    assert key in restarted.pending_studies()
    assert restarted.is_rejected(series[0].StudyInstanceUID, series[0].PatientID, series[0].SOPInstanceUID)


def test_a_deflated_note_inflating_past_the_limit_is_refused_and_takes_no_effect(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 48r F1: a deflated KOS inflating to 1 GiB was decoded whole before anything was checked."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    note = key_object_selection(series, series[-1:])
    note.add_new(0x00290010, "LO", "PADDING")
    note.add_new(0x00291010, "OB", bytes(MAX_NOTE_BYTES + 1))
    note.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    answer = store_dataset(node.config.port, note)

    assert (answer.Status, answer.ErrorComment) == (
        0xA700,
        "a key object selection over 4 MiB is not read (once inflated)",
    )
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert node.spool.rejected_instances(key) == {}
    assert len(node.spool.instance_files(key)) == 3


def _padded_note(series: list[Dataset]) -> Dataset:
    """A note rejecting the series' last instance, with 2 MiB of zeros in a private value: its deflate stream of a few
    KB inflates past 1 MiB in the read that reaches its end (attack review 55 F1)."""
    note = key_object_selection(series, series[-1:])
    note.add_new(0x00290010, "LO", "PADDING")
    note.add_new(0x00291010, "OB", bytes(2 * MIB))
    return note


def test_a_deflated_note_padded_to_even_length_is_taken(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    """Attack review 55 F1: a deflate stream padded to even length, as DCMTK and pynetdicom send it, was "cannot be
    inflated" once its end came in a later read: the note was answered Success and ignored."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    path = tmp_path / "note.dcm"
    path.write_bytes(deflated_and_padded(_padded_note(series)))

    answer = store_file_as_it_is(
        node.config.port, path, KeyObjectSelectionDocumentStorage, DeflatedExplicitVRLittleEndian
    )

    assert answer.Status == 0
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert set(node.spool.rejected_instances(key)) == {series[-1].SOPInstanceUID}


def test_a_key_object_selection_whose_deflate_stream_is_damaged_is_refused(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """It may be a rejection note: answered Success (as an unreadable note was), its sender took it as honoured."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    path = tmp_path / "note.dcm"
    path.write_bytes(deflated_and_padded(_padded_note(series))[:-16])  # the stream cut short

    answer = store_file_as_it_is(
        node.config.port, path, KeyObjectSelectionDocumentStorage, DeflatedExplicitVRLittleEndian
    )

    assert answer.Status == 0xC000
    assert "deflate" in answer.ErrorComment
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert node.spool.rejected_instances(key) == {}
    assert len(node.spool.instance_files(key)) == 3


def with_content_damaged(note: Dataset) -> bytes:
    """`note` (explicit VR little endian) with its content's Referenced SOP Sequence written as OB: readable at its top
    level, its content not walkable."""
    data = bytearray(to_bytes(note))
    at = data.rindex(b"\x08\x00\x99\x11SQ")  # the content's (0008,1199), after the evidence's
    data[at + 4 : at + 6] = b"OB"
    return bytes(data)


@pytest.mark.parametrize(("title", "status"), [(None, 0xC000), (codes.DCM.OfInterest, 0)], ids=["note", "of-interest"])
def test_a_key_object_selection_titled_as_a_note_whose_content_is_damaged_is_refused(
    make_node: Any, clock: Clock, tmp_path: Path, title: Any, status: int
) -> None:
    """Attack review 60 F3: a note whose content pydicom cannot walk (a sequence's VR garbled) was answered Success
    and dropped; the image it withdraws stayed analysed. A key image selection of the same damage is still ignored."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    path = tmp_path / "note.dcm"
    path.write_bytes(with_content_damaged(key_object_selection(series, series[-1:], title)))

    answer = store_file_as_it_is(node.config.port, path, KeyObjectSelectionDocumentStorage, ExplicitVRLittleEndian)

    assert answer.Status == status
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert node.spool.rejected_instances(key) == {}


def test_an_instance_whose_value_pydicom_cannot_read_is_refused_0xc000(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Attack review 60 F5: a Patient ID written as UL (a length no number of 4-byte values fills) raised past the
    checks; pynetdicom answered 0xC211 and logged a traceback."""
    node = make_node()
    data = bytearray(to_bytes(mr_series(tumor_channels())[0]))
    at = data.index(b"\x10\x00\x20\x00LO")
    data[at + 4 : at + 6] = b"UL"
    path = tmp_path / "slice.dcm"
    path.write_bytes(bytes(data))

    answer = store_file_as_it_is(node.config.port, path, MRImageStorage, ExplicitVRLittleEndian)

    assert answer.Status == 0xC000
    assert answer.ErrorComment.startswith("DICOM element (0010,0020) has value representation 'UL'")


def test_a_value_that_raises_past_the_header_checks_is_refused_0xc000(
    make_node: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 60 F5, the catch-all: whatever pydicom raises on a value the checks read (here one the header
    checks let through) refuses the instance 0xC000 without its message, not pynetdicom's 0xC211 and a traceback."""
    node = make_node()
    path = tmp_path / "slice.dcm"
    path.write_bytes(to_bytes(mr_series(tumor_channels())[0]))

    def raises(header: object) -> None:
        raise ValueError("value TEST-0001 cannot be read")

    monkeypatch.setattr(dicom_received_instance, "check_frame_attributes", raises)
    answer = store_file_as_it_is(node.config.port, path, MRImageStorage, ExplicitVRLittleEndian)

    assert answer.Status == 0xC000
    assert answer.ErrorComment.startswith("a value cannot be read (ValueError)")
    assert "TEST-0001" not in answer.ErrorComment


@pytest.mark.parametrize("failing", ["rejection_notes", "rejected.json"])
def test_a_note_the_spool_cannot_write_takes_no_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Review 48r F5: the record was written before the note's file; a note refused (ENOSPC there, or a kill) still
    rejected its instances, and with all of them rejected no withdrawal could be made (no note left to make it from)."""
    series = mr_series(tumor_channels())
    spool = Spool(tmp_path / "spool")
    for dataset in series:
        spool.store_instance(dataset.StudyInstanceUID, dataset.PatientID, dataset.SOPInstanceUID, b"DICM")
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    size = spool.size_bytes
    real_write = dicom_spool.write_atomically

    def write_or_fail(path: Path, data: bytes) -> None:
        if failing in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(dicom_spool, "write_atomically", write_or_fail)
    uids = [dataset.SOPInstanceUID for dataset in series]
    with pytest.raises(OSError):
        spool.reject_instances(key, uids, "113038", b"KOS", "1.2.3")

    assert spool.rejected_instances(key) == {}
    assert spool.rejection_note_files(key) == []
    assert len(spool.instances_to_analyse(key)) == 3
    assert spool.size_bytes == size


def test_a_damaged_rejection_record_refuses_the_study_with_a_comment_and_holds_it_until_repaired(
    make_node: Any, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 48r F4: a truncated rejected.json failed every later instance and note of the study with pynetdicom's
    0xC211 and no comment, and every processing pass with a traceback."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    send_note(node, clock, key_object_selection(series, series[-1:]))
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    rejected = node.spool.study_dir(key) / "rejected.json"
    rejected.write_text('{"1.2": "113001"')  # truncated
    node.spool.touch_pending(key)  # as an instance stored just before the damage would leave it

    with caplog.at_level(logging.INFO, logger="app.node"):
        answers = [
            store_dataset(node.config.port, series[0]),
            store_dataset(node.config.port, key_object_selection(series, series[:1])),
        ]
        clock.advance(QUIET_SECONDS)
        process_and_send(node)
        process_and_send(node)

    comment = "the study's record of rejected instances cannot be read"
    assert [(answer.Status, answer.ErrorComment) for answer in answers] == [(0xA700, comment)] * 2
    assert [run["instances"] for run in record(node)["runs"]] == [3, 2]
    assert key in node.spool.pending_studies()
    (logged,) = [line for line in caplog.records if "rejected instances unreadable" in line.getMessage()]
    assert getattr(logged, "fields", None) == {"study_key": key, "error": "JSONDecodeError"}
    assert not [line for line in caplog.records if line.exc_info]
    assert len(node.spool.rejection_note_files(key)) == 1  # the refused note left no file

    rejected.write_text(json.dumps({series[-1].SOPInstanceUID: "113001"}))  # repaired
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    assert key not in node.spool.pending_studies()


def spool_holding(root: Path, series: list[Dataset], limits: SpoolLimits | None = None) -> tuple[Spool, str]:
    """A spool holding `series` (as stand-in bytes), and the study's key."""
    spool = Spool(root, limits=limits or SpoolLimits())
    for dataset in series:
        spool.store_instance(dataset.StudyInstanceUID, dataset.PatientID, dataset.SOPInstanceUID, b"DICM")
    return spool, study_key(series[0].StudyInstanceUID, series[0].PatientID)


@pytest.mark.parametrize("damage", ["not UTF-8", "cannot be read", "cannot be looked at"])
def test_a_rejection_record_that_cannot_be_read_is_unreadable_not_empty(damage: str, tmp_path: Path) -> None:
    """Attack review 62 F6: a record whose read failed (EIO, EACCES) was taken as "nothing rejected", so the
    instances a PACS had rejected were analysed and taken again; bytes that are not UTF-8 escaped as a bare
    UnicodeDecodeError, which the node's handlers do not expect. Review 70 F2: so was one whose stat failed."""
    series = mr_series(tumor_channels())
    spool, key = spool_holding(tmp_path / "spool", series)
    spool.reject_instances(key, [series[0].SOPInstanceUID], "113038", b"KOS", "1.9.1")
    rejected = spool.study_dir(key) / "rejected.json"
    assert series[0].SOPInstanceUID in spool.rejected_instances(key)
    if damage == "not UTF-8":
        rejected.write_bytes(b'{"\xff": "113038"}')
    elif damage == "cannot be read":
        rejected.unlink()
        rejected.mkdir()  # reading it fails with an OSError, as EIO or EACCES would (root reads any file)
    else:
        rejected.unlink()
        rejected.symlink_to(rejected.name)  # a link to itself: its stat fails (ELOOP), as EIO would

    with pytest.raises(UnreadableRejectionsError):
        spool.rejected_instances(key)


def test_the_instances_a_study_may_have_rejected_are_held_to_its_instance_limit(tmp_path: Path) -> None:
    """Review 48r F3: three notes of 50,000 made-up UIDs each made a 10.3 MB record; nothing capped it."""
    series = mr_series(tumor_channels())
    spool, key = spool_holding(tmp_path / "spool", series, SpoolLimits(max_study_instances=4))
    named = [dataset.SOPInstanceUID for dataset in series]

    with pytest.raises(SpoolFullError, match="would have 5 instances rejected; the limit is 4"):
        spool.reject_instances(key, [*named, "1.2.3.4", "1.2.3.5"], "113001", b"KOS", "1.9.1")
    assert (spool.rejected_instances(key), len(spool.instance_files(key))) == ({}, 3)

    spool.reject_instances(key, [*named, "1.2.3.4"], "113001", b"KOS", "1.9.1")
    with pytest.raises(SpoolFullError):
        spool.reject_instances(key, ["1.2.3.5"], "113001", b"KOS", "1.9.2")
    assert len(spool.rejected_instances(key)) == 4


def test_a_study_keeps_a_bounded_number_of_notes_and_a_note_rejecting_nothing_new_is_not_kept_again(
    tmp_path: Path,
) -> None:
    series = mr_series(tumor_channels())
    spool, key = spool_holding(tmp_path / "spool", series)
    for index in range(MAX_REJECTION_NOTES):
        spool.reject_instances(key, [f"1.2.3.{index}"], "113001", b"KOS", f"1.9.{index}")
    spool.reject_instances(key, ["1.2.3.0"], "113001", b"KOS", "1.9.99")  # nothing new: taken, not kept

    with pytest.raises(SpoolFullError, match=f"keeps {MAX_REJECTION_NOTES} rejection notes"):
        spool.reject_instances(key, ["1.2.3.99"], "113001", b"KOS", "1.9.100")
    spool.reject_instances(key, ["1.2.3.99"], "113001", b"KOS 2", "1.9.0")  # one sent again replaces its copy

    assert len(spool.rejection_note_files(key)) == MAX_REJECTION_NOTES
    assert len(spool.rejected_instances(key)) == MAX_REJECTION_NOTES + 1


def test_the_rejection_record_is_read_again_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 48r F3: every instance of the study received parsed the whole record (73 ms for 150,000 UIDs)."""
    series = mr_series(tumor_channels())
    spool, key = spool_holding(tmp_path / "spool", series)
    spool.reject_instances(key, [series[0].SOPInstanceUID], "113001", b"KOS", "1.9.1")
    reads: list[Path] = []
    real_read = dicom_spool._read_or_none

    def counted_read(path: Path) -> str | None:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(dicom_spool, "_read_or_none", counted_read)
    first = series[0]
    for _ in range(10):
        assert spool.is_rejected(first.StudyInstanceUID, first.PatientID, first.SOPInstanceUID)
    assert len(reads) <= 1

    spool.reject_instances(key, [series[1].SOPInstanceUID], "113001", b"KOS", "1.9.2")
    assert spool.is_rejected(first.StudyInstanceUID, first.PatientID, series[1].SOPInstanceUID)


def test_a_note_sent_before_its_study_leaves_the_instances_it_rejects_out(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 48r F2: a router forwarding a study with its KO series first got Success for the note, which was
    dropped: the rejected slice was analysed, and nothing remembered the note."""
    node = make_node()
    series = mr_series(tumor_channels())
    note = key_object_selection(series, series[-1:])

    files = write_files([note], tmp_path / "ko") + write_files(series, tmp_path / "mr")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert [(run["status"], run["instances"]) for run in record(node)["runs"]] == [("analysed", 2)]


def test_a_note_alone_waits_for_its_study_as_a_study_would_and_is_purged_with_it(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    node = make_node(spool_limits=SpoolLimits(max_pending_studies=4))  # three for one sender address
    series = mr_series(tumor_channels())
    send_note(node, clock, key_object_selection(series, series[-1:]))  # processed: no run, nothing sent
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert record(node)["runs"] == [] and node.spool.pending_studies() == {}

    send_study(node, clock, series, tmp_path / "later")
    assert [(run["status"], run["instances"]) for run in record(node)["runs"]] == [("analysed", 2)]

    others = [mr_series(tumor_channels()) for _ in range(4)]
    answers = [store_dataset(node.config.port, key_object_selection(other, other[:1])) for other in others]
    assert [answer.Status for answer in answers] == [0, 0, 0, 0xA700]
    assert answers[-1].ErrorComment == "3 studies of this address wait; its share is 3"

    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    clock.now = time.time() + node.config.spool_limits.record_retention_seconds + 1  # records' times are the disk's
    assert len(node.purge_expired()) == 4
    assert not node.spool.study_dir(key).exists()
    assert list((node.spool.root / "studies").iterdir()) == []


def test_notes_go_with_the_instances_after_the_retention_and_what_they_rejected_stays_rejected(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Attack review 53 F4: a study's notes, which carry the patient's name, ID and birth date, stayed a year with its
    record after the retention had removed its instances, and one sender could hold spool space for a year with notes
    for made-up studies."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    send_note(node, clock, key_object_selection(series, series[-1:]))  # the study analysed again without it
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    study = node.spool.study_dir(key)
    assert node.spool.rejection_note_files(key)

    clock.now = time.time() + node.config.spool_limits.retention_seconds + 1  # records' times are the disk's
    assert node.purge_expired() == [key]

    assert node.spool.rejection_note_files(key) == []
    held = b"".join(path.read_bytes() for path in study.rglob("*") if path.is_file())
    assert str(series[0].PatientName).encode() not in held and series[0].PatientID.encode() not in held
    rejected = series[-1]
    assert node.spool.is_rejected(rejected.StudyInstanceUID, rejected.PatientID, rejected.SOPInstanceUID)


def test_a_study_of_notes_alone_goes_whole_after_the_retention(make_node: Any, clock: Clock) -> None:
    """Attack review 55 F3: notes for made-up studies left their `rejected.json` (790 KB for 10,000 made-up
    instances, not counted in the spool's size) for a year. Nothing arrived that they keep out: the study goes with
    its notes, and instances it named that come later are taken."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_note(node, clock, key_object_selection(series, series[-1:]))  # a study not held: the note alone
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    assert node.spool.study_dir(key).exists()

    clock.now = time.time() + node.config.spool_limits.retention_seconds + 1  # records' times are the disk's
    assert node.purge_expired() == [key]

    assert not node.spool.study_dir(key).exists()
    rejected = series[-1]
    assert not node.spool.is_rejected(rejected.StudyInstanceUID, rejected.PatientID, rejected.SOPInstanceUID)


def test_a_study_of_notes_alone_whose_notes_went_before_goes_whole_too(make_node: Any, clock: Clock) -> None:
    """Review 56 F3: the release before removed such a study's notes and kept its record and `rejected.json`; a spool
    it left is cleaned up too."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_note(node, clock, key_object_selection(series, series[-1:]))
    key = study_key(series[0].StudyInstanceUID, series[0].PatientID)
    shutil.rmtree(node.spool.study_dir(key) / REJECTION_NOTES_DIR)  # what the release before left
    assert sorted(path.name for path in node.spool.study_dir(key).iterdir()) == ["record.json", "rejected.json"]

    clock.now = time.time() + node.config.spool_limits.retention_seconds + 1  # records' times are the disk's
    assert node.purge_expired() == [key]

    assert not node.spool.study_dir(key).exists()
