"""The spool as it fills with studies over months (attack25b finding 6), and a study of very many instances (12).

The node kept its pending and unsent markers inside each study's folder and found them by listing every study the
spool ever held, every second, and kept a record per study for ever: with 50,000 settled studies an idle node used
65 % of a core and a new study's first C-STORE took 1.2-1.9 s. The markers now have folders of their own, and a
settled study's record expires. `python -m bench.spool_scale` measures the passes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.node import dicom_spool
from app.node.dicom_node import DicomNode
from app.node.dicom_spool import Spool, SpoolFullError, SpoolLimits, study_key
from tests.dicom.builders import Study, mr_series, tumor_channels, write_files
from tests.node.node_support import (
    QUIET_SECONDS,
    Clock,
    ResultStore,
    process_and_send,
    process_ready,
    store_dataset,
    storescu,
)

DAY_SECONDS = 24 * 3600.0


def settled_studies(root: Path, count: int) -> None:
    """`count` study folders as the retention purge leaves them: a record, no instances, no marker."""
    for index in range(count):
        directory = root / "studies" / study_key(f"1.2.3.{index}", "someone")
        directory.mkdir(parents=True)
        (directory / "record.json").write_text(json.dumps({"runs": [{"status": "analysed", "sent": {}}]}))


def test_the_passes_run_every_second_do_not_list_the_studies(
    make_node: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node: DicomNode = make_node(destination_port=1)  # nothing listens: the study's results stay unsent
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "sent")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    assert storescu(node, write_files(mr_series(tumor_channels()[:2]), tmp_path / "arriving")).returncode == 0
    settled_studies(node.spool.root, 20)
    listed: list[Path] = []
    for name in ("scandir", "listdir"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path=".", original=original: listed.append(Path(path)) or original(path))

    node.process_ready()  # the arriving study is not quiet yet: only looked at
    node.send_unsent()  # the first study's results: looked at, not yet due again

    assert listed and node.spool.root / "studies" not in listed


def test_markers_of_a_spool_written_before_the_marker_folders_are_moved_into_them(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    waiting, unsent = (root / "studies" / key for key in ("a" * 24, "b" * 24))
    for directory in (waiting, unsent):
        directory.mkdir(parents=True)
    (waiting / "pending").touch()
    os.utime(waiting / "pending", (1_000.0, 1_000.0))
    (unsent / "unsent").touch()

    spool = Spool(root)

    assert spool.pending_studies() == {waiting.name: 1_000.0}  # its last arrival kept
    assert spool.unsent_studies() == [unsent.name]
    assert not (waiting / "pending").exists() and not (unsent / "unsent").exists()


def test_a_settled_studys_record_expires_and_the_same_instances_are_then_analysed_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    limits = SpoolLimits(retention_seconds=7 * DAY_SECONDS, record_retention_seconds=30 * DAY_SECONDS)
    node = make_node(spool_limits=limits)
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    (study,) = (node.spool.root / "studies").iterdir()

    clock.now = time.time() + 8 * DAY_SECONDS
    assert node.purge_expired() == [study.name]
    assert [path.name for path in study.iterdir()] == ["record.json"]
    clock.now = time.time() + 29 * DAY_SECONDS
    assert node.purge_expired() == []
    clock.now = time.time() + 31 * DAY_SECONDS
    assert node.purge_expired() == [study.name]
    assert not study.exists() and node.spool.size_bytes == 0
    assert list((node.spool.root / dicom_spool.STUDY_UIDS_DIR).iterdir()) == []  # nor its Study Instance UID's

    assert storescu(node, files).returncode == 0  # sent again a month later
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == [study.name]
    assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SEG", "SR", "SR"]


def test_results_no_run_recorded_are_removed_when_the_node_starts(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Durability review 45 F8: a node killed between writing a run's results and its record left their folder,
    counted in the spool's size until the study's purge."""
    node = make_node()
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    node.stop()
    (recorded,) = (node.spool.root / "studies").glob("*/results/*")
    stray = recorded.with_name("20261205T155630-d8de8eb9")  # as a kill after `save_results` leaves it
    shutil.copytree(recorded, stray)
    size = node.spool.size_bytes

    restarted = make_node()

    assert list((restarted.spool.root / "studies").glob("*/results/*")) == [recorded]
    assert restarted.spool.size_bytes == size
    assert restarted.spool.remove_unrecorded_results() == []


def test_a_study_with_results_still_to_send_outlives_every_retention(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    node = make_node(destination_port=1, spool_limits=SpoolLimits(retention_seconds=60, record_retention_seconds=60))
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    clock.now = time.time() + 400 * DAY_SECONDS

    assert node.purge_expired() == []
    assert len(list((node.spool.root / "studies").glob("*/instances/*.dcm"))) == 3
    assert len(node.spool.unsent_studies()) == 1


def test_a_study_holds_at_most_max_study_instances_and_the_count_survives_a_restart(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """attack25b finding 12: a study of 10,000 one-slice instances was all accepted, and choosing its series read
    every header into memory (+256 MiB, 8 s). The instances of one study are now capped as they arrive."""
    node = make_node(spool_limits=SpoolLimits(max_study_instances=2))
    study, other = mr_series(tumor_channels(), Study()), mr_series(tumor_channels()[:1], Study())

    statuses = [store_dataset(node.config.port, dataset) for dataset in (*study, study[0], other[0])]

    assert [int(status.Status) for status in statuses] == [0x0000, 0x0000, 0xA700, 0x0000, 0x0000]
    assert statuses[2].ErrorComment == "the study holds 2 instances; the limit is 2"  # a copy sent again is kept
    restarted = Spool(node.spool.root, limits=SpoolLimits(max_study_instances=2))
    with pytest.raises(SpoolFullError, match="the study holds 2 instances"):
        restarted.store_instance(study[2].StudyInstanceUID, study[2].PatientID, study[2].SOPInstanceUID, b"x")
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 2


def test_one_instance_stored_on_several_associations_at_once_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attack review 31: each concurrent store of one SOP Instance UID found no file yet and counted it new, so the
    spool's size and the study's instance count grew by every copy and stayed so until a restart: 45 rounds of 8
    copies at once left 13.7 MB on disk counted as 66.7 MB, and the node refused a fresh instance as over its 64 MiB
    spool limit."""
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(min_free_bytes=0, max_study_instances=2))
    slow_write = dicom_spool.write_atomically

    def write_slowly(path: Path, data: bytes) -> None:  # every copy is on its way before the first is in place
        time.sleep(0.2)
        slow_write(path, data)

    monkeypatch.setattr(dicom_spool, "write_atomically", write_slowly)
    copies = [
        threading.Thread(target=spool.store_instance, args=("1.2.3", "P", "1.2.3.4", bytes(1000))) for _ in range(4)
    ]
    for copy in copies:
        copy.start()
    for copy in copies:
        copy.join(10)

    assert spool.size_bytes == spool.disk_bytes(1000)
    spool.store_instance("1.2.3", "P", "1.2.3.5", bytes(1000))  # the study's second instance: within its limit of 2
    assert spool.size_bytes == 2 * spool.disk_bytes(1000)


def test_a_node_whose_disk_can_never_keep_an_instance_says_so_at_start(
    make_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Operations review: on a 4 MiB volume under the 1 GiB DICOM_NODE_MIN_FREE_BYTES the node listened without a
    word, then refused every instance."""
    total = shutil.disk_usage(tmp_path).total
    with caplog.at_level(logging.WARNING, logger="app.node"):
        make_node(spool_limits=SpoolLimits(min_free_bytes=total + 1))

    (said,) = [line for line in caplog.records if "DICOM_NODE_MIN_FREE_BYTES" in line.getMessage()]
    assert said.levelno == logging.WARNING
    assert said.getMessage() == (
        f"the spool's disk holds {total} bytes, less than the {total + 1} that must stay free "
        "(DICOM_NODE_MIN_FREE_BYTES): every instance will be refused"
    )
    assert Spool(tmp_path / "other", limits=SpoolLimits(min_free_bytes=0)).room_problem() is None


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (SpoolLimits(min_free_bytes=0), "no room for 66000 bytes: 61440 free on disk, 0 kept free"),
        (
            SpoolLimits(max_spool_bytes=65536, min_free_bytes=0),
            "no room for 66000 bytes: the spool holds 0, its limit is 65536",
        ),
    ],
    ids=["disk", "spool limit"],
)
def test_an_instance_refused_for_room_is_refused_with_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: SpoolLimits, reason: str
) -> None:
    """Durability review 45 F7: "61440 bytes free on the spool's disk; 0 must stay free" refused a 66 kB instance
    without saying it did not fit. The reason is the Error Comment, 64 characters at most."""
    spool = Spool(tmp_path / "spool", limits=limits)
    monkeypatch.setattr(dicom_spool.os, "statvfs", lambda path: a_disk(free_bytes=61440))

    with pytest.raises(SpoolFullError) as refused:
        spool.check_room(66000)

    assert str(refused.value) == reason and len(reason) <= 64


def test_studies_of_one_uid_are_split_by_patient_id_only_where_one_is_left_empty(tmp_path: Path) -> None:
    """Interop review 39 F1: the node keys a study by Patient ID and Study Instance UID; files of one UID with an
    empty Patient ID and with one are one study split in two (refused), with two Patient IDs two patients' studies."""
    spool = Spool(tmp_path / "spool")
    named = spool.store_instance("1.2.3", "P-1", "1.2.3.1", b"first")
    unnamed = spool.store_instance("1.2.3", "", "1.2.3.2", b"second")
    other = spool.store_instance("1.2.3", "P-2", "1.2.3.3", b"third")
    elsewhere = spool.store_instance("1.2.4", "", "1.2.4.1", b"fourth")

    assert sorted(spool.studies_split_by_patient_id(named)) == [unnamed]
    assert sorted(spool.studies_split_by_patient_id(unnamed)) == sorted([named, other])
    assert spool.studies_split_by_patient_id(elsewhere) == []


def test_studies_sharing_a_series_are_those_under_another_study_uid(tmp_path: Path) -> None:
    """Interop review 42 F1: a series sent under two Study Instance UIDs is one study split in two (refused); the
    same series under one Study Instance UID and another Patient ID is `studies_split_by_patient_id`'s."""
    spool = Spool(tmp_path / "spool")
    first = spool.store_instance("1.2.3", "P-1", "1.2.3.1.1", b"first", "1.2.3.1")
    moved = spool.store_instance("1.2.4", "P-1", "1.2.3.1.2", b"second", "1.2.3.1")
    corrected = spool.store_instance("1.2.3", "P-2", "1.2.3.1.3", b"third", "1.2.3.1")
    unrelated = spool.store_instance("1.2.5", "P-1", "1.2.5.1.1", b"fourth", "1.2.5.1")
    # Attack review 44: under another Patient ID too (a patient merged in the RIS while the series was sent).
    merged = spool.store_instance("1.2.6", "P-9", "1.2.3.1.9", b"fifth", "1.2.3.1")

    assert spool.studies_sharing_a_series(first) == sorted([moved, merged])
    assert spool.studies_sharing_a_series(merged) == sorted([first, moved, corrected])
    assert spool.studies_sharing_a_series(corrected) == sorted([moved, merged])  # not `first`: one Study UID
    assert spool.studies_sharing_a_series(unrelated) == []


@pytest.mark.parametrize("left", ["", "\n" + "0" * 10], ids=["listing left empty", "line cut short"])
def test_a_series_index_append_that_failed_is_written_with_the_next_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: str
) -> None:
    """Durability review 45 F4: the study's marker was written before its listing line, so a failed append (a disk
    filled by another writer; the listing created empty, or cut short) was never retried, and the study split over
    two Study Instance UIDs went unnoticed from its first part."""
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(min_free_bytes=0))
    original_open = Path.open
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def open_failing_once(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path.suffix == ".series" and "a" in mode and failures:
            with original_open(path, mode) as listing:
                listing.write(left)
            raise failures.pop()
        return original_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_failing_once)
    with pytest.raises(OSError, match="No space left"):  # the instance is refused (A700), the sender retries it
        spool.store_instance("1.2.3", "P-1", "1.2.3.1.1", b"first", "1.2.3.1")
    first = spool.store_instance("1.2.3", "P-1", "1.2.3.1.2", b"second", "1.2.3.1")
    moved = spool.store_instance("1.2.4", "P-1", "1.2.3.1.3", b"third", "1.2.3.1")

    assert spool.studies_sharing_a_series(first) == [moved]
    assert spool.studies_sharing_a_series(moved) == [first]


def a_disk(block: int = 4096, inodes_free: int = 10**6, free_bytes: int = 4096 * 10**9) -> SimpleNamespace:
    """What `os.statvfs` says of a disk of `block`-byte blocks with `free_bytes` and `inodes_free` inodes free."""
    return SimpleNamespace(
        f_bsize=block,
        f_frsize=block,
        f_blocks=10**9,
        f_bfree=free_bytes // block,
        f_bavail=free_bytes // block,
        f_files=10**7,
        f_ffree=inodes_free,
        f_favail=inodes_free,
        f_flag=0,
        f_namemax=255,
    )


def test_the_spool_counts_what_instances_and_their_series_take_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 46 F7: the spool counted the instances' bytes only, and 2,000 tiny instances, each in a series of
    its own, took 6.5 times that on disk (a block each, and the series index's folders and markers). Each instance
    now counts its blocks, and each series the spool indexes one block, also when the spool is read at start."""
    monkeypatch.setattr(dicom_spool.os, "statvfs", lambda path: a_disk(block=4096))
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(min_free_bytes=0, max_spool_bytes=5 * 4096))

    spool.store_instance("1.2.3", "P", "1.2.3.1", b"x" * 10, series_instance_uid="1.2.3.100")
    spool.store_instance("1.2.3", "P", "1.2.3.2", b"x" * 4097, series_instance_uid="1.2.3.100")

    assert spool.size_bytes == 4 * 4096  # 1 + 2 blocks of instances, 1 of the series
    assert Spool(tmp_path / "spool").size_bytes == 4 * 4096
    with pytest.raises(SpoolFullError, match="the spool holds 16384, its limit is 20480"):
        spool.store_instance("1.2.3", "P", "1.2.3.3", b"x" * 4097, series_instance_uid="1.2.3.100")


def test_an_instance_is_refused_when_the_disk_is_short_of_inodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 46 F7: `DICOM_NODE_MIN_FREE_BYTES` kept bytes free, but tiny instances could use up the disk's
    inodes first."""
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(min_free_bytes=0))
    monkeypatch.setattr(dicom_spool.os, "statvfs", lambda path: a_disk(inodes_free=dicom_spool.MIN_FREE_INODES - 1))

    with pytest.raises(SpoolFullError) as refused:
        spool.store_instance("1.2.3", "P", "1.2.3.1", b"x" * 10)

    reason = f"no room for 10 bytes: {dicom_spool.MIN_FREE_INODES - 1} inodes free on disk"
    assert str(refused.value) == reason and len(reason) <= 64
    assert spool.size_bytes == 0 and not spool.pending_studies()


def test_a_sent_log_line_torn_by_a_kill_loses_no_later_entry(tmp_path: Path) -> None:
    """A node killed while appending to sent.jsonl left its last line without a newline; the next entry was written
    onto it, so neither could be read back (`sent_log` failed on the whole file)."""
    spool = Spool(tmp_path / "spool")
    spool.log_sent({"status": "sent", "n": 1})
    with (spool.root / "sent.jsonl").open("a") as log:
        log.write('{"status": "se')  # the kill

    spool.log_sent({"status": "sent", "n": 2})

    assert spool.sent_log() == [{"status": "sent", "n": 1}, {"status": "sent", "n": 2}]
    assert (spool.root / "sent.jsonl").read_text().splitlines()[-1] == '{"status": "sent", "n": 2}'
