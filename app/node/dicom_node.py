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
   ended without a release (aborted, cut off) says so in its report's notes (PARTIAL), unless every instance came
   again over released associations before the analysis; after it, such a whole re-send makes a COMPLETE revision.
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

The node's three jobs live in three modules, one class each, which `DicomNode` composes (newcomer review 45 F18: they
were one class of 900 lines):

- `app.node.dicom_receiver`: `Receiver`, the association handlers that receive (step 1), and the node's defences
  against a sender that misbehaves (size, memory and spool limits; instances it cannot read);
- `app.node.dicom_study_worker`: `StudyWorker`, the worker that processes quiet studies and purges old ones (steps 2,
  3 and 5);
- `app.node.dicom_sender`: `ResultDelivery` and `ResultSender`, the sending of results (step 4), one thread per
  destination.

Logs name studies by a hash of their Patient ID and Study Instance UID (`app.node.dicom_spool.study_key`), never by
DICOM attributes.

This module holds the node itself: `DicomNode` (its start and stop, its threads, the steps they run). The rest lives
beside it:

- `app.node.node_config`: `NodeConfig`, the node's settings, checked;
- `app.node.dicom_received_instance`: what the node accepts (SOP classes, transfer syntaxes, statuses) and the check
  that keeps or refuses each instance received;
- `app.node.dicom_study_runs`: the runs in a study's record that decide whether it is processed again (step 3), and the
  count of associations that ended without a release;
- `app.node.dicom_spool`, `app.node.dicom_association`: the spool on disk, the limits on connections and PDUs;
- `app.node.node_metrics`: the node's Prometheus metrics (counted by the receiver, the worker and the sender; served by
  the command line on ``DICOM_NODE_METRICS_PORT``);
- `app.node.dicom_node_command`: the command line (``brain-tumor dicom-node``), which loads the models and runs the
  node.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable

from app.node.dicom_association import CONNECTIONS_PER_ASSOCIATION, TimedAssociationServer
from app.node.dicom_receiver import MAX_PDU_BYTES, Receiver
from app.node.dicom_sender import Destination, ResultDelivery, ResultSender
from app.node.dicom_spool import Spool
from app.node.dicom_study_worker import StudyWorker
from app.node.node_config import NodeConfig
from app.node.node_metrics import NodeMetrics
from app.study_analysis import StudyProcessor

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


class DicomNode:
    """The node: a C-STORE SCP that spools (`Receiver`), a worker that processes quiet studies (`StudyWorker`), a
    sender per destination that sends results (`ResultDelivery`); it starts and stops them together.

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
        self.receiver = Receiver(config, self.spool, self.metrics)
        self.worker = StudyWorker(
            config,
            self.spool,
            processor,
            clock,
            self.metrics,
            stopping=self._stop,
            studies_receiving=self.receiver.studies_receiving,
        )
        self.sender = ResultSender(
            config.ae_title,
            config.send_retries,
            config.send_backoff_seconds,
            sleep,
            config.send_timeout_seconds,
            stopping=self._stop,
        )
        self.delivery = ResultDelivery(self.spool, self.sender, config.destinations, clock, self.metrics)
        self._server: TimedAssociationServer | None = None
        self._server_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    @property
    def processor(self) -> StudyProcessor:
        """The worker's processor; tests put their own in its place."""
        return self.worker.processor

    @processor.setter
    def processor(self, processor: StudyProcessor) -> None:
        self.worker.processor = processor

    def start(self, worker: bool = True) -> None:
        """Listen (in pynetdicom's threads) and, with `worker`, process and send in background threads."""
        self._stop.clear()
        self.worker.resume()
        self.receiver.count_cut_off_associations()
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
        ae = self.receiver.application_entity()
        room_problem = self.spool.room_problem()
        if room_problem is not None:
            logger.warning(room_problem)
        if not self.config.destinations:
            logger.warning(
                "the DICOM node has no destination (DICOM_NODE_DESTINATIONS unset): results stay in the spool"
            )
        ae.require_called_aet = True  # refuse associations addressed to another AE title
        try:
            self._server = ae.make_server(
                (self.config.host, self.config.port),
                evt_handlers=self.receiver.handlers(),
                server_class=TimedAssociationServer,
                receive_timeout=self.config.association_timeout_seconds,
                max_pdu_bytes=MAX_PDU_BYTES,
                max_per_peer=self.config.max_associations_per_peer,
                max_connections=CONNECTIONS_PER_ASSOCIATION * self.config.max_associations,
            )
        except OSError as error:  # an unknown host name, an address of another machine, a port in use
            raise NodeStartError.of(self.config.host, self.config.port, error) from error
        self._server_thread = threading.Thread(target=self._server.serve_forever, name="dicom-node-server", daemon=True)
        self._server_thread.start()
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

    def health_problem(self) -> str | None:
        """What keeps the node from working, for its heartbeat: a thread that has stopped, or the node not
        listening; None when it listens and its worker and senders run."""
        if self._server_thread is None or not self._server_thread.is_alive():
            return "not listening for associations"
        stopped = [thread.name for thread in self._threads if not thread.is_alive()]
        return f"thread stopped: {', '.join(stopped)}" if stopped else None

    def _background_steps(self) -> list[tuple[str, Callable[[], object]]]:
        """The worker (process, purge), and one sender per destination: a destination that hangs until the send
        timeout, or backs off between retries, holds up no other destination's deliveries."""
        senders = [
            (f"sender-{index}", functools.partial(self.send_unsent, (destination,)))
            for index, destination in enumerate(self.config.destinations)
        ]
        return [("worker", self.worker.process_and_purge), *senders]

    def _loop(self, step: Callable[[], object]) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                step()
            except Exception:  # a bug must not stop the node receiving; logged with its traceback
                logger.exception("DICOM node pass failed")

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
        self.worker.abandon_analysis()  # an outcome being written is finished; none is written from now on
        self._threads = []
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self._server_thread = None

    def studies_receiving(self) -> set[str]:
        """The studies an open association has stored instances of: not processed yet."""
        return self.receiver.studies_receiving()

    def process_ready(self) -> list[str]:
        """Process every study quiet for `quiet_seconds`; return the keys of the studies processed anew
        (`StudyWorker.process_ready`)."""
        return self.worker.process_ready()

    def purge_expired(self) -> list[str]:
        """Remove instances and results of studies delivered `retention_seconds` ago; return their keys."""
        return self.worker.purge_expired()

    def _oldest_unsent_age(self) -> float:
        """Seconds since the results waiting longest for a destination were made; 0 when none wait."""
        since = self.spool.oldest_unsent_since()
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def send_unsent(self, destinations: tuple[Destination, ...] | None = None) -> int:
        """Send each of `destinations` (default: all, one after the other) what it still lacks, once its backoff
        has passed; return runs tried. The sender threads call it for one destination each."""
        return self.delivery.send_unsent(destinations)
