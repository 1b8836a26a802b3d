"""The DICOM node's receiving: the pynetdicom handlers that answer C-ECHO and C-STORE, and what they keep of each open
association, so that the worker (`app.node.dicom_study_worker`) processes no study an association is still sending
(`Receiver.studies_receiving`). How a study flows through the whole node is told in `app.node.dicom_node`.

Defences against a sender that misbehaves: instances over the size limit (for a deflated one, once inflated), or
that would overfill the spool or the disk, or start one study too many waiting for analysis, are refused with Out of
Resources (`app.node.dicom_spool.SpoolLimits`); an instance over the size limit, or past the memory all associations
together may hold in instances being received (`NodeConfig.receive_memory_bytes`), is not even held while it
arrives (`Receiver._discard_oversized`). An instance is kept only if the service can read it
(`app.node.dicom_received_instance.checked_instance`: its header, its pixel data's length, the UIDs that name it,
matching the C-STORE request); others are refused with a status and an Error Comment that says why, and a log line
without patient data. A connection that does not associate within `association_timeout_seconds`, an association idle
that long, or a PDU that takes longer than that to arrive, is closed, so idle or trickling connections cannot hold the
node's `max_associations` slots for long; a PDU longer than `MAX_PDU_BYTES` closes its connection at once. One
address holds at most `max_associations_per_peer` associations, so a peer that keeps them busy cannot take them all
(these rules on connections are in `app.node.dicom_association`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, KeyObjectSelectionDocumentStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification

from app.dicom.dicom_header import unpadded_uid
from app.dicom.incoming_rejection import (
    IncomingRejection,
    RejectionNoteTooLargeError,
    check_note_size,
    incoming_rejection,
    may_be_rejection_note,
    read_rejection_note,
)
from app.errors import UndecodableDicomError
from app.logging_config import os_error_name
from app.node.dicom_received_instance import (
    NOT_KEPT_CLASSES,
    PRIVATE_IGNORED_CLASSES,
    STATUS_CANNOT_UNDERSTAND,
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
    without_file_meta_elements,
)
from app.node.dicom_sender import STATUS_SUCCESS
from app.node.dicom_spool import (
    InstanceTooLargeError,
    Spool,
    SpoolFullError,
    UnreadableRejectionsError,
    study_key,
)
from app.node.dicom_study_runs import awaits_whole_resend, count_abort, count_refused, sent_whole_again
from app.node.node_config import NodeConfig
from app.node.node_metrics import NodeMetrics
from app.series.info import identity_text

# The node's logger: the receiving's lines keep the name the node's lines have always had, which logs are filtered by.
logger = logging.getLogger("app.node.dicom_node")

ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is an LO
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE request's command set is a few hundred bytes
# The longest PDU a connection may send. The node announces pynetdicom's 16382 bytes as its maximum PDU length, so a
# conforming sender's P-DATA-TF PDUs are no longer, and an association request is tens of KiB. pynetdicom reads a PDU
# whole before `_discard_oversized` sees it: with PDUs as long as an instance, a sender that ignores the announced
# length could send each data set as one PDU, past the receive-memory bound (6 instances of 32 MiB held at once,
# +508 MiB, under a 40 MiB bound), and any connection, before its AE titles are checked, could make the node read a
# 128 MiB association request. 64 times the announced length leaves room for lax senders.
MAX_PDU_BYTES = 1024 * 1024
RECEIVE_MEMORY_FULL = "the node is receiving too much at once; retry later"
REJECTIONS_UNREADABLE = "the study's record of rejected instances cannot be read"
IDLE_SHARE = 0.9  # an association closed this share of the association timeout after its last instance was idle


class Receiver:
    """The node's C-STORE SCP side: keeps or refuses each instance, and tracks what each open association sent.

    It alone holds the state of the associations (`_open`, `_closed`, `_receiving`, `_resent_after_cut_off`) and the
    locks on it, apart from the node's other fields; the worker asks it only
    `studies_receiving`.
    """

    def __init__(self, config: NodeConfig, spool: Spool, metrics: NodeMetrics) -> None:
        self.config = config
        self.spool = spool
        self.metrics = metrics
        # What each open association has sent: a study is not processed while one is still open (a slow link, a
        # large instance on the wire), and its quiet period starts when the last one ends.
        self._open: dict[Association, _Sending] = {}
        # Associations whose connection has closed: a C-STORE handler still writing when its peer aborts finishes
        # after the close event, and must not leave its study waiting on an association that is gone.
        self._closed: weakref.WeakSet[Association] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        # Study -> the SOP Instance UIDs released associations stored since one of its associations was cut off
        # (`_forget_cut_off`); a new set at each cut-off.
        self._resent_after_cut_off: dict[str, set[str]] = {}
        # Bytes of the instance each association is receiving (or has received and not yet stored): pynetdicom holds
        # each whole in memory, so all of them together are held to `receive_memory_bytes`.
        self._receiving: dict[Association, int] = {}
        self._receiving_lock = threading.Lock()

    def application_entity(self) -> AE:
        """The AE the node's server runs: its presentation contexts, timers and the AE titles it accepts."""
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
        return ae

    def handlers(self) -> list[EventHandlerType]:
        """The pynetdicom event handlers of the node's server."""
        return [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_ACCEPTED, _log_refused_contexts),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_PDU_RECV, self._discard_oversized),
            (evt.EVT_RELEASED, self._note_release),
            (evt.EVT_CONN_CLOSE, self._end_association),
        ]

    def _handle_store(self, event: Event) -> int | Dataset:
        """Keep one instance (`checked_instance`) and answer Success, or refuse it with a status and a comment."""
        try:
            return self._store(event)
        finally:  # stored or refused: its bytes are no longer the node's to hold
            with self._receiving_lock:
                self._receiving.pop(event.assoc, None)

    def _store(self, event: Event) -> int | Dataset:
        request = event.request
        if isinstance(request.DataSet, DiscardedDataSet) and request.DataSet.reason is not None:
            return self._refused("receive_memory", STATUS_OUT_OF_RESOURCES, request.DataSet.reason)
        context_class = str(event.context.abstract_syntax)
        if unpadded_uid(request.AffectedSOPClassUID) != context_class:  # pynetdicom does not check it
            return self._refused(
                "sop_class_mismatch", STATUS_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID is not its presentation context's"
            )
        if context_class == KeyObjectSelectionDocumentStorage:
            try:
                rejection = self._rejection(event)
            except RejectionNoteTooLargeError as error:
                return self._refused("too_large", STATUS_OUT_OF_RESOURCES, str(error), event.assoc)
            except UndecodableDicomError as error:
                return self._refused("invalid_instance", STATUS_CANNOT_UNDERSTAND, error.message, event.assoc)
            if rejection is not None:
                return self._take_rejection(event, *rejection)
        if context_class in NOT_KEPT_CLASSES:
            logger.info(
                "instance ignored: not an image the models read",
                extra={"fields": {"sop_class": PRIVATE_IGNORED_CLASSES.get(context_class, UID(context_class).name)}},
            )
            return STATUS_SUCCESS
        try:
            self.spool.check_room(received_bytes(request.DataSet))  # before copying it once more
            data = self._received_file(event)
            instance = checked_instance(
                data,
                str(request.AffectedSOPClassUID or ""),
                str(request.AffectedSOPInstanceUID or ""),
                self.config.spool_limits.max_instance_bytes,
            )
            if self.spool.is_rejected(instance.study_uid, instance.patient_id, instance.sop_instance_uid):
                # IOCM: rejected means rejected; Success, so that a router's send of the whole study goes through.
                logger.info(
                    "instance ignored: rejected by an incoming rejection note (IHE IOCM)",
                    extra={"fields": {"study_key": study_key(instance.study_uid, instance.patient_id)}},
                )
                return STATUS_SUCCESS
            if self.spool.holds_instance(instance.study_uid, instance.patient_id, instance.sop_instance_uid):
                check_replacement_decodes(data, self.config.spool_limits.max_instance_bytes)
            key = self.spool.store_instance(
                instance.study_uid,
                instance.patient_id,
                instance.sop_instance_uid,
                data,
                instance.series_uid,
                sender=str(event.assoc.requestor.address),
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
        except UnreadableRejectionsError:  # logged by the spool
            return self._refused("spool_error", STATUS_OUT_OF_RESOURCES, REJECTIONS_UNREADABLE, event.assoc)
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

    @staticmethod
    def _received_file(event: Event) -> bytes:
        """The instance as sent, as a Part 10 file: preamble, the presentation context's file meta, the undecoded data
        set, without the file meta elements a sender left at its head (`without_file_meta_elements`)."""
        data = event.encoded_dataset(include_meta=True)
        transfer_syntax = str(event.context.transfer_syntax)
        data, had_file_meta = without_file_meta_elements(data, received_bytes(event.request.DataSet), transfer_syntax)
        if had_file_meta:
            logger.info("file meta elements (group 0002) inside the data set left out, as a data set has none")
        return data

    def _rejection(self, event: Event) -> tuple[str, IncomingRejection] | None:
        """The study key and what an incoming Key Object Selection rejects, when it is an IHE IOCM rejection note
        (`incoming_rejection`), for a study the node holds or not yet (one sent before its study's images is kept,
        not dropped); None otherwise (it is then ignored, as any other KOS).

        Raises `RejectionNoteTooLargeError` for a KOS over `incoming_rejection.MAX_NOTE_BYTES`, as sent or once
        inflated, before it is decoded whole: pynetdicom's `event.dataset` inflates a deflated one without limit, 1 GiB
        from 1 MB on the wire; `UndecodableDicomError` for one whose data set cannot be read (a
        damaged deflate stream, too many elements)."""
        check_note_size(received_bytes(event.request.DataSet))  # before the bytes are copied
        try:  # read in the context's transfer syntax, as an image is (interop review 62 F5)
            data = self._received_file(event)
        except InstanceRefusedError as error:
            raise UndecodableDicomError(str(error)) from error
        try:
            dataset = read_rejection_note(data)
            rejection = incoming_rejection(dataset)
            key = study_key(rejection.study_instance_uid, identity_text(dataset.get("PatientID"))) if rejection else ""
        except (RejectionNoteTooLargeError, UndecodableDicomError):
            raise  # refused: a note that may be one must not be answered Success
        except Exception as error:  # noqa: BLE001 - pydicom raises many types on a damaged content
            if may_be_rejection_note(data):  # never answered Success: the note would be lost
                raise UndecodableDicomError(
                    f"a Key Object Selection titled as an IOCM rejection note whose content cannot be read "
                    f"({type(error).__name__})"
                ) from error
            logger.info("key object selection ignored: unreadable, and not titled as a rejection note")
            return None
        return None if rejection is None else (key, rejection)

    def _take_rejection(self, event: Event, key: str, rejection: IncomingRejection) -> int | Dataset:
        """Keep an incoming rejection note for study `key` (`Spool.reject_instances`): its instances are left out
        of the study, which is analysed again, its new results revising and withdrawing the earlier ones. Refused
        Out of Resources when the spool cannot take it: the sender sends it again."""
        try:
            data = self._received_file(event)
            self.spool.check_room(len(data))
            removed = self.spool.reject_instances(
                key,
                rejection.sop_instance_uids,
                rejection.reason_code,
                data,
                unpadded_uid(event.request.AffectedSOPInstanceUID),
                sender=str(event.assoc.requestor.address),
            )
        except SpoolFullError as error:
            return self._refused("spool_full", STATUS_OUT_OF_RESOURCES, str(error), event.assoc)
        except UnreadableRejectionsError:  # logged by the spool
            return self._refused("spool_error", STATUS_OUT_OF_RESOURCES, REJECTIONS_UNREADABLE, event.assoc)
        except OSError:
            logger.exception("rejection note not stored")
            return self._refused("spool_error", STATUS_OUT_OF_RESOURCES, "the node cannot write its spool", event.assoc)
        logger.info(
            "rejection note taken: its instances are left out of the study"
            + (", which is analysed again" if removed else " (none held now)"),
            extra={
                "fields": {
                    "study_key": key,
                    "reason": rejection.reason,
                    "instances_rejected": len(rejection.sop_instance_uids),
                    "instances_removed": removed,
                }
            },
        )
        return STATUS_SUCCESS

    def _refused(self, kind: str, status: int, reason: str, association: Association | None = None) -> Dataset:
        """`_refusal`, counted under `kind` (one of `node_metrics.REFUSAL_REASONS`: the reason itself is free text),
        and for the `association`: the studies it sends are then reported as possibly missing instances."""
        self.metrics.instances_refused.labels(reason=kind).inc()
        if association is not None:
            with self._open_lock:
                if association not in self._closed:
                    self._open.setdefault(association, _Sending()).refused += 1
        return _refusal(status, reason)

    def _note_release(self, event: Event) -> None:
        """EVT_RELEASED: the sender ended the association as the standard asks, so it sent all it meant to."""
        with self._open_lock:
            if event.assoc in self._open:
                self._open[event.assoc].released = True

    def count_cut_off_associations(self) -> None:
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

    def _end_association(self, event: Event) -> None:
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
        is not PARTIAL (otherwise a study re-sent whole after a node crash is reported "instances may be missing"
        for good). Instances the cut-off association alone sent keep the count, and so does an abort
        counted meanwhile (it starts a new set in `_resent_after_cut_off`). A study whose report already said so is
        then analysed again (`cut_off_report_made_whole`); one the record says was cut off, tracked by no set (the
        node restarted since), starts one here."""
        for key, sop_instance_uids in sending.instances.items():
            with self._open_lock:
                tracked = self._resent_after_cut_off.get(key)
            if tracked is None:
                record = self.spool.readable_record(key)
                if record is None or not awaits_whole_resend(record):
                    continue
                with self._open_lock:
                    tracked = self._resent_after_cut_off.setdefault(key, set())
            with self._open_lock:
                tracked |= sop_instance_uids
                resent = set(tracked)

            def forget(record: dict[str, Any], key: str = key, tracked: set[str] = tracked) -> None:
                with self._open_lock:
                    if self._resent_after_cut_off.get(key) is not tracked:
                        return
                    del self._resent_after_cut_off[key]
                sent_whole_again(record)

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
        """The studies an open association has stored instances of: not processed yet (`StudyWorker._quiet`)."""
        with self._open_lock:
            return {key for sending in self._open.values() for key in sending.studies}

    def _discard_oversized(self, event: Event) -> None:
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


@dataclass
class _Sending:
    """What one open association has sent: the studies it stored instances of, when it last did, and whether it
    asked for a release."""

    studies: set[str] = field(default_factory=set)
    instances: dict[str, set[str]] = field(default_factory=dict)  # study -> SOP Instance UIDs stored
    last_store: float = 0.0  # time.monotonic()
    released: bool = False
    refused: int = 0  # instances it sent that the node refused


def _refusal(status: int, reason: str) -> Dataset:
    """The C-STORE answer that refuses an instance, with `reason` as its Error Comment; logged without DICOM values."""
    logger.warning("instance refused", extra={"fields": {"status": f"0x{status:04X}", "reason": reason}})
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = reason[:ERROR_COMMENT_LENGTH]
    return answer


def _handle_echo(event: Event) -> int:
    return STATUS_SUCCESS


def _log_refused_contexts(event: Event) -> None:
    """Say in one line which SOP classes (or their transfer syntaxes) an accepted association was refused: a sender
    that then sends a class the node does not take fails that send, and the node's log is where an administrator
    looks. INFO, not a warning per class: a PACS offers every class it stores, and dcmtk's storescu 14 for a series of
    MR (14 of a run's 20 log lines). A SOP Class UID is the standard's or a vendor's, never patient
    data, but a peer may send any text in its place ("Smith^John 1970"): only well-formed UIDs are
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
