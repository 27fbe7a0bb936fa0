"""SECOND (Yang et al., TGRS 2021): semantic change detection, `<split>/{im1,im2,label1,label2}/<name>.png`, with
RGB label maps of 6 land-cover classes inside the changed areas (label1 at the first date, label2 at the second),
captioned from label2 by `from_masks`: what each changed area became, how many, how large and where."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from ..errors import read_text_file
from .from_masks import DEFAULT_MIN_REGION_PIXELS, from_masks_records
from .schema import ChangeRecord

# SECOND's label colours (Bi-SRNet datasets/RS_ST.py); white is outside the changed areas.
SECOND_CLASSES = ("255/255/255=unchanged,0/0/255=water,128/128/128=ground,0/128/0=low vegetation,0/255/0=tree,"
                  "128/0/0=building,255/0/0=playground")


def read_split_list(path: Path) -> list:
    """The image file names of a split list with one image path per line (Bi-SRNet's `train_list.txt` holds
    absolute paths such as `.../ST/train/im1/00003.png`)."""
    return [Path(line.strip()).name for line in read_text_file(path).splitlines() if line.strip()]


def second_records(root: Union[str, os.PathLike], split: str = "train", list_file: Union[str, os.PathLike, None] = None,
                   *, min_region_pixels: int = DEFAULT_MIN_REGION_PIXELS, seed: int = 0,
                   source: str = "second") -> Iterator[ChangeRecord]:
    """Records of one SECOND split folder, captioned from `label2`; the stored change mask marks every pixel that
    is not white in label2.

    Args:
        root: The split folder holding im1, im2, label1 and label2.
        split: Split of the records.
        list_file: A split list (e.g. Bi-SRNet's) naming the pairs to take; default: every image in im1.
        min_region_pixels: Smallest changed region the captions count.
        seed: Seed of the template choice.
        source: Source name of the records.
    """
    names: Optional[list] = read_split_list(Path(list_file)) if list_file else None
    return from_masks_records(root, split, source, before_dir="im1", after_dir="im2", mask_dir="label2",
                              classes=SECOND_CLASSES, min_region_pixels=min_region_pixels, seed=seed, names=names)
