"""LEVIR-CC and LEVIR-MCI: a Karpathy-style caption file joined to `images/{split}/{A,B[,label]}` on filename."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from .schema import ChangeRecord
from .source_files import read_karpathy_entries

LEVIR_CC_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def levir_cc_records(root: Union[str, os.PathLike], captions_file: Union[str, os.PathLike, None] = None
                     ) -> Iterator[ChangeRecord]:
    """Records of LEVIR-CC (or LEVIR-MCI) from its Karpathy-style caption file, joined to images on filename.

    Images are `ROOT/images/{filepath}/A/<filename>` (before) and `.../B/<filename>` (after); when the split folder
    has a `label/` folder (LEVIR-MCI), `label/<filename>` is the change mask. Every caption entry becomes a record,
    whether or not its images exist: the build reports the missing ones. The caption file's `changeflag` is kept;
    entries without one get it derived from the captions. Split "val" is named "validation" (the Hub convention).

    Args:
        root: The dataset folder (holding `images/` and, by default, `LevirCCcaptions.json`).
        captions_file: The caption file, if not `ROOT/LevirCCcaptions.json`.
    """
    root = Path(root)
    captions_file = Path(captions_file) if captions_file else root / "LevirCCcaptions.json"
    folders = {}  # split folder -> (A, B, label or None), looked up once per folder rather than per pair
    for entry in read_karpathy_entries(captions_file):
        filename = entry.filename
        folder = entry.fields.get("filepath", entry.split)
        if folder not in folders:
            split_dir = root / "images" / folder
            folders[folder] = (split_dir / "A", split_dir / "B",
                               split_dir / "label" if (split_dir / "label").is_dir() else None)
        before_dir, after_dir, label_dir = folders[folder]
        yield ChangeRecord(
            id=Path(filename).stem,
            split=LEVIR_CC_SPLITS.get(entry.split, entry.split),
            before=before_dir / filename,
            after=after_dir / filename,
            captions=entry.captions,
            change_flag=entry.fields.get("changeflag"),
            change_mask=label_dir / filename if label_dir else None,
            source="levir_cc",
            origin=f"{captions_file} (images[{entry.position}])",
        )
