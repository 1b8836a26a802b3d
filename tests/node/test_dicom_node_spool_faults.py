"""The DICOM node when its spool cannot be written (attack review 27: a full disk, a read-only remount), and when it
dies while a study is being received.

Each fault is made by the spool's own write failing with the error the system gives (ENOSPC, EROFS); the node must
neither send the same results again and again, nor count what it never wrote, nor analyse a study again every quiet
period, and it must say which error it met. A destination that was down while a study was analysed twice gets the
later results only.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MRImageStorage
from pynetdicom import AE

from app.dicom.dicom_sr_reader import read_volume_report
from app.logging_config import traceback_without_messages
from app.node import dicom_spool
from app.node.dicom_spool import Spool, SpoolFullError, SpoolLimits
from app.node.dicom_study_runs import ABORTED_NOTE
from tests.dicom.builders import Study, mr_series, to_bytes, tumor_channels, write_files
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    Clock,
    ResultStore,
    free_port,
    process_ready,
    record,
    storescu,
)

DISK_FULL = OSError(errno.ENOSPC, "No space left on device", "/spool/studies/x/record.json")


def test_results_delivered_while_the_record_cannot_be_written_are_not_sent_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 1
    update_record = node.spool.update_record

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise DISK_FULL

    node.spool.update_record = disk_full
    with caplog.at_level(logging.WARNING, logger="app.node.dicom_sender"):
        node.send_unsent()
        for _ in range(5):  # the attack saw the same SEG and SR go out 42 times a minute
            clock.advance(60)
            node.send_unsent()

    assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SR"]
    (warning,) = [item for item in caplog.records if "could not be recorded" in item.getMessage()]
    assert warning.fields["error"] == "ENOSPC (No space left on device)"  # type: ignore[attr-defined]

    node.spool.update_record = update_record  # room again
    clock.advance(60)
    node.send_unsent()

    assert len(results.received) == 2
    (run,) = record(node)["runs"]
    (state,) = run["sent"].values()
    assert state["status"] == "sent"
    assert node.spool.unsent_studies() == []


def test_an_instance_the_spool_cannot_take_is_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = Study()
    first, second = (to_bytes(dataset) for dataset in mr_series(tumor_channels()[:2], study))
    probe = Spool(tmp_path / "probe")  # the disk's blocks
    on_disk = probe.disk_bytes(len(first)) + probe.disk_bytes(len(second))
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_spool_bytes=on_disk + 1024))
    touch_pending = spool.touch_pending

    def read_only(key: str, at: float | None = None) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(spool, "touch_pending", read_only)
    for _ in range(5):  # a modality retrying against a read-only remount
        with pytest.raises(OSError):
            spool.store_instance(study.study_uid, "P1", "1.2.3.1", first)
    assert spool.size_bytes == 0

    monkeypatch.setattr(spool, "touch_pending", touch_pending)  # writable again
    spool.store_instance(study.study_uid, "P1", "1.2.3.1", first)
    spool.store_instance(study.study_uid, "P1", "1.2.3.2", second)  # before: "the spool holds ... bytes"
    assert spool.size_bytes == on_disk
    with pytest.raises(SpoolFullError):
        spool.store_instance(study.study_uid, "P1", "1.2.3.3", first)


def test_a_study_whose_results_cannot_be_written_leaves_nothing_and_waits_longer_each_time(
    make_node: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    predictor = node.processor.predictor
    write_atomically = dicom_spool.write_atomically

    def results_disk_full(path: Path, data: bytes) -> None:
        if path.parent.parent.name == "results":
            raise DISK_FULL
        write_atomically(path, data)

    monkeypatch.setattr(dicom_spool, "write_atomically", results_disk_full)
    clock.advance(QUIET_SECONDS)
    with caplog.at_level(logging.WARNING, logger="app.node.dicom_node"):
        assert process_ready(node) == []
    analyses = len(predictor.calls)
    (study,) = (node.spool.root / "studies").iterdir()
    assert not (study / "results").exists() or list((study / "results").iterdir()) == []
    (warning,) = [item for item in caplog.records if "could not be written" in item.getMessage()]
    assert warning.fields["error"] == "ENOSPC (No space left on device)"  # type: ignore[attr-defined]

    clock.advance(QUIET_SECONDS)
    assert node.process_ready() == []
    assert len(predictor.calls) == analyses  # before: analysed again every quiet period

    monkeypatch.setattr(dicom_spool, "write_atomically", write_atomically)  # room again
    clock.advance(2 * QUIET_SECONDS)
    assert len(node.process_ready()) == 1
    (run,) = record(node)["runs"]
    assert run["status"] == "analysed"
    assert [path.name for path in (study / "results").iterdir()] == [run["run_id"]]


def test_a_destination_down_while_a_study_was_analysed_twice_gets_the_later_results_only(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    port = free_port()
    node = make_node(destination_port=port)  # nothing listens there yet
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series[:2], tmp_path / "part")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_ready(node)
    node.send_unsent()
    assert storescu(node, write_files(series[2:], tmp_path / "rest")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 1

    destination = ResultStore(port)
    try:
        clock.advance(3600)
        node.send_unsent()
        (seg,) = destination.by_modality("SEG")
        (report,) = destination.by_modality("SR")
    finally:
        destination.close()

    first, second = record(node)["runs"]
    assert [state["status"] for state in first["sent"].values()] == ["superseded"]
    assert [state["status"] for state in second["sent"].values()] == ["sent"]
    assert int(seg.NumberOfFrames) == 3  # the whole series, not the first two slices
    assert [result["modality"] for result in second["results"]] == ["SEG", "SR"]  # nothing received to reject
    assert report.SOPInstanceUID == second["results"][-1]["sop_instance_uid"]
    assert node.spool.unsent_studies() == []


def test_a_logged_os_error_names_the_system_error_but_not_the_file() -> None:
    try:
        raise DISK_FULL
    except OSError as error:
        text = traceback_without_messages((type(error), error, error.__traceback__))

    assert "builtins.OSError [ENOSPC (No space left on device)] (message not logged)" in text
    assert "record.json" not in text


def test_a_study_cut_off_by_a_node_that_died_says_so_in_its_report(
    make_node: Any, results: ResultStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node killed while an association stored a study ran no close handler: the study was analysed from what had
    come and reported as complete, where the same cut-off by an abort says instances may be missing."""
    node = make_node()
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage)
    association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
    for dataset in mr_series(tumor_channels())[:2]:
        assert int(association.send_c_store(dataset).Status) == 0
    (key,) = node.spool.pending_studies()
    assert (node.spool.root / "receiving" / key).exists()
    # The crash: what the close of the connection would record never happens.
    monkeypatch.setattr(node.receiver, "_studies_sent", lambda keys, aborted: None)
    monkeypatch.setattr(node.receiver, "_mark_receiving", lambda key, receiving: None, raising=False)
    association.abort()
    node.stop()

    restarted = make_node()
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(restarted)) == 1
    restarted.send_unsent()

    note = ABORTED_NOTE.format(count=1)
    (run,) = record(restarted)["runs"]
    assert run["summary"]["notes"] == [note]
    assert read_volume_report(results.by_modality("SR")[0])["notes"] == [note]
    assert not (restarted.spool.root / "receiving" / key).exists()


def test_a_study_whose_association_ended_leaves_no_receiving_mark(make_node: Any, tmp_path: Path) -> None:
    node = make_node()
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0

    assert list((node.spool.root / "receiving").iterdir()) == []
