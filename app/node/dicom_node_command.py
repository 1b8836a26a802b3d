"""`brain-tumor dicom-node` on the command line: its options, and the entry point that loads the models once and
runs the node (`app.node.dicom_node.DicomNode`) until interrupted.

`app.cli` checks the port and AE title given, configures logging and calls `main`, as it calls `app.pacs.pacs_sync.main`
for ``brain-tumor pacs-sync``; options not given come from the ``DICOM_NODE_*`` settings (`NodeConfig.from_settings`).
How a study flows through the node is told in `app.node.dicom_node`, its defences in `app.node.dicom_receiver`.

``brain-tumor dicom-node-forget`` (`forget_main`), run while the node is stopped, removes one study's received
instances from the spool and keeps its record: the way out for a study the node refused for an instance that should
not be part of it, which every re-send would otherwise bring back (interop review 46 F2).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import UID

from app.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail
from app.heartbeat import STARTING, HeartbeatFile
from app.metrics import serve_metrics
from app.node.dicom_node import DicomNode, check_address
from app.node.dicom_spool import Spool, SpoolInUseError, hold_spool, study_key
from app.node.dicom_study_runs import instances_forgotten
from app.node.node_config import NodeConfig
from app.node.node_metrics import NodeMetrics
from app.settings import Settings, get_settings
from app.stop_signals import StopSignals, signals_interrupt
from app.uploads import UploadLimits

if TYPE_CHECKING:
    from app.series.sequence_rules import SelectionRules

# The node's logger: "DICOM node stopped" comes under the name the node's other lines have.
logger = logging.getLogger("app.node.dicom_node")


def main(
    args: argparse.Namespace, settings: Settings | None = None, before_models: Callable[[], None] | None = None
) -> int:
    """Entry point of ``brain-tumor dicom-node``: load the models once (after `before_models`, which the command line
    uses to import TensorFlow quietly), listen until interrupted.

    What can be checked in a moment is checked first: the spool (in use by another node, or a folder that cannot be
    made), the address (`check_address`: a port in use, a host not of this machine) and the metrics port
    (``DICOM_NODE_METRICS_PORT``, served from then on: `app.metrics.serve_metrics`).

    Returns 0 when stopped by SIGINT/SIGTERM, 2 for a bad configuration.
    """
    from app.series.sequence_rules import SelectionRules

    settings = settings or get_settings()
    try:
        config = NodeConfig.from_settings(
            settings,
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            spool_dir=None if args.spool_dir is None else Path(args.spool_dir),
        )
        rules = SelectionRules.from_settings(settings)
    except ValueError as error:  # as an invalid option or variable: one line on stderr, found before anything runs
        return fail(f"brain-tumor dicom-node: error: {error}", EXIT_USAGE)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines name AE titles and UIDs
    # Before the models (a second node on a spool is told at once) and held until the process ends.
    with hold_spool(config.spool_dir):
        check_address(config.host, config.port)
        metrics = NodeMetrics(str(destination) for destination in config.destinations)
        stop_metrics = (
            serve_metrics(metrics.registry, settings.metrics_host, settings.dicom_node_metrics_port)
            if settings.dicom_node_metrics_port
            else None
        )
        try:
            return _run(args, settings, config, rules, metrics, before_models)
        finally:
            if stop_metrics is not None:
                stop_metrics()


def _run(
    args: argparse.Namespace,
    settings: Settings,
    config: NodeConfig,
    rules: SelectionRules,
    metrics: NodeMetrics,
    before_models: Callable[[], None] | None,
) -> int:
    """Load the models, run the node until SIGINT/SIGTERM; 0."""
    from app.inference import load_predictor
    from app.study_analysis import ModelStudyProcessor

    heartbeat = HeartbeatFile(settings.heartbeat_file, "dicom-node")
    heartbeat.write(STARTING)
    with StopSignals() as stop_signals:
        try:
            # SIGTERM while the models load (10 s to a minute) stops the node there with exit 0, not by the signal
            # (143) (ops review 44 F6); the noting handlers, which let the node finish what it holds, come back after.
            with signals_interrupt():
                if before_models is not None:
                    before_models()
                predictor = load_predictor(settings, args.model_dir)
        except KeyboardInterrupt:
            logger.info("DICOM node stopped")
            return EXIT_OK
        # A signal in the moment before the load could be interrupted was only noted: stop now, not after
        # listening (review 49 F5).
        if stop_signals.came():
            logger.info("DICOM node stopped")
            return EXIT_OK
        node = DicomNode(
            config,
            ModelStudyProcessor(
                predictor,
                rules,
                UploadLimits.for_node(settings),
                batch_size=settings.inference_batch_size,
                result_origin="dicom-node",
            ),
            metrics=metrics,
        )
        node.start()
        try:
            with heartbeat.beating(node.health_problem):
                stop_signals.wait()
        finally:
            node.stop()
            logger.info("DICOM node stopped")
    return EXIT_OK


def forget_main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``brain-tumor dicom-node-forget``: remove one study's received instances from a stopped node's
    spool (`Spool.forget_instances`), keeping its record, so that the next send of the study is analysed afresh and
    its report is a revision naming the earlier reports (interop review 46 F2: a study refused for a stray instance
    was refused again at every re-send of the corrected study, as the spool kept the stray one).

    Neither the Study Instance UID nor the Patient ID is printed (the node's logs name a study by its key only).
    Returns 0 once removed; 1 when the spool holds no such study; 2 for a running node (it holds the spool's lock),
    a spool that does not exist, a UID that is no UID, or a UID several patients' studies share without
    ``--patient-id``.
    """
    command = "brain-tumor dicom-node-forget"
    spool_dir = settings.dicom_node_spool_dir if args.spool_dir is None else Path(args.spool_dir)
    if not UID(args.study_instance_uid).is_valid:
        return fail(f"{command}: error: STUDY_INSTANCE_UID is not a UID (digits and dots, 64 at most)", EXIT_USAGE)
    if not (spool_dir / "studies").is_dir():
        return fail(f"{command}: error: {spool_dir} is not a dicom-node spool (no studies/ in it)", EXIT_USAGE)
    try:
        with hold_spool(spool_dir):
            spool = Spool(spool_dir)
            if args.patient_id is not None:
                key = study_key(args.study_instance_uid, args.patient_id)
                keys = [key] if spool.study_dir(key).is_dir() else []
            else:
                keys = spool.study_keys_of(args.study_instance_uid)
            if not keys:
                return fail(f"{command}: the spool holds no study under that Study Instance UID", EXIT_FAILED)
            if len(keys) > 1:
                return fail(
                    f"{command}: error: {len(keys)} patients' studies in the spool have that Study Instance UID; "
                    "name one with --patient-id",
                    EXIT_USAGE,
                )
            (key,) = keys
            removed = spool.forget_instances(key)
            spool.update_record(key, instances_forgotten)
    except SpoolInUseError:
        return fail(
            f"{command}: error: a dicom-node is running on {spool_dir} (it holds node.lock); stop it first", EXIT_USAGE
        )
    print(
        f"study {key}: {removed} received instance(s) removed from the spool, its record kept; the next send of the "
        "study is analysed afresh, and its report revises the earlier ones"
    )
    return EXIT_OK
