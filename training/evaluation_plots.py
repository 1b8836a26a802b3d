"""The evaluation's PNG plots; matplotlib and scikit-learn are imported only when plotting, so evaluating with
`--no-plots` needs neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.core.outline import draw_outline
from training.data import SliceArrays
from training.evaluation_metrics import dice


def save_plots(
    output_dir: Path, arrays: SliceArrays, probabilities: np.ndarray, masks: np.ndarray, history_paths: dict[str, Path]
) -> None:
    """Training curves, ROC, confusion matrix, and test slices with true (green) and predicted (red) outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    columns = max(1, len(history_paths))
    figure, axes = plt.subplots(1, columns, figsize=(6 * columns, 4), squeeze=False)
    for axis, (name, path) in zip(axes[0], history_paths.items(), strict=False):
        if not path.exists():
            continue
        history = np.genfromtxt(path, delimiter=",", names=True)
        axis.plot(history["epoch"] + 1, history["loss"], label="train loss")
        # Runs before 1.2 logged a validation loss; later runs the served pipeline's validation figures.
        for column in ("val_loss", "val_volume_dice", "val_specificity", "val_auc"):
            if column in history.dtype.names:
                axis.plot(history["epoch"] + 1, history[column], label=column.replace("val_", "validation "))
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "training_curves.png", dpi=100)
    plt.close(figure)

    labels = arrays.labels > 0
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    RocCurveDisplay.from_predictions(labels, probabilities, ax=axes[0], name="classifier")
    ConfusionMatrixDisplay.from_predictions(labels, masks.reshape(len(masks), -1).any(axis=1), ax=axes[1])
    axes[1].set_title("gated pipeline: slice has a mask")
    figure.tight_layout()
    figure.savefig(output_dir / "roc_confusion.png", dpi=100)
    plt.close(figure)

    chosen = np.flatnonzero(labels)[:: max(1, int(labels.sum()) // 12)][:12]
    figure, axes = plt.subplots(3, 4, figsize=(12, 9))
    for axis, index in zip(axes.ravel(), chosen, strict=False):
        picture = arrays.images[index].copy()
        for mask, colour in ((arrays.masks[index] > 0, (0, 255, 0)), (masks[index], (255, 0, 0))):
            draw_outline(picture, mask, colour)
        axis.imshow(picture)
        axis.set_title(f"p={probabilities[index]:.2f} dice={dice(arrays.masks[index] > 0, masks[index]):.2f}")
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(output_dir / "test_slices.png", dpi=100)
    plt.close(figure)
