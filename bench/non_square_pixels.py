"""What resampling non-square pixels to square ones does to the committed models' answers (`app.dicom.square_pixels`).

    python -m bench.non_square_pixels --data-root ../shared/lgg/kaggle_3m_dev

Each validation patient's slices (models/split.json; never the test patients) are stored again as a scanner with a
rectangular field of view on a square matrix would store them: fewer rows of taller pixels (256 rows of 256 x 256
squeezed to 192, pixels 1.33 times as tall as wide; and to 128, twice as tall). The models then read each slice as
stored, pixel for pixel (what the service did before), and resampled to square pixels (what it does now), and the
masks come back on the stored grid. Printed per squeeze: per-patient volume Dice (mean, median) against the truth
stored the same way, each slice answered alone (no series clean-up), the classifier's sensitivity and specificity, and
the same for the slices as they are (square pixels) for reference.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from app.core.preprocessing import preprocess_slice
from app.dicom.square_pixels import SquarePixels
from app.inference import Predictor
from training.data import find_slices, load_split, read_image, read_mask

SQUEEZED_ROWS = (192, 128)


def stored(image: np.ndarray, rows: int) -> np.ndarray:
    """`image` as stored with `rows` rows of taller pixels: the same anatomy, fewer rows."""
    interpolation = cv2.INTER_NEAREST if image.ndim == 2 else cv2.INTER_AREA
    return cv2.resize(image, (image.shape[1], rows), interpolation=interpolation)


def answers(predictor: Predictor, images: list[np.ndarray], resampling: SquarePixels | None) -> list:
    """The models' single-slice answers, masks on the stored grid; resampled to square pixels first when given."""
    seen = [resampling.apply(image) if resampling else image for image in images]
    batch = np.stack([preprocess_slice(image) for image in seen])
    predictions = predictor.predict_preprocessed(batch, [image.shape[:2] for image in seen])
    masks = [
        None if prediction.mask is None else resampling.undo(prediction.mask) if resampling else prediction.mask
        for prediction in predictions
    ]
    return [(prediction.detected, mask) for prediction, mask in zip(predictions, masks, strict=True)]


def figures(per_patient: dict[str, list[tuple[bool, np.ndarray | None, np.ndarray]]]) -> dict[str, float]:
    """Per-patient volume Dice (mean, median; a patient without tumor and no mask counts 1) and the classifier's
    sensitivity and specificity over the slices."""
    dices, tp, fn, tn, fp = [], 0, 0, 0, 0
    for items in per_patient.values():
        overlap = predicted = truth_total = 0
        for detected, mask, truth in items:
            has_tumor = bool(truth.any())
            tp, fn = tp + (detected and has_tumor), fn + (not detected and has_tumor)
            tn, fp = tn + (not detected and not has_tumor), fp + (detected and not has_tumor)
            if mask is not None:
                overlap += int(np.count_nonzero(mask & truth))
                predicted += int(np.count_nonzero(mask))
            truth_total += int(np.count_nonzero(truth))
        dices.append(1.0 if predicted + truth_total == 0 else 2 * overlap / (predicted + truth_total))
    return {
        "volume_dice_mean": float(np.mean(dices)),
        "volume_dice_median": float(np.median(dices)),
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.non_square_pixels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="the kaggle_3m folder")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--split", type=Path, default=Path("models/split.json"))
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    predictor = Predictor.from_model_dir(args.model_dir)
    patients = set(load_split(args.split)["validation"])
    by_patient: dict[str, list] = defaultdict(list)
    for record in find_slices(args.data_root):
        if record.patient_id in patients:
            by_patient[record.patient_id].append(record)

    results: dict[str, dict[str, dict]] = {}
    conditions = [("square pixels (as the dataset stores them)", 256, None)]
    for rows in SQUEEZED_ROWS:
        conditions.append((f"{rows} rows, pixels {256 / rows:.2f} x as tall: read pixel for pixel", rows, None))
        conditions.append(
            (f"{rows} rows, pixels {256 / rows:.2f} x as tall: resampled", rows, SquarePixels((rows, 256), (256, 256)))
        )
    for name, rows, resampling in conditions:
        per_patient = {}
        for patient, records in sorted(by_patient.items()):
            records = sorted(records, key=lambda record: record.slice_number)
            images = [stored(read_image(record.image_path), rows) for record in records]
            truths = [stored((read_mask(record.mask_path) > 0).astype(np.uint8), rows) for record in records]
            per_patient[patient] = [
                (detected, mask, truth)
                for (detected, mask), truth in zip(answers(predictor, images, resampling), truths, strict=True)
            ]
        results[name] = figures(per_patient)
        shown = ", ".join(f"{key} {100 * value:.1f} %" for key, value in results[name].items())
        print(f"{name}: {shown}", flush=True)
    if args.output:
        args.output.write_text(json.dumps({"patients": sorted(by_patient), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
