"""`brain-tumor dicom-node`: a DICOM node (pynetdicom) that PACS and scanners send MR studies to by C-STORE.

How a study flows through it:

1. **Receive.** The node answers C-ECHO and C-STORE for MR storage classes (and the greyscale Secondary Captures the
   service reads) in the common transfer syntaxes, and takes (Success) without keeping every other object of a study
   (SEG, SR, presentation states, vendors' private objects, other modalities, colour screen saves...:
   `NOT_KEPT_CLASSES`, `InstanceNotKeptError`; these tables are in `app.node.dicom_received_instance`), so that a
   whole study forwarded by a router arrives. An MR object must say Modality MR. Only calling AE titles in
   `allowed_calling_ae_titles` may associate (when the list is set); others are rejected at association. Each
   instance is written to the spool (`app.node.dicom_spool.Spool`), flushed to disk and renamed into place *before*
   the C-STORE is answered with success, and the study is marked pending: a node killed mid-series has lost nothing
   it acknowledged, and a restarted node finds the pending studies on disk and gives each a fresh quiet period (their
   senders resume once it answers).
2. **Wait.** A study is complete once no instance of it arrived for `quiet_seconds` (scanners and routers send no
   end-of-study signal) and the associations that sent it have ended (up to `OPEN_ASSOCIATION_WAIT` quiet periods:
   an instance may still be on the wire); its quiet period starts again when the last of them ends. The pending
   marker's modification time is the last arrival, so this survives restarts. A study left by an association that
   ended without a release (aborted, cut off) says so in its report's notes.
3. **Process once.** The study's files go to the injected `StudyProcessor` (`app.study_analysis`). The set of
   instances and their content is fingerprinted: a second send of the same instances finds its fingerprint already
   analysed (by the same model versions: after a model upgrade it is analysed again, and the new results supersede
   the old as below) and produces nothing new, in whatever transfer syntax they come (`app.dicom.instance_content`; an
   instance sent again with other content under the same SOP Instance UID is analysed again); an instance that
   arrives later changes the fingerprint, so the study is processed again and the new results supersede the old
   ones (a new SEG and SR series, same series numbers 9901/9902; the new SR names the one it replaces in its
   Predecessor Documents Sequence). A study that "failed" or was "not_analysed"
   is processed once more when any of its instances is sent again (after, say, a fix to the memory budget or the
   sequence rules); only a new C-STORE does that, so it never loops. A study whose ``record.json`` cannot be read
   is skipped (logged once), and the other studies go on.
4. **Send.** The results are saved in the spool and marked unsent; one thread per destination sends them by C-STORE
   (`app.node.dicom_sender`), each retried with exponential backoff; a destination still failing is retried on later
   passes. Every attempt is appended to ``sent.jsonl`` (the record of what was sent: destination, SOP class, SOP
   Instance UID of the result, status). Each destination has its own thread so that a destination that hangs delays
   only its own deliveries, never the receiving, the processing, or the other destinations. Results still waiting
   for a destination taken out of ``DICOM_NODE_DESTINATIONS`` are dropped at start (logged, kept in the record as
   "dropped"), so they no longer keep the study from being purged; configured again before the purge, it gets them.
   The node's stop cuts a send in progress off and ends a backoff wait; results not delivered stay unsent, and go out
   after the restart (`ResultSender.stop`).
5. **Forget.** Instances and results of a study whose results were all delivered are removed after
   `SpoolLimits.retention_seconds`; its record stays until `SpoolLimits.record_retention_seconds`.

Defences against a sender that misbehaves: instances over the size limit (for a deflated one, once inflated), or
that would overfill the spool or the disk, or start one study too many waiting for analysis, are refused with Out of
Resources (`app.node.dicom_spool.SpoolLimits`); an instance over the size limit, or past the memory all associations
together may hold in instances being received (`NodeConfig.receive_memory_bytes`), is not even held while it
arrives (`_discard_oversized`). An instance is kept only if the service can read it
(`app.node.dicom_received_instance.checked_instance`: its header, its pixel data's length, the UIDs that name it,
matching the C-STORE request); others are refused with a status and an Error Comment that says why, and a log line
without patient data. A connection that does not associate within `association_timeout_seconds`, an association idle
that long, or a PDU that takes longer than that to arrive, is closed, so idle or trickling connections cannot hold the
node's `max_associations` slots for long; a PDU longer than `MAX_PDU_BYTES` closes its connection at once. One
address holds at most `max_associations_per_peer` associations, so a peer that keeps them busy cannot take them all
(these rules on connections are in `app.node.dicom_association`).

Logs name studies by a hash of their Patient ID and Study Instance UID (`app.node.dicom_spool.study_key`), never by
DICOM attributes.

This module holds the node itself: `DicomNode` (the association handlers that receive, the worker that processes,
the sender threads). The rest lives beside it:

- `app.node.node_config`: `NodeConfig`, the node's settings, checked;
- `app.node.dicom_received_instance`: what the node accepts (SOP classes, transfer syntaxes, statuses) and the check
  that keeps or refuses each instance received;
- `app.node.dicom_study_runs`: the runs in a study's record that decide whether it is processed again (step 3), and the
  count of associations that ended without a release;
- `app.node.dicom_spool`, `app.node.dicom_sender`, `app.node.dicom_association`: the spool on disk, the sending of
  results, the limits on connections and PDUs;
- `app.node.node_metrics`: the node's Prometheus metrics (counted here and in the sender; served by the command
  line on ``DICOM_NODE_METRICS_PORT``);
- `app.node.dicom_node_command`: the command line (``brain-tumor dicom-node``), which loads the models and runs the
  node.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from app.backoff import doubling_wait
from app.dicom.dicom_header import read_header
from app.dicom.dicom_sr import supersede_earlier_reports
from app.dicom.rejection_note import build_rejection_note
from app.errors import ServiceError
from app.logging_config import os_error_name
from app.node.dicom_association import CONNECTIONS_PER_ASSOCIATION, TimedAssociationServer
from app.node.dicom_received_instance import (
    NOT_KEPT_CLASSES,
    PRIVATE_IGNORED_CLASSES,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    DiscardedDataSet,
    InstanceNotKeptError,
    InstanceRefusedError,
    check_replacement_decodes,
    checked_instance,
    received_bytes,
    register_private_classes,
    uid,
)
from app.node.dicom_sender import STATUS_SUCCESS, Destination, ResultDelivery, ResultSender
from app.node.dicom_spool import InstanceTooLargeError, Spool, SpoolFullError, timestamp
from app.node.dicom_study_runs import (
    COUNTED_NOTES,
    already_analysed,
    answered,
    count_abort,
    count_refused,
    counted_notes,
    delivered_results,
    earlier_reports,
    errors_since_last_outcome,
    references,
    reports,
    supersede_undelivered,
)
from app.node.node_config import NodeConfig
from app.node.node_metrics import NodeMetrics
from app.study_analysis import (
    AnalysisStatus,
    StudyAnalysis,
    StudyProcessor,
    error_code,
    series_in_several_studies,
    split_by_patient_id,
)

logger = logging.getLogger(__name__)


class NodeStartError(OSError):
    """The node cannot listen where it is told to; the message names the address."""

    @classmethod
    def of(cls, host: str, port: int, error: OSError) -> NodeStartError:
        """The error for `error`, met listening on `host`:`port`."""
        return cls(f"cannot listen on {host}:{port}: {error.strerror or error}")


def check_address(host: str, port: int) -> None:
    """Bind a socket to `host`:`port` as the node's server will, and let it go: the command line asks this before
    TensorFlow and the models load (10-50 s), so that a port in use or a host that is not this machine's is said at
    once (it was after 56 s). The node binds it for good once the models are loaded.

    Raises
    ------
    NodeStartError
        The port is in use or not ours to take, or the host does not resolve or is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as pynetdicom chooses
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: TIME_WAIT is no obstacle
            probe.bind((host, port))
    except OSError as error:
        raise NodeStartError.of(host, port, error) from error


ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is an LO
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE request's command set is a few hundred bytes
# The longest PDU a connection may send. The node announces pynetdicom's 16382 bytes as its maximum PDU length, so a
# conforming sender's P-DATA-TF PDUs are no longer, and an association request is tens of KiB. pynetdicom reads a PDU
# whole before `_discard_oversized` sees it: with PDUs as long as an instance (the limit before), a sender that ignored
# the announced length sent each data set as one PDU, past the receive-memory bound (attack review 31: 6 instances of
# 32 MiB held at once, +508 MiB, under a 40 MiB bound), and any connection, before its AE titles were checked, could
# make the node read a 128 MiB association request. 64 times the announced length leaves room for lax senders.
MAX_PDU_BYTES = 1024 * 1024
PURGE_EVERY_SECONDS = 3600.0  # retention is set in hours; the walk reads every study folder
RECEIVE_MEMORY_FULL = "the node is receiving too much at once; retry later"
OPEN_ASSOCIATION_WAIT = 10  # quiet periods a study waits for an association that sent part of it to end
UNWRITABLE_MOST_SECONDS = 1800.0  # longest wait before a study whose results the spool could not take is tried again
IDLE_SHARE = 0.9  # an association closed this share of the association timeout after its last instance was idle


class DicomNode:
    """The node: a C-STORE SCP that spools, a worker that processes quiet studies, a sender that sends results.

    `process_ready`, `send_unsent` and `purge_expired` are one step each of the background threads, public so that
    tests (and a caller that wants its own loop) can drive them with their own clock.
    """

    def __init__(
        self,
        config: NodeConfig,
        processor: StudyProcessor,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        """`sleep` waits between a send's retries; by default on the stop event, so that `stop` ends the wait.
        `metrics` (by default its own) counts what the node does; the command line serves them."""
        self.config = config
        self.processor = processor
        # The model versions of every run's results, fixed at the start as the models are loaded once: a study
        # whose latest outcome other versions made is analysed again when sent again (durability review 45 F6).
        self.model_tags = dict(processor.model_tags)
        self.clock = clock
        self.spool = Spool(config.spool_dir, clock=clock, limits=config.spool_limits)
        self.metrics = metrics or NodeMetrics(str(destination) for destination in config.destinations)
        self.metrics.watch_spool(
            pending=lambda: len(self.spool.pending_studies()),
            unsent=lambda: len(self.spool.unsent_studies()),
            spool_bytes=lambda: self.spool.size_bytes,
            oldest_unsent_age=self._oldest_unsent_age,
        )
        self._stop = threading.Event()
        self.sender = ResultSender(
            config.ae_title,
            config.send_retries,
            config.send_backoff_seconds,
            sleep,
            config.send_timeout_seconds,
            stopping=self._stop,
        )
        self.delivery = ResultDelivery(self.spool, self.sender, config.destinations, clock, self.metrics)
        self._server: Any = None
        # Held while an analysis's outcome is written to the spool: `stop` waits for a write in progress, and an
        # analysis it stopped waiting for (`_abandoned`) writes nothing, so the study is simply still pending.
        self._writing = threading.Lock()
        self._abandoned = False
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0
        # Study -> analyses in a row whose results the spool could not take (a full disk), and when to try again:
        # kept in memory, since the record cannot be written either.
        self._unwritable: dict[str, tuple[int, float]] = {}
        # What each open association has sent: a study is not processed while one is still open (a slow link, a
        # large instance on the wire), and its quiet period starts when the last one ends.
        self._open: dict[Any, _Sending] = {}
        # Associations whose connection has closed: a C-STORE handler still writing when its peer aborts finishes
        # after the close event, and must not leave its study waiting on an association that is gone.
        self._closed: weakref.WeakSet[Any] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        # Study -> the SOP Instance UIDs released associations stored since one of its associations was cut off
        # (`_forget_cut_off`); a new set at each cut-off.
        self._resent_after_cut_off: dict[str, set[str]] = {}
        # Bytes of the instance each association is receiving (or has received and not yet stored): pynetdicom holds
        # each whole in memory, so all of them together are held to `receive_memory_bytes`.
        self._receiving: dict[Any, int] = {}
        self._receiving_lock = threading.Lock()

    # -- receiving -------------------------------------------------------------------------------------------

    def start(self, worker: bool = True) -> None:
        """Listen (in pynetdicom's threads) and, with `worker`, process and send in background threads."""
        self._stop.clear()
        self._abandoned = False
        self._count_cut_off_associations()
        for folder in self.spool.remove_unrecorded_results():
            logger.info(
                "results that no run recorded removed (the node stopped before it recorded them)",
                extra={"fields": {"study_key": folder.parent.parent.name, "run_id": folder.name}},
            )
        for key in self.spool.pending_studies():
            # Studies left pending by the last run: their senders were cut off by the stop and retry once the node
            # answers again, so each gets a fresh quiet period rather than being processed half-received.
            self.spool.touch_pending(key)
        self.delivery.restore_unsent_markers()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        # The ARTIM timer (a connection that sends no association request) and the idle timer of an association.
        ae.acse_timeout = ae.network_timeout = self.config.association_timeout_seconds
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        register_private_classes()
        for sop_class in sorted(NOT_KEPT_CLASSES):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)  # never decoded
        if self.config.allowed_calling_ae_titles:
            ae.require_calling_aet = list(self.config.allowed_calling_ae_titles)
        else:
            logger.warning("the DICOM node accepts any calling AE title (DICOM_NODE_ALLOWED_CALLING_AE_TITLES unset)")
        room_problem = self.spool.room_problem()
        if room_problem is not None:
            logger.warning(room_problem)
        if not self.config.destinations:
            logger.warning(
                "the DICOM node has no destination (DICOM_NODE_DESTINATIONS unset): results stay in the spool"
            )
        ae.require_called_aet = True  # refuse associations addressed to another AE title
        handlers = [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_ACCEPTED, _log_refused_contexts),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_PDU_RECV, self._discard_oversized),
            (evt.EVT_RELEASED, self._note_release),
            (evt.EVT_CONN_CLOSE, self._end_association),
        ]
        try:
            self._server = ae.make_server(
                (self.config.host, self.config.port),
                evt_handlers=handlers,
                server_class=TimedAssociationServer,
                receive_timeout=self.config.association_timeout_seconds,
                max_pdu_bytes=MAX_PDU_BYTES,
                max_per_peer=self.config.max_associations_per_peer,
                max_connections=CONNECTIONS_PER_ASSOCIATION * self.config.max_associations,
            )
        except OSError as error:  # an unknown host name, an address of another machine, a port in use
            raise NodeStartError.of(self.config.host, self.config.port, error) from error
        threading.Thread(target=self._server.serve_forever, name="dicom-node-server", daemon=True).start()
        logger.info(
            "DICOM node listening",
            extra={"fields": {"host": self.config.host, "port": self.config.port, "ae_title": self.config.ae_title}},
        )
        if worker:
            self._threads = [
                threading.Thread(target=self._loop, args=(step,), name=f"dicom-node-{name}", daemon=True)
                for name, step in self._background_steps()
            ]
            for thread in self._threads:
                thread.start()

    def _background_steps(self) -> list[tuple[str, Callable[[], object]]]:
        """The worker (process, purge), and one sender per destination: a destination that hangs until the send
        timeout, or backs off between retries, holds up no other destination's deliveries."""
        senders = [
            (f"sender-{index}", functools.partial(self.send_unsent, (destination,)))
            for index, destination in enumerate(self.config.destinations)
        ]
        return [("worker", self._process_and_purge), *senders]

    def stop(self) -> None:
        """Stop within `NodeConfig.stop_seconds`, losing nothing: no study or send starts, sends in progress are cut
        off (their results stay pending in the spool), and an analysis in progress is waited for until then, after
        which it is abandoned (the study stays pending, and is analysed once after the restart). SIGTERM had taken
        8 s idle, 28 s during an analysis, 67 s with a destination that never answered (operations review 28,
        finding 9)."""
        self.sender.stop()  # sets `_stop`, which the background threads and the sends watch
        deadline = time.monotonic() + self.config.stop_seconds
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._writing:  # an outcome being written is finished; none is written from now on
            self._abandoned = True
        self._threads = []
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _handle_store(self, event: Any) -> int | Dataset:
        """Keep one instance (`checked_instance`) and answer Success, or refuse it with a status and a comment."""
        try:
            return self._store(event)
        finally:  # stored or refused: its bytes are no longer the node's to hold
            with self._receiving_lock:
                self._receiving.pop(event.assoc, None)

    def _store(self, event: Any) -> int | Dataset:
        request = event.request
        if isinstance(request.DataSet, DiscardedDataSet) and request.DataSet.reason is not None:
            return self._refused("receive_memory", STATUS_OUT_OF_RESOURCES, request.DataSet.reason)
        context_class = str(event.context.abstract_syntax)
        if uid(request.AffectedSOPClassUID) != context_class:  # pynetdicom does not check it
            return self._refused(
                "sop_class_mismatch", STATUS_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID is not its presentation context's"
            )
        if context_class in NOT_KEPT_CLASSES:
            logger.info(
                "instance ignored: not an image the models read",
                extra={"fields": {"sop_class": PRIVATE_IGNORED_CLASSES.get(context_class, UID(context_class).name)}},
            )
            return STATUS_SUCCESS
        try:
            self.spool.check_room(received_bytes(request.DataSet))  # before copying it once more
            data = event.encoded_dataset(include_meta=True)  # as sent: preamble, file meta, the undecoded dataset
            instance = checked_instance(
                data,
                str(request.AffectedSOPClassUID or ""),
                str(request.AffectedSOPInstanceUID or ""),
                self.config.spool_limits.max_instance_bytes,
            )
            if self.spool.holds_instance(instance.study_uid, instance.patient_id, instance.sop_instance_uid):
                check_replacement_decodes(data, self.config.spool_limits.max_instance_bytes)
            key = self.spool.store_instance(
                instance.study_uid, instance.patient_id, instance.sop_instance_uid, data, instance.series_uid
            )
        except InstanceTooLargeError as error:
            return self._refused("too_large", STATUS_OUT_OF_RESOURCES, str(error), event.assoc)
        except SpoolFullError as error:
            return self._refused("spool_full", STATUS_OUT_OF_RESOURCES, str(error), event.assoc)
        except InstanceNotKeptError as error:
            logger.info("instance ignored: not an image the models read", extra={"fields": {"reason": str(error)}})
            return STATUS_SUCCESS
        except InstanceRefusedError as error:
            return self._refused("invalid_instance", error.status, str(error), event.assoc)
        except OSError:
            logger.exception("instance not stored")
            return self._refused("spool_error", STATUS_OUT_OF_RESOURCES, "the node cannot write its spool", event.assoc)
        with self._open_lock:
            closed = event.assoc in self._closed
            if not closed:
                sending = self._open.setdefault(event.assoc, _Sending())
                if key not in sending.studies:  # on disk too: a node that dies now leaves the study cut off
                    self._mark_receiving(key, True)
                sending.studies.add(key)
                sending.instances.setdefault(key, set()).add(instance.sop_instance_uid)
                sending.last_store = time.monotonic()
        if closed:  # the peer aborted while this instance was being written
            self._studies_sent({key}, aborted=True)
        logger.debug("instance stored", extra={"fields": {"study_key": key}})
        self.metrics.instances_received.inc()
        return STATUS_SUCCESS

    def _refused(self, kind: str, status: int, reason: str, association: Any = None) -> Dataset:
        """`_refusal`, counted under `kind` (one of `node_metrics.REFUSAL_REASONS`: the reason itself is free text),
        and for the `association`: the studies it sends are then reported as possibly missing instances."""
        self.metrics.instances_refused.labels(reason=kind).inc()
        if association is not None:
            with self._open_lock:
                if association not in self._closed:
                    self._open.setdefault(association, _Sending()).refused += 1
        return _refusal(status, reason)

    def _note_release(self, event: Any) -> None:
        """EVT_RELEASED: the sender ended the association as the standard asks, so it sent all it meant to."""
        with self._open_lock:
            if event.assoc in self._open:
                self._open[event.assoc].released = True

    def _count_cut_off_associations(self) -> None:
        """Studies an association was storing when the node died (no close event ran): counted as an association
        that ended without a release, so their report says instances may be missing (attack finding: a study cut
        off by a crash was reported as complete, the same cut-off by an abort was not)."""
        for key in self.spool.studies_left_receiving():
            self._resent_after_cut_off[key] = set()
            try:
                self.spool.update_record(key, count_abort)
            except Exception:  # a spool file gone or unwritable: the study is still processed, without the note
                logger.exception("association cut off by a stop not recorded", extra={"fields": {"study_key": key}})
            else:
                logger.warning(
                    "a study was being received when the node stopped; its report will say instances may be missing",
                    extra={"fields": {"study_key": key}},
                )
            self.spool.clear_receiving(key)

    def _end_association(self, event: Any) -> None:
        """EVT_CONN_CLOSE: the studies this association stored instances of start their quiet period now. One that
        ended without a release (aborted by the sender, by the node for idling, its connection lost) may have sent
        part of what was meant: that is recorded, for the report's notes."""
        with self._receiving_lock:
            self._receiving.pop(event.assoc, None)
        with self._open_lock:
            self._closed.add(event.assoc)
            sending = self._open.get(event.assoc, _Sending())
            idle = time.monotonic() - sending.last_store
            # Closed by the node after an idle timeout: a router that leaves its association open had sent it all.
            aborted = not sending.released and idle < IDLE_SHARE * self.config.association_timeout_seconds
        try:
            # While they still count as receiving: none is processed.
            if not aborted:
                self._forget_cut_off(sending)
            self._studies_sent(sending.studies, aborted, sending.refused)
        finally:
            with self._open_lock:
                self._open.pop(event.assoc, None)
                still_receiving = {key for other in self._open.values() for key in other.studies}
                for key in sending.studies - still_receiving:
                    self._mark_receiving(key, False)

    def _forget_cut_off(self, sending: _Sending) -> None:
        """After a released association: a study cut off earlier (`count_abort`) whose every instance the spool holds
        has come again since over released associations no longer counts the cut-off associations, so its report
        is not PARTIAL (durability review 45 F5: a study re-sent whole after a node crash was reported "instances may
        be missing" for good). Instances the cut-off association alone sent keep the count, and so does an abort
        counted meanwhile (it starts a new set in `_resent_after_cut_off`)."""
        for key, sop_instance_uids in sending.instances.items():
            with self._open_lock:
                tracked = self._resent_after_cut_off.get(key)
                if tracked is None:
                    continue
                tracked |= sop_instance_uids
                resent = set(tracked)

            def forget(record: dict[str, Any], key: str = key, tracked: set[str] = tracked) -> None:
                with self._open_lock:
                    if self._resent_after_cut_off.get(key) is not tracked:
                        return
                    del self._resent_after_cut_off[key]
                record.pop("aborted_associations", None)

            try:
                if self.spool.holds_only(key, resent):
                    self.spool.update_record(key, forget)
            except Exception:  # a spool file gone or unwritable: the count stays, and the report says PARTIAL
                logger.exception("a study sent again whole not recorded", extra={"fields": {"study_key": key}})
                continue
            if key not in self._resent_after_cut_off:
                logger.info(
                    "a study cut off earlier came again whole over released associations; its report will not say "
                    "instances may be missing",
                    extra={"fields": {"study_key": key}},
                )

    def _mark_receiving(self, key: str, receiving: bool) -> None:
        """The study's receiving marker set or cleared; a spool that cannot take it only loses the note a crash
        would add."""
        try:
            if receiving:
                self.spool.mark_receiving(key)
            else:
                self.spool.clear_receiving(key)
        except OSError as error:
            logger.warning(
                "receiving marker not written", extra={"fields": {"study_key": key, "error": os_error_name(error)}}
            )

    def _studies_sent(self, keys: set[str], aborted: bool, refused: int = 0) -> None:
        """Start the quiet period of studies an association has finished sending, recording an abort and the
        instances it had refused."""
        try:
            for key in keys:
                if aborted:
                    with self._open_lock:
                        self._resent_after_cut_off[key] = set()
                    self.spool.update_record(key, count_abort)
                if refused:
                    self.spool.update_record(key, count_refused(refused))
                self.spool.touch_pending(key)
        except Exception:  # a spool file gone or unwritable: the study is still processed, without the note
            logger.exception("association end not recorded")

    def studies_receiving(self) -> set[str]:
        """The studies an open association has stored instances of: not processed yet (`_quiet`)."""
        with self._open_lock:
            return {key for sending in self._open.values() for key in sending.studies}

    def _discard_oversized(self, event: Any) -> None:
        """EVT_PDU_RECV: once the message being received is over the instance limit, or the instances all
        associations are receiving are over `receive_memory_bytes`, drop its data set as it arrives.

        pynetdicom holds a message whole in memory until its last fragment, and the limit could only be checked then:
        a sender could make the node hold any amount, and many associations at once many times that. This runs in the
        association's reader thread before the PDU's fragments join the message; the request is then refused
        (`_handle_store`) once its last fragment is in.
        """
        message = event.assoc.dimse.message
        if message is None:  # the PDU starts a message: bounded by the PDU limit (`GuardedConnection`)
            return
        if message.encoded_command_set.tell() > MAX_COMMAND_BYTES:
            logger.warning("association aborted", extra={"fields": {"reason": "a command set over 64 KiB"}})
            event.assoc.abort()
            return
        data_set = message.data_set
        if isinstance(data_set, DiscardedDataSet):
            return
        size = data_set.tell()
        with self._receiving_lock:
            self._receiving[event.assoc] = size
            held = sum(self._receiving.values())
            if size > self.config.spool_limits.max_instance_bytes:
                message.data_set = DiscardedDataSet(size)
            elif held > self.config.receive_memory_bytes:
                message.data_set = DiscardedDataSet(size, reason=RECEIVE_MEMORY_FULL)
            else:
                return
            del self._receiving[event.assoc]  # dropped: it holds nothing more

    # -- processing ------------------------------------------------------------------------------------------

    def _loop(self, step: Callable[[], object]) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                step()
            except Exception:  # a bug must not stop the node receiving; logged with its traceback
                logger.exception("DICOM node pass failed")

    def _process_and_purge(self) -> None:
        self.process_ready()
        if self.clock() - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = self.clock()
            self.purge_expired()

    def purge_expired(self) -> list[str]:
        """Remove instances and results of studies delivered `retention_seconds` ago; return their keys."""
        purged = self.spool.purge_expired(self.clock())
        if purged:
            logger.info("expired studies removed from the spool", extra={"fields": {"studies": len(purged)}})
        return purged

    def process_ready(self) -> list[str]:
        """Process every study quiet for `quiet_seconds`; return the keys of the studies processed anew.

        One study's problem (an unreadable record, an instance file gone) skips that study only: the others are
        processed in the same pass.
        """
        processed: list[str] = []
        for key, _ in sorted(self.spool.pending_studies().items(), key=lambda item: item[1]):
            if self._stop.is_set():  # the other studies wait for the restart
                break
            # Asked again for each study: processing the one before may have taken minutes, and new instances and
            # associations came meanwhile.
            last_arrival = self.spool.pending_since(key)
            if last_arrival is None or not self._quiet(key, last_arrival) or self._waits_for_room(key):
                continue
            try:
                if self._process_study(key, last_arrival):
                    processed.append(key)
            except Exception:  # a bug or a broken spool file: retried after another quiet period, not every pass
                logger.exception("study not processed", extra={"fields": {"study_key": key}})
                self.spool.touch_pending(key)
        self.metrics.last_pass.set(self.clock())
        return processed

    def _quiet(self, key: str, last_arrival: float) -> bool:
        """Whether a study is ready: no instance for `quiet_seconds`, and no association that sent part of it still
        open (an instance of it may be on the wire), unless one has held it `OPEN_ASSOCIATION_WAIT` quiet periods
        (a router that never releases)."""
        quiet_for = self.clock() - last_arrival
        if quiet_for < self.config.quiet_seconds:
            return False
        return key not in self.studies_receiving() or quiet_for >= OPEN_ASSOCIATION_WAIT * self.config.quiet_seconds

    def _process_study(self, key: str, last_arrival: float) -> bool:
        record = self.spool.readable_record(key)  # first: a study skipped for its record costs no hashing
        if record is None:  # logged by the spool; stays pending, so a repaired record is processed
            return False
        files = self.spool.instance_files(key)
        fingerprint, bytes_fingerprint = self.spool.fingerprints(files)
        runs = record["runs"]
        split = self.spool.studies_split_by_patient_id(key)
        sharing = [] if split else self.spool.studies_sharing_a_series(key)
        # The same instances again: nothing new to say, unless another part of the study came meanwhile and the
        # result standing for these is now wrong for the whole (attack review 43 F5), or other models made it.
        if already_analysed(runs, fingerprint, self.model_tags, bytes_fingerprint) and not (split or sharing):
            logger.info("study unchanged since last processed", extra={"fields": {"study_key": key}})
            if any(record.get(name) for name in COUNTED_NOTES):  # brought nothing new: no note for a later run
                self.spool.update_record(key, _without_counts)
            self.spool.clear_pending(key, last_arrival)
            return False
        attempts = errors_since_last_outcome(runs, fingerprint)
        run: dict[str, Any] = {
            "run_id": datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8],
            "fingerprint": fingerprint,
            "instances": len(files),
            "models": self.model_tags,
            "started_at": timestamp(),
        }
        counts = {name: int(record.get(name, 0)) for name in COUNTED_NOTES}
        analysis: StudyAnalysis | Exception
        if split or sharing:
            refuse = split_by_patient_id if split else series_in_several_studies
            analysis = refuse(len(split or sharing) + 1, {"files": len(files)})
            self._reopen_answered(split or sharing)
        else:
            try:
                analysis = self.processor(files, counted_notes(counts), complete=not any(counts.values()))
            except Exception as error:  # a bug or a resource problem: retried after another quiet period
                logger.exception("study processing failed", extra={"fields": {"study_key": key}})
                analysis = error
        with self._writing:
            if self._abandoned:  # the stop did not wait for this analysis: nothing of it is kept
                logger.info(
                    "analysis abandoned by the stop; done after the restart", extra={"fields": {"study_key": key}}
                )
                return False
            return self._keep_outcome(key, record, run, analysis, counts, attempts, last_arrival)

    def _reopen_answered(self, keys: list[str]) -> None:
        """Mark pending the studies of `keys` (other parts of a study found split) whose latest outcome is a result:
        analysed again, they are refused too and their results withdrawn. Why: a part that came after the other was
        answered left that answer standing, an "absent" SR for the tumor-free half (attack review 43 F5). A study
        already refused is not marked again, so two parts do not reopen each other without end."""
        for key in keys:
            record = self.spool.readable_record(key)
            if record is not None and answered(record["runs"]) and self.spool.pending_since(key) is None:
                self.spool.touch_pending(key)

    def _keep_outcome(
        self,
        key: str,
        record: dict[str, Any],
        run: dict[str, Any],
        analysis: StudyAnalysis | Exception,
        counts: dict[str, int],
        attempts: int,
        last_arrival: float,
    ) -> bool:
        """Write an analysis's outcome (or its error) to the spool; True if it has results."""
        if isinstance(analysis, Exception):
            self.metrics.studies_analysed.labels(outcome="failed").inc()
            self.metrics.studies_failed.labels(error="internal").inc()
            run.update(status="error", error=type(analysis).__name__, finished_at=timestamp())
            self.spool.update_record(key, lambda stored: stored["runs"].append(run))
            if attempts + 1 < self.config.max_attempts:
                self.spool.touch_pending(key)
            else:
                self.spool.clear_pending(key, last_arrival)
            return False
        try:
            self._record_analysis(key, record, run, analysis, counts)
        except OSError as error:
            self._results_not_written(key, run, error)
            return False
        self._unwritable.pop(key, None)
        self.metrics.studies_analysed.labels(outcome=_outcome(analysis)).inc()
        if analysis.status == AnalysisStatus.FAILED:  # interop review 39: a refused study showed no reason here
            self.metrics.studies_failed.labels(error=error_code(analysis.reason) or "unknown").inc()
        self.spool.clear_pending(key, last_arrival)
        return True

    def _waits_for_room(self, key: str) -> bool:
        _, until = self._unwritable.get(key, (0, 0.0))
        return until > self.clock()

    def _results_not_written(self, key: str, run: dict[str, Any], error: OSError) -> None:
        """The spool could not take a run's results or its record (a full disk, a read-only remount): nothing of the
        run is kept, and the study is analysed again after a wait that doubles (attack finding: it was analysed
        again every quiet period, each time leaving an empty results folder)."""
        self.spool.discard_results(key, run["run_id"])
        failures = self._unwritable.get(key, (0, 0.0))[0] + 1
        wait = doubling_wait(self.config.quiet_seconds, failures, most_seconds=UNWRITABLE_MOST_SECONDS)
        self._unwritable[key] = (failures, self.clock() + wait)
        logger.warning(
            "the study's results could not be written to the spool; it is analysed again after a wait",
            extra={"fields": {"study_key": key, "error": os_error_name(error), "retry_in_seconds": round(wait)}},
        )
        self.spool.touch_pending(key)

    def _record_analysis(
        self, key: str, record: dict[str, Any], run: dict[str, Any], analysis: StudyAnalysis, counts: dict[str, int]
    ) -> None:
        # The record as it is now, not as it was when the analysis began: results of an earlier run that reached a
        # destination meanwhile are what this run's report and rejection note must name (they were missed: the
        # destination kept them current).
        runs = (self.spool.readable_record(key) or record)["runs"]
        previous = next((item for item in reversed(runs) if item.get("results")), None)
        built_report_uid = str(analysis.datasets[-1].SOPInstanceUID) if analysis.datasets else None
        predecessors: list[dict[str, str]] = []
        if previous is not None and analysis.datasets:  # the report names the one it replaces; new UIDs for all
            predecessors = earlier_reports(runs, previous, built_report_uid)
            supersede_earlier_reports(analysis.datasets, reports(predecessors))
            note = self._rejection_note(key, runs, analysis.datasets)
            if note is not None:
                analysis.datasets.append(note)
        elif previous is not None and analysis.status == AnalysisStatus.FAILED and (header := self._study_header(key)):
            note = self._rejection_note(key, runs, [header])  # nothing is sent again: every result delivered
            if note is not None:
                analysis.datasets.append(note)
        results = self.spool.save_results(key, run["run_id"], analysis.datasets)
        run.update(
            status=analysis.status,
            reason=analysis.reason,
            summary=analysis.summary,
            results=[
                {
                    "file": path.name,
                    "modality": str(dataset.Modality),
                    "sop_class_uid": str(dataset.SOPClassUID),
                    "series_instance_uid": str(dataset.SeriesInstanceUID),
                    "sop_instance_uid": str(dataset.SOPInstanceUID),
                }
                for path, dataset in zip(results, analysis.datasets, strict=True)
            ],
            supersedes=previous["run_id"] if previous is not None and results else None,
            built_report_uid=built_report_uid,
            predecessors=predecessors,
            sent={str(destination): {"status": "pending", "attempts": 0} for destination in self.config.destinations}
            if results
            else {},
            finished_at=timestamp(),
        )

        # A refused study has no result: what earlier runs made, for instances that are not the study's now, is
        # withdrawn where delivered (the note above) and never sent where not (interop review 44 F2: a re-send that
        # could not be analysed left the earlier SEG and SR standing as the study's current result).
        withdrawn = (
            dict.fromkeys(map(str, self.config.destinations)) if analysis.status == AnalysisStatus.FAILED else {}
        )

        def append(stored: dict[str, Any]) -> None:
            if run["sent"]:  # marked before the record is written: a node stopped in between still sends them
                self.spool.mark_unsent(key)
            supersede_undelivered(stored["runs"], run["sent"] or withdrawn)
            stored["runs"].append(run)
            # Said in this run's notes; what was counted while it ran is left for the next run.
            for name, count in counts.items():
                left = int(stored.pop(name, 0)) - count
                if left > 0:
                    stored[name] = left

        self.spool.update_record(key, append)
        if withdrawn and not results:  # earlier results nobody got are not sent now: nothing waits
            self.spool.clear_unsent_if_all_sent(key)
        fields: dict[str, Any] = {"study_key": key, "status": analysis.status, "results": len(results)}
        if analysis.status == AnalysisStatus.FAILED and analysis.reason:
            fields["error"] = error_code(analysis.reason)  # a code, no value (interop review 39: none was logged)
        logger.info("study processed", extra={"fields": fields})

    def _study_header(self, key: str) -> Dataset | None:
        """The header of one of the study's instances, for the patient and study attributes of a rejection note made
        without a result of this run; None when none can be read (the note is not made, and that is logged)."""
        files = self.spool.instance_files(key)
        if files and (header := read_header(files[0])) is not None:
            return header
        logger.warning(
            "earlier results not rejected: no instance header readable", extra={"fields": {"study_key": key}}
        )
        return None

    def _rejection_note(self, key: str, runs: list[dict[str, Any]], datasets: list[Dataset]) -> Dataset | None:
        """The note that rejects the SEGs and SRs a destination stored from earlier `runs` that the new results
        (`datasets`) do not send again (`app.dicom.rejection_note`): C-STORE cannot delete them at the destination
        (interop review 37: a revision turned negative left the earlier SEG as the study's only one).

        Made from the record alone, so a correction after the purge rejects what was purged (review 38). The same
        findings as the latest run (a series the models do not read arrived) send its results again, and the same
        note. None when no destination stored anything that is not sent again."""
        sent_again = {str(dataset.SOPInstanceUID) for dataset in datasets}
        stale = [result for result in delivered_results(runs) if result["sop_instance_uid"] not in sent_again]
        if not stale:
            return None
        try:
            return build_rejection_note(references(stale), datasets[-1], {}, "dicom-node")
        except ServiceError as error:
            logger.warning(
                "earlier results not rejected: no rejection note made",
                extra={"fields": {"study_key": key, "error": type(error).__name__}},
            )
            return None

    # -- sending ---------------------------------------------------------------------------------------------

    def _oldest_unsent_age(self) -> float:
        """Seconds since the results waiting longest for a destination were made; 0 when none wait."""
        since = self.spool.oldest_unsent_since()
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def send_unsent(self, destinations: tuple[Destination, ...] | None = None) -> int:
        """Send each of `destinations` (default: all, one after the other) what it still lacks, once its backoff
        has passed; return runs tried. The sender threads call it for one destination each."""
        return self.delivery.send_unsent(destinations)


@dataclass
class _Sending:
    """What one open association has sent: the studies it stored instances of, when it last did, and whether it
    asked for a release."""

    studies: set[str] = field(default_factory=set)
    instances: dict[str, set[str]] = field(default_factory=dict)  # study -> SOP Instance UIDs stored
    last_store: float = 0.0  # time.monotonic()
    released: bool = False
    refused: int = 0  # instances it sent that the node refused


def _without_counts(record: dict[str, Any]) -> None:
    for name in COUNTED_NOTES:
        record.pop(name, None)


def _outcome(analysis: StudyAnalysis) -> str:
    """The `brain_tumor_node_studies_analysed` outcome: an analysed study is positive when a slice is."""
    if analysis.status == AnalysisStatus.ANALYSED:
        return "positive" if analysis.summary.get("positive_slices") else "negative"
    return str(analysis.status)


def _refusal(status: int, reason: str) -> Dataset:
    """The C-STORE answer that refuses an instance, with `reason` as its Error Comment; logged without DICOM values."""
    logger.warning("instance refused", extra={"fields": {"status": f"0x{status:04X}", "reason": reason}})
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = reason[:ERROR_COMMENT_LENGTH]
    return answer


def _handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def _log_refused_contexts(event: Any) -> None:
    """Say in one line which SOP classes (or their transfer syntaxes) an accepted association was refused: a sender
    that then sends a class the node does not take fails that send, and the node's log is where an administrator
    looks. INFO, not a warning per class: a PACS offers every class it stores, and dcmtk's storescu 14 for a series of
    MR (operations review: 14 of a run's 20 lines). A SOP Class UID is the standard's or a vendor's, never patient
    data, but a peer may send any text in its place ("Smith^John 1970", attack review 33): only well-formed UIDs are
    named, the rest counted."""
    classes_refused: set[str] = set()
    syntaxes_refused: dict[str, set[str]] = {}  # SOP class -> the transfer syntaxes proposed for it, none taken
    not_uids = 0
    for context in event.assoc.rejected_contexts:
        sop_class = UID(str(context.abstract_syntax))
        if not sop_class.is_valid:
            not_uids += 1
        elif context.result == 0x04:  # transfer syntaxes not supported
            proposed = {str(syntax) for syntax in context.transfer_syntax or [] if UID(str(syntax)).is_valid}
            syntaxes_refused.setdefault(str(sop_class), set()).update(proposed)
        else:
            classes_refused.add(str(sop_class))
    if classes_refused or syntaxes_refused or not_uids:
        fields: dict[str, object] = {}
        if classes_refused:
            fields["SOP class not supported"] = sorted(classes_refused)
        if syntaxes_refused:
            fields["transfer syntaxes not supported"] = {
                sop_class: sorted(syntaxes) for sop_class, syntaxes in sorted(syntaxes_refused.items())
            }
        if not_uids:
            fields["not a UID (not logged)"] = not_uids
        logger.info("presentation contexts refused", extra={"fields": fields})
