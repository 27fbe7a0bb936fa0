"""Spot-the-diff (Jhamtani & Berg-Kirkpatrick, EMNLP 2018): `annotations/{train,val,test}.json` joined to
`resized_images/<img_id>.png` (before) and `<img_id>_2.png` (after)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from .schema import ChangeRecord
from .source_files import check_fields, read_json_records, split_files

SPOT_THE_DIFF_SPLITS = {"train.json": "train", "val.json": "validation", "test.json": "test"}


def spot_the_diff_records(annotations: Union[str, os.PathLike], images: Union[str, os.PathLike]
                          ) -> Iterator[ChangeRecord]:
    """Records of Spot-the-diff: every `{"img_id", "sentences"}` item of the split files in `annotations`.

    The sentences are kept as written (lower case, no final period). `change_flag` is derived from them: annotators
    wrote "no change" in free text ("there are no differences"), not LEVIR-CC's canonical sentences, so such pairs
    stay flagged as changed, as the dataset (pairs picked for their differences) means them.

    Args:
        annotations: The folder holding `train.json`, `val.json` and `test.json` (those present are read).
        images: The folder holding `<img_id>.png` and `<img_id>_2.png`.
    """
    annotations, images = Path(annotations), Path(images)
    files = split_files(annotations, SPOT_THE_DIFF_SPLITS, "Spot-the-diff")
    for path, split in files:
        for where, item in read_json_records(path):
            check_fields(path, where, item, {"img_id": str, "sentences": list})
            yield ChangeRecord(
                id=item["img_id"],
                split=split,
                before=images / f"{item['img_id']}.png",
                after=images / f"{item['img_id']}_2.png",
                captions=item["sentences"],
                source="spot_the_diff",
                origin=f"{path} ({where})",
            )
