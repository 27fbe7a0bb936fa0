"""Image Editing Request (Tan et al., ACL 2019): `{train,valid,test}.json` of `{"img0", "img1", "sents", "uid"}`
joined to the images folder on file name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from .schema import ChangeRecord
from .source_files import check_fields, read_json_records, split_files

IMAGE_EDITING_REQUEST_SPLITS = {"train.json": "train", "valid.json": "validation", "test.json": "test"}


def image_editing_request_records(annotations: Union[str, os.PathLike], images: Union[str, os.PathLike]
                                  ) -> Iterator[ChangeRecord]:
    """Records of Image Editing Request: every item of the split files in `annotations`, id `uid`.

    The requests are kept as the users wrote them (mixed case, typos): they are the dataset. Every pair is an edit,
    so every pair is flagged as changed.

    Args:
        annotations: The folder holding `train.json`, `valid.json` and `test.json` (those present are read).
        images: The folder holding the `img0` (source) and `img1` (edited) images.
    """
    annotations, images = Path(annotations), Path(images)
    files = split_files(annotations, IMAGE_EDITING_REQUEST_SPLITS, "Image Editing Request")
    for path, split in files:
        for where, item in read_json_records(path):
            check_fields(path, where, item, {"img0": str, "img1": str, "sents": list, "uid": str})
            yield ChangeRecord(
                id=item["uid"],
                split=split,
                before=images / item["img0"],
                after=images / item["img1"],
                captions=item["sents"],
                change_flag=1,
                source="image_editing_request",
                origin=f"{path} ({where})",
            )
