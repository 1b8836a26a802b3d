"""What `training.compare_classifiers` and `training.compare_segmenters` share: the candidates they take
(`NAME=WEIGHTS`), the two ways they can combine them into one model to export (weights averaged, probabilities
averaged), and how they run and write their comparison."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import keras

from training.data import DatasetError, usage_errors
from training.models import architecture_json, probability_mean_of, renamed, save_checkpoint, weights_average

logger = logging.getLogger(__name__)


def parse_candidate(text: str) -> tuple[str, Path]:
    """`name=path/to/best.weights.h5` -> (name, path)."""
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHTS_PATH; got {text!r}")
    return name, Path(path)


def add_combination_arguments(parser: argparse.ArgumentParser) -> None:
    """--save-weights-average and --save-probability-mean: the candidates combined into one model to export."""
    parser.add_argument(
        "--save-weights-average",
        default=None,
        metavar="WEIGHTS_H5",
        help="also write the candidates' weights averaged (one architecture) as a .weights.h5 to export",
    )
    parser.add_argument(
        "--save-probability-mean",
        default=None,
        metavar="DIR",
        help="also write the mean of the candidates' probabilities (an ensemble, judged with them) to DIR as a "
        "checkpoint (architecture.json, best.weights.h5) that training.evaluate and training.export take",
    )


def average_and_save(models: list[keras.Model], save_to: str | None, kind: str) -> keras.Model | None:
    """The candidates' weight average when two or more share one architecture, else None; written to `save_to` if
    given (asking to save what cannot be averaged is a usage error)."""
    if len(models) < 2 or len({architecture_json(model) for model in models}) > 1:
        if save_to:
            raise DatasetError(f"--save-weights-average needs two or more {kind} of one architecture")
        return None
    averaged = weights_average(models)
    if save_to:
        averaged.save_weights(save_to)
        logger.info("wrote the averaged weights to %s", save_to)
    return averaged


def save_probability_mean(models: list[keras.Model], output_dir: Path, kind: str, name: str) -> keras.Model:
    """The candidates as one model named `name` whose output is the mean of their probabilities, saved as a
    checkpoint (`architecture.json` and `best.weights.h5` in `output_dir`) that `training.evaluate` and
    `training.export` take.

    Exported, the service runs it like any single model; its cost per slice is the sum of the members'.
    """
    if len(models) < 2:
        raise DatasetError(f"--save-probability-mean needs two or more {kind}")
    ensemble = probability_mean_of([renamed(model, f"member{index}") for index, model in enumerate(models)], name=name)
    save_checkpoint(ensemble, output_dir)
    logger.info("wrote the mean of the %s' probabilities as one model to %s", kind, output_dir)
    return ensemble


def run_comparison(
    parser: argparse.ArgumentParser, compare: Callable[[argparse.Namespace], dict], argv: list[str] | None
) -> dict:
    """Parse `argv`, run `compare` (a wrong path or data root is a usage error) and write its result as JSON to
    `--output`; return the result."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):
        result = compare(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result
