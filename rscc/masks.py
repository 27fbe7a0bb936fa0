"""Change-mask label encodings shared by the package's mask writers and readers (captioning, metrics, data), and
the writer of predicted masks.

The remote-code processor (`processing_rscc.py`) keeps its own copy: it must load without the rscc package.
"""

import os
from pathlib import Path

import numpy as np

from .output_files import atomic_output

# PNG grey level of each class id: LEVIR-CD's 0/255 for two classes, LEVIR-MCI's 0/128/255 (background, road,
# building; channel 0 of its RGB labels) for three.
MASK_GREY_LEVELS = {2: (0, 255), 3: (0, 128, 255)}


def write_mask_png(change_mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> Path:
    """Write a predicted mask of class ids as an 8-bit PNG in the LEVIR encodings (temporary file, then rename).

    Args:
        change_mask (`np.ndarray` of shape `(height, width)`): class ids, 0 = no change.
        num_classes (`int`): classes of the change head; other counts than 2 and 3 are written as raw class ids.
        path (`str` or `os.PathLike`): the PNG to write.
    """
    from PIL import Image  # here, so that the readers of the levels (`rscc eval`) do not import Pillow

    path = Path(path)
    levels = MASK_GREY_LEVELS.get(num_classes)
    grey = change_mask.astype(np.uint8) if levels is None else np.asarray(levels, dtype=np.uint8)[change_mask]
    with atomic_output(path, ".png") as temporary:
        Image.fromarray(grey).save(temporary, format="PNG")
    return path
