"""Change-detection metrics: precision, recall, F1, IoU and mIoU of predicted change masks, over a whole dataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import RsccInputError
from ..masks import MASK_GREY_LEVELS


def _to_numpy(array: object) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, possibly on an accelerator
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def mask_to_class_indices(mask: object, label_values: Sequence[int] = MASK_GREY_LEVELS[2]) -> np.ndarray:
    """Map the pixel values of a label image to class indices (value `label_values[k]` -> class k).

    Args:
        mask: Label image (array or tensor); for LEVIR-MCI pass channel 0.
        label_values: Pixel value of each class (`MASK_GREY_LEVELS`): `(0, 255)` for LEVIR-CD, `(0, 128, 255)`
            (background, road, building) for LEVIR-MCI.
    """
    mask = _to_numpy(mask)
    classes = np.full(mask.shape, -1, dtype=np.int64)
    for index, value in enumerate(label_values):
        classes[mask == value] = index
    if (classes < 0).any():
        unexpected = sorted(set(np.unique(mask[classes < 0]).tolist()))[:10]
        raise ValueError(f"mask has values {unexpected} outside the label values {tuple(label_values)}")
    return classes


class ChangeDetectionMetrics:
    """Change-detection metrics accumulated over a whole dataset through one confusion matrix.

    Binary masks (class 1 = change) give precision, recall, F1 and IoU of the change class and overall
    accuracy; multi-class masks (LEVIR-MCI: background, road, building) add per-class IoU and mIoU, and the
    binary figures are computed with every non-background class merged into "change". All on the 0-100 scale.

    Args:
        num_classes: Number of classes, background (no change) being class 0.
        class_names: Names for the per-class IoU entries; `class_0`... by default.
        ignore_index: Target value whose pixels are not counted.

    Example:
        >>> metrics = ChangeDetectionMetrics()
        >>> metrics.update(predicted_mask, target_mask)  # class indices, any shape, arrays or tensors
        >>> metrics.compute()["f1"]
    """

    def __init__(self, num_classes: int = 2, class_names: Sequence[str] | None = None, ignore_index: int | None = None):
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2 (background and change)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
        self.ignore_index = ignore_index
        self.confusion_matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion_matrix[:] = 0

    def update(self, prediction: object, target: object) -> None:
        """Add one mask or a batch of masks (class indices, same shape) to the confusion matrix (rows = target)."""
        prediction, target = _to_numpy(prediction), _to_numpy(target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
        for name, values in (("prediction", prediction), ("target", target)):
            # Probabilities or logits cast to int64 would silently become class 0.
            if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
                example = values[values != np.round(values)][0]
                raise RsccInputError(
                    f"{name} holds values that are not whole class indices (e.g. {example}); pass class indices "
                    "(argmax of the logits), not probabilities"
                )
        keep = np.ones(target.shape, dtype=bool) if self.ignore_index is None else target != self.ignore_index
        prediction, target = prediction[keep].astype(np.int64), target[keep].astype(np.int64)
        for name, values in (("prediction", prediction), ("target", target)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} has class indices outside 0..{self.num_classes - 1} "
                    f"(found {values.min()}..{values.max()}); see mask_to_class_indices"
                )
        counts = np.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        self.confusion_matrix += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict:
        """Metrics of everything accumulated; undefined ratios (0/0) are None."""
        matrix = self.confusion_matrix.astype(np.float64)

        def ratio(numerator: float, denominator: float) -> float | None:
            return 100.0 * numerator / denominator if denominator > 0 else None

        true_positive = matrix[1:, 1:].sum()  # change predicted where some change is true
        predicted_change, true_change = matrix[:, 1:].sum(), matrix[1:, :].sum()
        precision = ratio(true_positive, predicted_change)
        recall = ratio(true_positive, true_change)
        f1 = ratio(2 * true_positive, predicted_change + true_change)
        result = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "iou": ratio(true_positive, predicted_change + true_change - true_positive),
            "overall_accuracy": ratio(np.trace(matrix), matrix.sum()),
            "pixels": int(matrix.sum()),
        }
        intersection = np.diag(matrix)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - intersection
        per_class = [ratio(intersection[k], union[k]) for k in range(self.num_classes)]
        defined = [value for value in per_class if value is not None]
        result["per_class_iou"] = dict(zip(self.class_names, per_class))
        result["miou"] = sum(defined) / len(defined) if defined else None
        return result
