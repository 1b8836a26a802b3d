"""The DICOM node's spool on disk: received instances, pending studies, records of runs, results and sends.

Layout under the spool directory: ``studies/<key>/instances/*.dcm`` (instances as received),
``studies/<key>/record.json`` (every run), ``studies/<key>/results/<run>/``, ``sent.jsonl``, and three folders of
empty marker files: ``pending/<key>`` (its modification time is the study's last arrival), ``unsent/<key>`` (results a
destination still lacks; its modification time is when they were made) and ``receiving/<key>`` (an association is
storing instances of it: one left by a node that died is a study cut off). The markers have folders of their own so
that the passes that look for them every second read a folder as long as the work waiting, not one entry per study the
node ever received. Instances, records and results are written to a temporary file, flushed to disk and renamed
into place, and ``sent.jsonl`` is flushed after each line, so a node killed at any point has lost nothing it
acknowledged. Studies are named by a hash of their Patient ID and Study Instance UID (`study_key`): no DICOM attribute
shows in paths or logs, and two patients whose studies share a Study Instance UID (a UID generator's fault, or a
re-identified copy) never share a study.

The spool is bounded: `SpoolLimits` caps one instance, the spool's total size (what its files take on disk: whole
blocks, and a block for each series it indexes) and the disk space and inodes it leaves free, and
`purge_expired` removes the instances and results of studies whose results were all delivered long enough ago
(their ``record.json`` stays for `SpoolLimits.record_retention_seconds`: a re-send of the same instances is still
recognised and not processed again), and then the whole study, so the spool does not grow with every study for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset

from app.core.durable_files import write_atomically
from app.dicom.dicom_seg import part10_bytes
from app.settings import DAY_SECONDS, Settings

logger = logging.getLogger(__name__)

HOUR_SECONDS = DAY_SECONDS / 24
PENDING_DIR = "pending"
UNSENT_DIR = "unsent"
RECEIVING_DIR = "receiving"
# Which study keys share a Study Instance UID, for `studies_split_by_patient_id`: `study_uids/<hash of the UID>/
# <key>.id` (or `.no-id`: a Patient ID left empty), and `study_uids/<key>.uid` naming that folder.
STUDY_UIDS_DIR = "study_uids"
# Which study keys hold a Series Instance UID, for `studies_sharing_a_series`: `series_uids/<hash of the UID>/<key>`,
# and `series_uids/<key>.series` listing those folders, one per line.
SERIES_UIDS_DIR = "series_uids"
RECORD_FILE = "record.json"
# A study's incoming IHE IOCM rejection notes: ``studies/<key>/rejected.json`` (SOP Instance UID
# -> the CID 7011 code of the note that rejected it) and the notes as received, ``studies/<key>/rejection_notes/``.
REJECTED_FILE = "rejected.json"
REJECTION_NOTES_DIR = "rejection_notes"
MAX_REJECTION_NOTES = 20
"""Rejection notes one study keeps (`Spool.reject_instances`), each up to `incoming_rejection.MAX_NOTE_BYTES`; its
rejected instances are held to `SpoolLimits.max_study_instances`: otherwise a sender could make a study keep any
number of notes and a record of any length, re-read for every instance of it received (three notes of 50,000 UIDs
are 38.7 MB of notes and a 10.3 MB record, parsed in 73 ms per instance). A PACS sends a study one note, or
a few over its life."""
_REJECTIONS_CACHED = 64  # studies whose record of rejected instances `Spool` keeps parsed in memory
SENT_LOG = "sent.jsonl"
LOCK_FILE = "node.lock"
WAITING_STATUSES = ("pending", "failed")
"""A destination's state in a run that still has results to send; the others: "sent", "dropped" (the
destination was taken out of the configuration before it got them) and "superseded" (a later run of the study came
before they were delivered: the destination gets that run's instead)."""
MIN_FREE_INODES = 1000
"""Inodes the spool leaves free on its disk: tiny instances use up a disk's inodes long before its bytes, and the
system needs some to go on (logs, temporary files). A disk that reports none (btrfs) has no
such limit."""
DEFAULT_BLOCK_BYTES = 4096  # a disk's allocation unit, where statvfs says none


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class SpoolFullError(Exception):
    """The instance would break a `SpoolLimits` limit: not kept (the C-STORE is answered Out of Resources)."""


class InstanceTooLargeError(SpoolFullError):
    """The instance alone is over `SpoolLimits.max_instance_bytes`, however empty the spool."""


class UnreadableRejectionsError(ValueError):
    """A study's record of rejected instances (``rejected.json``) cannot be read: truncated, not JSON, not a map of
    UIDs to codes. What the study may analyse or keep is then unknown: it waits, logged, until the file is repaired
    as a study whose ``record.json`` cannot be read does."""


class SpoolInUseError(ValueError):
    """Another process holds the spool: two nodes on one spool analyse each study twice and send it again."""


def hold_spool(root: Path) -> IO[str]:
    """Take the spool for this process: an exclusive lock on `root/node.lock`, held while the returned file is open.

    The kernel drops the lock when the process ends however it ends, so a node killed with SIGKILL does not keep
    its restart out. Take it before a `Spool` is made: making one already tidies the folder.

    Raises
    ------
    SpoolInUseError
        Another process holds the lock.
    OSError
        The folder cannot be created or the lock file opened.
    """
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - open for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolInUseError(
            f"the spool {root} (DICOM_NODE_SPOOL_DIR or --spool-dir) is in use by another dicom-node; give each node "
            "its own spool"
        ) from None
    except OSError:
        handle.close()
        raise
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")  # for whoever looks: which process holds it
    handle.flush()
    return handle


@dataclass(frozen=True)
class SpoolLimits:
    """How much the spool may hold: the largest instance, the whole spool, the disk space it must leave free, the
    studies waiting for analysis (a sender that makes up studies faster than the node analyses them would otherwise
    queue work without end, and a real study would wait behind all of it), the instances of one study (choosing its
    series reads every header into memory: about 256 MiB and 8 s for 10,000), and how long a settled study keeps
    its instances and results (`retention_seconds`) and its record (`record_retention_seconds`, counted from the
    same moment: the record's last change)."""

    # The DICOM_NODE_* settings' defaults (`from_settings` takes the settings themselves).
    max_instance_bytes: int = Settings.model_fields["dicom_node_max_instance_bytes"].default
    max_spool_bytes: int = Settings.model_fields["dicom_node_max_spool_bytes"].default
    min_free_bytes: int = Settings.model_fields["dicom_node_min_free_bytes"].default
    retention_seconds: float = Settings.model_fields["dicom_node_retention_hours"].default * HOUR_SECONDS
    max_pending_studies: int = Settings.model_fields["dicom_node_max_pending_studies"].default
    record_retention_seconds: float = Settings.model_fields["dicom_node_record_retention_days"].default * DAY_SECONDS
    max_study_instances: int = Settings.model_fields["dicom_node_max_study_instances"].default
    # The analysis's decoding budget: an instance costing more is fingerprinted by its bytes, not decoded for it.
    max_decode_bytes: int = Settings.model_fields["decode_memory_bytes"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> SpoolLimits:
        """The limits the DICOM_NODE_* settings give (retention in hours and days, here in seconds)."""
        return cls(
            max_instance_bytes=settings.dicom_node_max_instance_bytes,
            max_spool_bytes=settings.dicom_node_max_spool_bytes,
            min_free_bytes=settings.dicom_node_min_free_bytes,
            retention_seconds=settings.dicom_node_retention_hours * HOUR_SECONDS,
            max_pending_studies=settings.dicom_node_max_pending_studies,
            record_retention_seconds=settings.dicom_node_record_retention_days * DAY_SECONDS,
            max_study_instances=settings.dicom_node_max_study_instances,
            max_decode_bytes=settings.decode_memory_bytes,
        )

    @property
    def max_pending_per_sender(self) -> int:
        """Studies one sender address may have waiting for analysis: all but a quarter (rounded down) of
        `max_pending_studies`, which is kept for the other senders: otherwise one address could fill the whole queue,
        hold it by keeping its associations open, and have every other sender's new study refused. A router
        that is the node's only sender queues three quarters of it."""
        return self.max_pending_studies - self.max_pending_studies // 4


def study_key(study_instance_uid: str, patient_id: str = "") -> str:
    """The spool's (and the logs') name for a study: a hash of Patient ID and Study Instance UID.

    The Patient ID takes part because Study Instance UIDs are not always unique across patients; a hash, so no
    DICOM attribute shows in paths or logs.
    """
    return hashlib.sha256(f"{patient_id}\\{study_instance_uid}".encode()).hexdigest()[:24]


@dataclass
class Spool:
    """The node's on-disk state: ``studies/<key>/instances/*.dcm``, markers, ``record.json``, ``results/``."""

    root: Path
    clock: Callable[[], float] = time.time
    limits: SpoolLimits = field(default_factory=SpoolLimits)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _record_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _size_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # also: store against purge
    _size: int = field(default=0, repr=False)
    _block: int = field(default=DEFAULT_BLOCK_BYTES, repr=False)  # the disk's allocation unit (statvfs f_frsize)
    # Study key -> instances it holds: counted from its folder the first time the study is stored to in this
    # process, then kept up to date under the size lock (a count per instance stored would list the folder each time).
    _instances: dict[str, int] = field(default_factory=dict, repr=False)
    _unreadable: set[str] = field(default_factory=set, repr=False)  # studies whose unreadable record was logged
    _unreadable_rejections: set[str] = field(default_factory=set, repr=False)  # the same, for rejected.json
    # Study key -> its rejected.json as parsed, under the file's (inode, size, mtime): the record is read again only
    # when it changed, not for every instance of the study received.
    _rejections: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = field(default_factory=dict, repr=False)
    # Study key -> the sender address that made it pending (in this process; a study pending at start has none), for
    # `SpoolLimits.max_pending_per_sender`. Studies no longer pending are dropped at the next new study.
    _started_by: dict[str, str] = field(default_factory=dict, repr=False)
    # Instance files being written: a second store of the same SOP Instance UID waits for the first (`_stored`, on the
    # size lock), so that it counts the file the first leaves as the one it replaces.
    _storing: set[Path] = field(default_factory=set, repr=False)
    _stored: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._stored = threading.Condition(self._size_lock)
        studies = self.root / "studies"
        for directory in (
            studies,
            self.root / PENDING_DIR,
            self.root / UNSENT_DIR,
            self.root / RECEIVING_DIR,
            self.root / STUDY_UIDS_DIR,
            self.root / SERIES_UIDS_DIR,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        self._move_markers_out_of_study_folders()
        self._block = os.statvfs(self.root).f_frsize or DEFAULT_BLOCK_BYTES
        instances = sum(self.disk_bytes(path.stat().st_size) for path in studies.glob("*/*/**/*.dcm") if path.is_file())
        series_indexed = sum(1 for _ in (self.root / SERIES_UIDS_DIR).glob("*/*"))
        self._size = instances + series_indexed * self._block

    def _move_markers_out_of_study_folders(self) -> None:
        """A spool written before the marker folders kept ``studies/<key>/pending`` and ``studies/<key>/unsent``:
        moved into place (a rename keeps the arrival time), once, when the node starts."""
        for marker_dir in (PENDING_DIR, UNSENT_DIR):
            for marker in (self.root / "studies").glob(f"*/{marker_dir}"):
                if marker.is_file():
                    os.replace(marker, self.root / marker_dir / marker.parent.name)

    @property
    def size_bytes(self) -> int:
        """What the instances and results in the spool, and its index of series, take on disk (the small records are
        not counted)."""
        return self._size

    def disk_bytes(self, size: int) -> int:
        """What a file of `size` bytes takes on the spool's disk: whole blocks. Bytes alone undercount: 2,000
        instances of 1.3 KB, each in a series of its own, take 6.5 times as much on disk."""
        return -(-size // self._block) * self._block

    def study_dir(self, key: str) -> Path:
        return self.root / "studies" / key

    def check_room(self, size: int, replaced: int = 0) -> None:
        """Raise `SpoolFullError` (with the reason) unless an instance of `size` bytes may be kept (in place of a file
        of `replaced` bytes). The reason names the instance's size first, as the Error Comment keeps 64 characters
        ("61440 bytes free on the spool's disk; 0 must stay free" alone reads as a contradiction)."""
        limits = self.limits
        if size > limits.max_instance_bytes:
            raise InstanceTooLargeError(f"instance of {size} bytes is over the limit of {limits.max_instance_bytes}")
        cost = self.disk_bytes(size) - self.disk_bytes(replaced)
        if self._size + cost > limits.max_spool_bytes:
            raise SpoolFullError(
                f"no room for {size} bytes: the spool holds {self._size}, its limit is {limits.max_spool_bytes}"
            )
        disk = os.statvfs(self.root)  # one call for bytes and inodes (shutil.disk_usage is a statvfs too)
        free = disk.f_bavail * disk.f_frsize  # as shutil.disk_usage counts it: what an unprivileged user may use
        if free - cost < limits.min_free_bytes:
            raise SpoolFullError(f"no room for {size} bytes: {free} free on disk, {limits.min_free_bytes} kept free")
        if disk.f_files and disk.f_favail < MIN_FREE_INODES:
            raise SpoolFullError(f"no room for {size} bytes: {disk.f_favail} inodes free on disk")

    def room_problem(self) -> str | None:
        """Why no instance can be kept as things are, or None: a disk smaller than `min_free_bytes` and one
        instance, or with less than that free. Said at start: otherwise the node listens, and refuses every instance
        (e.g. a 4 MiB volume under the 1 GiB default)."""
        limits = self.limits
        usage = shutil.disk_usage(self.root)
        needed = limits.min_free_bytes + 1
        if usage.total < needed:
            return (
                f"the spool's disk holds {usage.total} bytes, less than the {limits.min_free_bytes} that must stay "
                "free (DICOM_NODE_MIN_FREE_BYTES): every instance will be refused"
            )
        if usage.free < needed:
            return (
                f"the spool's disk has {usage.free} bytes free, {limits.min_free_bytes} must stay free "
                "(DICOM_NODE_MIN_FREE_BYTES): instances are refused until there is room"
            )
        return None

    def holds_instance(self, study_instance_uid: str, patient_id: str, sop_instance_uid: str) -> bool:
        """Whether a copy of the instance is kept already (one sent before under its SOP Instance UID)."""
        return self._instance_path(study_key(study_instance_uid, patient_id), sop_instance_uid).is_file()

    def holds_only(self, key: str, sop_instance_uids: Collection[str]) -> bool:
        """Whether every instance study `key` holds is one of `sop_instance_uids` (and it holds one at least)."""
        named = {self._instance_path(key, sop_instance_uid) for sop_instance_uid in sop_instance_uids}
        held = self.instance_files(key)
        return bool(held) and all(path in named for path in held)

    def _instance_path(self, key: str, sop_instance_uid: str) -> Path:
        instances = self.study_dir(key) / "instances"
        return instances / (hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32] + ".dcm")

    def store_instance(
        self,
        study_instance_uid: str,
        patient_id: str,
        sop_instance_uid: str,
        data: bytes,
        series_instance_uid: str = "",
        sender: str = "",
    ) -> str:
        """Keep one received instance (Part 10 bytes) of series `series_instance_uid` (indexed for
        `studies_sharing_a_series` unless empty) and mark its study pending; return the study key. A new study of
        `sender` (an address; none when empty) counts against its share of the studies waiting.

        Raises `SpoolFullError` (nothing written) when the instance would break a limit of `SpoolLimits`.
        """
        key = study_key(study_instance_uid, patient_id)
        path = self._instance_path(key, sop_instance_uid)
        self._note_study_uid(study_instance_uid, key, has_patient_id=bool(patient_id))
        if series_instance_uid:
            self._note_series_uid(series_instance_uid, key)
        # Room is reserved and the study marked pending (so a purge leaves it alone) under the lock; the slow,
        # flushed write happens outside it, so concurrent associations store side by side; but one instance is
        # written by one association at a time: otherwise the same SOP Instance UID sent on several associations at
        # once is counted new by each, the counts grow by the copies and never shrink until a restart, and the node
        # refuses every instance as over the spool's limit while its disk holds a fifth of it.
        with self._stored:
            while path in self._storing:
                self._stored.wait()
            self._storing.add(path)
        try:
            new, cost = self._reserve(key, path, len(data), sender)
            try:
                write_atomically(path, data)
            except OSError:
                with self._size_lock:
                    self._size -= cost
                    if new:
                        self._instances[key] -= 1
                raise
        finally:
            with self._stored:
                self._storing.discard(path)
                self._stored.notify_all()
        return key

    def _note_study_uid(self, study_instance_uid: str, key: str, has_patient_id: bool) -> None:
        pointer = self.root / STUDY_UIDS_DIR / f"{key}.uid"
        if pointer.exists():
            return
        uid_dir = self.root / STUDY_UIDS_DIR / study_key(study_instance_uid)
        uid_dir.mkdir(exist_ok=True)
        (uid_dir / f"{key}.{'id' if has_patient_id else 'no-id'}").touch()
        write_atomically(pointer, uid_dir.name.encode())

    def _note_series_uid(self, series_instance_uid: str, key: str) -> None:
        """Index study `key` under the series: the listing's line first, the marker last, since the marker says the
        study is indexed (with the marker first, an append that failed, or a node killed in between, is never
        retried, and `studies_sharing_a_series` misses the other study for good). A failure here refuses
        the instance, and its next instance (or the sender's retry) writes both again. Each line is written after a
        newline, so a line an earlier failed append cut short stays on its own (`_listed_series_folders` skips it)."""
        folder = study_key(series_instance_uid)
        series_dir = self.root / SERIES_UIDS_DIR / folder
        if (series_dir / key).exists():
            return
        listed = self.root / SERIES_UIDS_DIR / f"{key}.series"
        with self._size_lock:  # associations of one study may store side by side
            if (series_dir / key).exists():
                return
            series_dir.mkdir(exist_ok=True)
            with listed.open("a") as listing:
                listing.write(f"\n{folder}\n")
            (series_dir / key).touch()
            self._size += self._block  # its folder, or its marker's inode

    def _listed_series_folders(self, key: str) -> set[str]:
        """The index folders of the series study `key` holds (`_note_series_uid`), leaving out what is no folder (a
        line cut short); raises OSError without a listing (a study stored before the node kept this index)."""
        index = self.root / SERIES_UIDS_DIR
        return {folder for folder in (index / f"{key}.series").read_text().split() if (index / folder).is_dir()}

    def studies_sharing_a_series(self, key: str) -> list[str]:
        """The other studies in the spool, under another Study Instance UID, that hold instances of a series (by
        Series Instance UID) study `key` holds, whatever their Patient ID.

        Why: a series belongs to one study, yet one sent with two Study Instance UIDs (a study split or corrected in
        the RIS while it was sent) would be analysed as two studies, and the tumor-free part get a COMPLETE "absent"
        SR, where the API refuses such files in one request. The same UID under the same Study Instance UID and
        another Patient ID is `studies_split_by_patient_id`'s, or a corrected Patient ID. Under another Patient ID and
        another Study Instance UID it counts too: a patient merged in the RIS while the series was sent would give
        the tumor-free part a COMPLETE "absent" SR under the temporary ID. The price is that an allowed sender that
        reuses another patient's Series Instance UID fails that study: a refusal with its reason, never a wrong
        answer."""
        index = self.root / SERIES_UIDS_DIR
        try:
            folders = self._listed_series_folders(key)
        except OSError:  # a study stored before the node kept this index
            return []
        own_study = self._study_uid_folder(key)
        sharing = {
            other.name
            for folder in folders
            for other in (index / folder).iterdir()
            if other.name != key and self._study_uid_folder(other.name) != own_study
        }
        return sorted(other for other in sharing if self.instance_files(other))

    def _study_uid_folder(self, key: str) -> str | None:
        """The hash of study `key`'s Study Instance UID (`_note_study_uid`), or None for a study without it."""
        return _read_or_none(self.root / STUDY_UIDS_DIR / f"{key}.uid")

    def _forget_study_uid(self, key: str) -> None:
        """Drop study `key` from the indexes of Study and Series Instance UIDs, once its folder is gone."""
        listed = self.root / SERIES_UIDS_DIR / f"{key}.series"
        with contextlib.suppress(OSError):
            for folder in self._listed_series_folders(key):
                series_dir = self.root / SERIES_UIDS_DIR / folder
                with self._size_lock, contextlib.suppress(FileNotFoundError):
                    (series_dir / key).unlink()
                    self._size -= self._block
                if not any(series_dir.iterdir()):
                    series_dir.rmdir()
            listed.unlink()
        pointer = self.root / STUDY_UIDS_DIR / f"{key}.uid"
        with contextlib.suppress(OSError):
            uid_dir = self.root / STUDY_UIDS_DIR / pointer.read_text()
            for marker in uid_dir.glob(f"{key}.*"):
                marker.unlink()
            if not any(uid_dir.iterdir()):
                uid_dir.rmdir()
            pointer.unlink()

    def studies_split_by_patient_id(self, key: str) -> list[str]:
        """The other studies in the spool under the Study Instance UID of study `key` whose Patient ID is left empty
        where `key`'s is not, or the other way round, and that hold instances.

        Why: the node keys a study by Patient ID and Study Instance UID, so a series sent with an empty Patient ID on
        some files would be analysed as two studies (the patient's tumor-free half an SR "absent", the tumor half a
        SEG filed under an empty Patient ID), where the API refuses such files as one request. Two
        Patient IDs that are both set stay two studies: a corrected Patient ID is sent again under the same UID."""
        try:
            uid_dir = self.root / STUDY_UIDS_DIR / (self.root / STUDY_UIDS_DIR / f"{key}.uid").read_text()
            others = {marker.stem: marker.suffix == ".id" for marker in uid_dir.iterdir()}
        except OSError:  # a study stored before the node kept this index
            return []
        has_id = others.pop(key, None)
        if has_id is None:
            return []
        return [
            other for other, other_has_id in others.items() if other_has_id != has_id and self.instance_files(other)
        ]

    def study_keys_of(self, study_instance_uid: str) -> list[str]:
        """The keys of the studies in the spool under a Study Instance UID, whatever their Patient ID (the index
        `_note_study_uid` keeps; a study stored before the node kept it is not found: give its Patient ID)."""
        try:
            markers = list((self.root / STUDY_UIDS_DIR / study_key(study_instance_uid)).iterdir())
        except OSError:
            return []
        return sorted(marker.stem for marker in markers if self.study_dir(marker.stem).is_dir())

    def forget_instances(self, key: str) -> int:
        """Remove the instances study `key` received, and its pending and receiving markers (nothing is left to
        analyse); its record and results stay, so the next send of the study is analysed afresh and its results
        revise the earlier ones. Returns how many instances were removed. For ``brain-tumor dicom-node-forget``,
        with the node stopped.

        Why: the spool keeps every instance, so a study refused for a stray instance (one re-sent under a new SOP
        Instance UID at another's position) is refused again at every re-send of the corrected study without it."""
        with self._size_lock:
            removed = len(self.instance_files(key))
            self._remove_tree(self.study_dir(key) / "instances")
            self._marker(PENDING_DIR, key).unlink(missing_ok=True)
            self._marker(RECEIVING_DIR, key).unlink(missing_ok=True)
            self._instances.pop(key, None)
        return removed

    def reject_instances(
        self, key: str, rejected: Collection[str], reason_code: str, note: bytes, note_uid: str, sender: str = ""
    ) -> int:
        """Take an incoming IHE IOCM rejection note (`note`, Part 10 bytes, SOP Instance UID `note_uid`) for study
        `key`: its `rejected` SOP Instance UIDs are recorded for good, the instances the study holds among them
        removed, and the study marked pending, to be analysed again without them. Returns how many were removed
        (none: nothing to analyse again; the record still leaves them out of a later send).

        A note for a study the spool does not hold yet starts it, as its first instance would, counted against the
        studies waiting (of all, and of `sender`): the instances that follow (its KO series sent first, in the same
        association or not) are left out, and the study's retention purges it with its record (dropped, the note
        would leave the rejected image to be analysed).

        Why: otherwise the SEG and SR made of images the PACS no longer stands by (another patient's, unsafe ones)
        stand, and every later analysis reads them. In the order that
        makes a note refused or cut by a kill take no effect: the note's file (which the node's own note is made from
        when no instance is left), the pending mark, then the record (written atomically: the step that makes the
        rejection), then the files; an instance recorded and not yet removed is left out of the analysis all the
        same (`instances_to_analyse`). The record comes after the note's file: otherwise a note refused for want of room
        still takes effect, and with every instance rejected the earlier results are never withdrawn.

        Raises OSError when the spool cannot be written, `UnreadableRejectionsError` when the record cannot be read:
        the note is then refused, and the sender sends it again; a note's file written for a record that could not be
        is removed.
        """
        held = [uid for uid in rejected if self._instance_path(key, uid).is_file()]
        if not self.study_dir(key).is_dir():
            with self._size_lock:
                if self.pending_since(key) is None:
                    self._check_pending_room(sender)
                    self._started_by[key] = sender
                self.study_dir(key).mkdir(parents=True, exist_ok=True)
                self.touch_pending(key)  # no purge meanwhile; processed, it records that it holds nothing yet
        recorded_before = self.rejected_instances(key)
        if not held and all(uid in recorded_before for uid in rejected):
            return 0  # rejects nothing new (the same note again, the node's own routed back): not kept again
        note_path = (
            self.study_dir(key) / REJECTION_NOTES_DIR / f"{hashlib.sha256(note_uid.encode()).hexdigest()[:32]}.dcm"
        )
        self._check_rejection_room(key, recorded_before, rejected, note_path)
        replaced = note_path.stat().st_size if note_path.exists() else 0
        note_path.parent.mkdir(exist_ok=True)
        write_atomically(note_path, note)
        with self._size_lock:
            self._size += self.disk_bytes(len(note)) - (self.disk_bytes(replaced) if replaced else 0)
        try:
            if held:
                self.touch_pending(key)
            with self._record_lock:
                recorded = dict(self.rejected_instances(key))
                recorded.update(dict.fromkeys(rejected, reason_code))
                write_atomically(self.study_dir(key) / REJECTED_FILE, json.dumps(recorded, indent=1).encode())
        except (OSError, UnreadableRejectionsError):
            if not replaced:  # a note sent again keeps the copy an earlier record stands on
                with self._size_lock, contextlib.suppress(OSError):
                    note_path.unlink()
                    self._size -= self.disk_bytes(len(note))
            raise
        for sop_instance_uid in held:
            path = self._instance_path(key, sop_instance_uid)
            with self._stored:  # not while an association writes it: its write would bring it back
                while path in self._storing:
                    self._stored.wait()
                with contextlib.suppress(FileNotFoundError):
                    size = path.stat().st_size
                    path.unlink()
                    self._size -= self.disk_bytes(size)
                    if key in self._instances:
                        self._instances[key] -= 1
        return len(held)

    def _check_rejection_room(
        self, key: str, recorded: Collection[str], rejected: Collection[str], note_path: Path
    ) -> None:
        """Raise `SpoolFullError` unless study `key` may keep one more rejection note (`MAX_REJECTION_NOTES`; one sent
        again replaces its copy) and its record the `rejected` UIDs besides those `recorded`
        (`SpoolLimits.max_study_instances`, as many as the study may hold)."""
        limit = self.limits.max_study_instances
        total = len(set(recorded).union(rejected))
        if total > limit:
            raise SpoolFullError(f"the study would have {total} instances rejected; the limit is {limit}")
        notes = len(self.rejection_note_files(key))
        if notes >= MAX_REJECTION_NOTES and not note_path.exists():
            raise SpoolFullError(f"the study keeps {notes} rejection notes; the limit is {MAX_REJECTION_NOTES}")

    def rejected_instances(self, key: str) -> Mapping[str, str]:
        """The SOP Instance UIDs study `key`'s incoming rejection notes rejected, each with its note's CID 7011 code, as
        cached (not to be changed): a stat per call, a read only when the file changed.

        Raises `UnreadableRejectionsError` when the file cannot be read, logged once (by key and error type: the file
        holds UIDs) until it can be again: a bare JSONDecodeError would fail every later instance of the study with
        pynetdicom's 0xC211 and no comment, and its every processing pass."""
        path = self.study_dir(key) / REJECTED_FILE
        try:
            stat = path.stat()
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            cached = self._rejections.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
            recorded = json.loads(path.read_bytes())
            if not isinstance(recorded, dict) or not all(isinstance(code, str) for code in recorded.values()):
                raise ValueError("not a record of rejected instances")
        except FileNotFoundError:  # none, or removed (the study purged or forgotten): nothing rejected
            self._rejections.pop(key, None)
            return {}
        except (OSError, ValueError) as error:  # unreadable (EIO, EACCES), not UTF-8 or not JSON: not "none"
            self._log_once(
                self._unreadable_rejections,
                key,
                "study's rejected instances unreadable: study left waiting until rejected.json is repaired",
                error,
            )
            raise UnreadableRejectionsError(f"the rejected instances of study {key} cannot be read") from error
        with self._lock:
            self._unreadable_rejections.discard(key)
            self._rejections.pop(key, None)  # the newest last, the oldest dropped first
            self._rejections[key] = (signature, recorded)
            while len(self._rejections) > _REJECTIONS_CACHED:
                self._rejections.pop(next(iter(self._rejections)))
        return recorded

    def _log_once(self, logged: set[str], key: str, message: str, error: Exception) -> None:
        """Log `message` for study `key` unless `logged` (the keys it was logged for) holds it: an unreadable file is
        met at every instance and pass, and said once, by key and error type only (the files hold UIDs)."""
        with self._lock:
            first = key not in logged
            logged.add(key)
        if first:
            logger.error(message, extra={"fields": {"study_key": key, "error": type(error).__name__}})

    def is_rejected(self, study_instance_uid: str, patient_id: str, sop_instance_uid: str) -> bool:
        """Whether an incoming rejection note rejected the instance: sent again, it stays left out (IOCM: rejected
        means rejected). A stat per instance received; the record is read only when it changed."""
        return sop_instance_uid in self.rejected_instances(study_key(study_instance_uid, patient_id))

    def instances_to_analyse(self, key: str) -> list[Path]:
        """The instance files of study `key` that no incoming rejection note rejected (`reject_instances`)."""
        rejected = {self._instance_path(key, uid) for uid in self.rejected_instances(key)}
        return [path for path in self.instance_files(key) if path not in rejected]

    def rejection_note_files(self, key: str) -> list[Path]:
        """The incoming rejection notes study `key` received: their patient and study attributes are the study's,
        for the node's own note when no instance is left (`app.node.dicom_study_worker`)."""
        return sorted((self.study_dir(key) / REJECTION_NOTES_DIR).glob("*.dcm"))

    def _reserve(self, key: str, path: Path, size: int, sender: str) -> tuple[bool, int]:
        """Count an instance file of `size` bytes about to be written at `path` (new, or replacing one: less what it
        replaces) and mark its study pending; return whether it is new, and what it adds to `size_bytes`.
        `SpoolFullError` (nothing counted) when a limit would break."""
        with self._size_lock:
            new = not path.exists()
            replaced = 0 if new else path.stat().st_size
            self.check_room(size, replaced)
            if self.pending_since(key) is None:  # a study not already waiting: one more to analyse
                self._check_pending_room(sender)
                self._started_by[key] = sender
            held = self._instance_count(key)
            if new and held >= self.limits.max_study_instances:
                raise SpoolFullError(
                    f"the study holds {held} instances; the limit is {self.limits.max_study_instances}"
                )
            # The folder and the marker first: a spool that refuses them (read-only, out of inodes) counts nothing
            # (attack finding: each refused instance's size stayed counted, until the node refused every one).
            path.parent.mkdir(parents=True, exist_ok=True)
            self.touch_pending(key)
            cost = self.disk_bytes(size) - self.disk_bytes(replaced)
            self._size += cost
            self._instances[key] = held + 1 if new else held
            return new, cost

    def _check_pending_room(self, sender: str) -> None:
        """Raise `SpoolFullError` unless one more study may wait for analysis: of all, and of `sender` (under the size
        lock)."""
        pending = self.pending_studies()
        if len(pending) >= self.limits.max_pending_studies:
            raise SpoolFullError(
                f"{len(pending)} studies wait for analysis; the limit is {self.limits.max_pending_studies}"
            )
        self._started_by = {key: by for key, by in self._started_by.items() if key in pending}
        held = sum(by == sender for by in self._started_by.values()) if sender else 0
        share = self.limits.max_pending_per_sender
        if held >= share:
            raise SpoolFullError(f"{held} studies of this address wait; its share is {share}")

    def _instance_count(self, key: str) -> int:
        """Instances the study holds (under the size lock)."""
        if key not in self._instances:
            self._instances[key] = len(self.instance_files(key))
        return self._instances[key]

    def _marker(self, marker_dir: str, key: str) -> Path:
        return self.root / marker_dir / key

    def _stamp(self, marker_dir: str, key: str, at: float | None = None) -> None:
        """Create or touch a marker, its modification time set by the spool's clock (`at` by default now)."""
        marker = self._marker(marker_dir, key)
        with self._lock:
            marker.touch()
            now = self.clock() if at is None else at
            os.utime(marker, (now, now))

    def touch_pending(self, key: str, at: float | None = None) -> None:
        self._stamp(PENDING_DIR, key, at)

    def pending_since(self, key: str) -> float | None:
        """Time of the last arrival of one study, or None when it is not pending."""
        try:
            return self._marker(PENDING_DIR, key).stat().st_mtime
        except FileNotFoundError:
            return None

    def pending_studies(self) -> dict[str, float]:
        """Study key -> time of its last arrival, for every study with a pending marker."""
        found = {}
        for marker in (self.root / PENDING_DIR).iterdir():
            try:
                found[marker.name] = marker.stat().st_mtime
            except FileNotFoundError:  # cleared meanwhile
                continue
        return found

    def clear_pending(self, key: str, seen_mtime: float) -> bool:
        """Remove the marker unless an instance arrived since `seen_mtime`; True if removed."""
        marker = self._marker(PENDING_DIR, key)
        with self._lock:
            try:
                if marker.stat().st_mtime != seen_mtime:
                    return False
                marker.unlink()
            except FileNotFoundError:
                pass
        return True

    def instance_files(self, key: str) -> list[Path]:
        return sorted((self.study_dir(key) / "instances").glob("*.dcm"))

    def fingerprints(self, files: Sequence[Path]) -> tuple[str, str]:
        """The set of instances and their content: a re-send of the same instances matches, in any transfer syntax
        (a PACS that archived them JPEG-LS lossless or Implicit VR: `content_digest`); an instance sent again under
        the same SOP Instance UID with other content (a corrected image or attribute) does not, so the study is
        analysed again. Second, the fingerprint of the files' bytes, which runs recorded before the content one
        hold: the same files re-sent after an upgrade are still recognised."""
        from app.dicom.instance_content import content_digest

        by_content, by_bytes = hashlib.sha256(), hashlib.sha256()
        for path in sorted(files, key=lambda item: item.name):
            data = path.read_bytes()
            by_content.update(path.name.encode() + b"\0" + content_digest(data, self.limits.max_decode_bytes))
            by_bytes.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
        return by_content.hexdigest()[:32], by_bytes.hexdigest()[:32]

    def read_record(self, key: str) -> dict[str, Any]:
        path = self.study_dir(key) / RECORD_FILE
        if not path.exists():
            return {"runs": []}
        return json.loads(path.read_text())

    def readable_record(self, key: str) -> dict[str, Any] | None:
        """The study's record, or None if it cannot be read (truncated, not JSON, not a record).

        Such a study is skipped, not fatal: one broken file must not hold up every other study. It is logged once
        (by key and error type: the file may hold patient data) until it can be read again, not on every pass.
        """
        try:
            record = self.read_record(key)
            runs = record.get("runs") if isinstance(record, dict) else None
            if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
                raise ValueError("not a study record")
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._log_once(self._unreadable, key, "study record unreadable: study skipped until it is repaired", error)
            return None
        with self._lock:
            self._unreadable.discard(key)
        return record

    def write_record(self, key: str, record: dict[str, Any]) -> None:
        write_atomically(self.study_dir(key) / RECORD_FILE, json.dumps(record, indent=1).encode())

    def update_record(self, key: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, `change` and write a study's record as one step: the processing and the sending threads both
        write records, and neither may undo what the other just wrote. Returns the record as written."""
        with self._record_lock:
            record = self.read_record(key)
            change(record)
            self.write_record(key, record)
            return record

    def save_results(self, key: str, run_id: str, datasets: Sequence[Dataset]) -> list[Path]:
        """Write a run's results into a folder of their own; a write that fails (a full disk) leaves no folder."""
        directory = self.study_dir(key) / "results" / run_id
        directory.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        written = 0
        try:
            for index, dataset in enumerate(datasets):
                path = directory / f"{index:02d}_{dataset.Modality}.dcm"
                data = part10_bytes(dataset)
                write_atomically(path, data)
                written += self.disk_bytes(len(data))
                paths.append(path)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        with self._size_lock:
            self._size += written
        return paths

    def discard_results(self, key: str, run_id: str) -> None:
        """Remove a run's results that its record never took (the record could not be written)."""
        self._remove_tree(self.study_dir(key) / "results" / run_id)

    def mark_receiving(self, key: str) -> None:
        self._marker(RECEIVING_DIR, key).touch()

    def clear_receiving(self, key: str) -> None:
        self._marker(RECEIVING_DIR, key).unlink(missing_ok=True)

    def studies_left_receiving(self) -> list[str]:
        """Keys of the studies an association was storing when the node last stopped without closing it."""
        return sorted(marker.name for marker in (self.root / RECEIVING_DIR).iterdir())

    def mark_unsent(self, key: str) -> None:
        """Mark a study's results waiting for a destination, as of now: it is marked when a run with results is made,
        whose results supersede every earlier run's still waiting (`supersede_undelivered`), so the marker's time is
        when the results now waiting were made (or, for results found waiting without a marker at start, that start).
        """
        self._stamp(UNSENT_DIR, key)

    def is_unsent(self, key: str) -> bool:
        return self._marker(UNSENT_DIR, key).exists()

    def unsent_studies(self) -> list[str]:
        """Keys of the studies with results a destination still lacks, in key order."""
        return sorted(marker.name for marker in (self.root / UNSENT_DIR).iterdir())

    def oldest_unsent_since(self) -> float | None:
        """When the results waiting longest for a destination were made (their study's unsent marker), or None when
        every result was delivered. A stat per study waiting: cheap enough for every scrape."""
        times = []
        for marker in (self.root / UNSENT_DIR).iterdir():
            try:
                times.append(marker.stat().st_mtime)
            except FileNotFoundError:  # delivered meanwhile
                continue
        return min(times, default=None)

    def clear_unsent_if_all_sent(self, key: str) -> None:
        """Remove the study's unsent marker once its record has nothing left to send.

        Under the record lock: a run appended meanwhile (marked first, see `DicomNode`) keeps its marker.
        """
        with self._record_lock:
            if not results_waiting(self.read_record(key)):
                self._marker(UNSENT_DIR, key).unlink(missing_ok=True)

    def purge_expired(self, now: float) -> list[str]:
        """Remove what settled studies (nothing pending, nothing left to send) no longer need; return their keys.

        Counted from the record's last change (the last run or delivery): after `retention_seconds` the instances,
        results and incoming rejection notes go (the notes carry the patient's name and IDs, and kept a year they let
        one sender hold spool space for a year; the UIDs they rejected stay in `rejected.json`),
        after `record_retention_seconds` the study's folder with its record (the same instances sent again are then
        analysed as a new study). A study of rejection notes alone, never analysed, goes whole after
        `retention_seconds`: the instances its notes rejected, if they come later, are then taken.
        """
        purged = []
        for directory in sorted((self.root / "studies").iterdir()):
            key = directory.name
            settled_for = self._settled_for(key, now)
            if settled_for < self.limits.retention_seconds:
                continue
            parts = [
                directory / part
                for part in ("instances", "results", REJECTION_NOTES_DIR)
                if (directory / part).exists()
            ]
            if settled_for >= self.limits.record_retention_seconds or self._never_analysed(key):
                # A study of rejection notes alone, whose instances never came, goes whole with its notes: its
                # `rejected.json` (up to 790 KB for a note naming 10,000 made-up instances) is not counted in the
                # spool's size and would otherwise stay a year, also once its notes have gone.
                parts = [directory]
            if not parts:
                continue
            with self._size_lock:  # no instance is stored meanwhile
                if self._marker(PENDING_DIR, key).exists():
                    continue
                for part in parts:
                    self._remove_tree(part)
                if parts == [directory]:
                    self._forget_study_uid(key)
                self._instances.pop(key, None)
            purged.append(key)
        return purged

    def _never_analysed(self, key: str) -> bool:
        """Whether a study holds rejected UIDs and nothing else: no instance, no result, no run in its record
        (rejection notes alone came). The record is read only for a study that holds rejected UIDs and no instance or
        result folder, so the hourly purge does not read every record."""
        directory = self.study_dir(key)
        if not (directory / REJECTED_FILE).exists() or any(
            (directory / part).exists() for part in ("instances", "results")
        ):
            return False
        record = self.readable_record(key)
        return record is not None and not record["runs"]

    def remove_unrecorded_results(self) -> list[Path]:
        """Remove the result folders no run of their study's record names, and return them: a node killed between
        writing a run's results and its record leaves them, counted in the spool's size until the study is purged;
        the study is analysed again, into a folder of its own. For the node's start,
        before anything writes results; a study whose record cannot be read keeps its folders."""
        removed = []
        for results in sorted((self.root / "studies").glob("*/results")):
            record = self.readable_record(results.parent.name)
            if record is None or not results.is_dir():
                continue
            recorded = {run.get("run_id") for run in record["runs"]}
            for folder in sorted(results.iterdir()):
                if not folder.is_dir() or folder.name in recorded:
                    continue
                with contextlib.suppress(OSError):  # left for the study's purge, as before
                    self._remove_tree(folder)
                    removed.append(folder)
        return removed

    def _settled_for(self, key: str, now: float) -> float:
        """Seconds since the record of a settled study last changed; 0 for a study pending, unsent or unrecorded.

        The record's age first: most studies are younger than the retention, and need no look at the markers.
        """
        try:
            age = now - (self.study_dir(key) / RECORD_FILE).stat().st_mtime
        except FileNotFoundError:
            return 0.0
        if age < self.limits.retention_seconds or self._marker(PENDING_DIR, key).exists() or self.is_unsent(key):
            return 0.0
        return age

    def _remove_tree(self, directory: Path) -> None:
        if not directory.exists():
            return
        freed = sum(self.disk_bytes(path.stat().st_size) for path in directory.rglob("*.dcm") if path.is_file())
        shutil.rmtree(directory)
        with self._size_lock:
            self._size -= freed

    def log_sent(self, entry: dict[str, Any]) -> None:
        """Append `entry` to `sent.jsonl`, on disk before this returns. A last line that a node killed mid-write left
        without its newline is ended first: this entry was written onto it, and both were lost to a reader."""
        line = json.dumps(entry).encode() + b"\n"
        with self._lock, open(self.root / SENT_LOG, "a+b") as handle:
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)  # appended whatever the position: the file is open for appending
            handle.flush()
            os.fsync(handle.fileno())

    def sent_log(self) -> list[dict[str, Any]]:
        """What `sent.jsonl` says was sent, oldest first, without a line a node killed mid-write left torn. Read by
        the tests only: no command of the node reads it."""
        path = self.root / SENT_LOG
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries


def results_waiting(record: dict[str, Any]) -> bool:
    """Whether any run of a study's record has results a destination still lacks (and is still to be sent them)."""
    return any(
        state.get("status") in WAITING_STATUSES for run in record["runs"] for state in run.get("sent", {}).values()
    )


def timestamp() -> str:
    """When, in the records: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
