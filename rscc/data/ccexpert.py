"""CCExpert's records: a JSON list (or JSON Lines) of uid, change_flag, img1_path, img2_path, change_caption."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from .source_files import path_under_root, read_json_records
from .schema import ChangeRecord, DataInputError


def ccexpert_records(records_file: Union[str, os.PathLike], split: str = "train", source: Optional[str] = None,
                     image_root: Union[str, os.PathLike, None] = None, allow_outside_root: bool = False
                     ) -> Iterator[ChangeRecord]:
    """Records in CCExpert's format: a JSON list (or JSON Lines) of
    `{"uid", "change_flag", "img1_path", "img2_path", "change_caption": [...]}`.

    A `change_flag` of -1 or none (CCExpert's "unknown") is derived from the captions.

    Args:
        records_file: The JSON or JSONL file.
        split: Split of all its records (the format has none).
        source: Source name; defaults to the file name without extension.
        image_root: Folder that relative image paths start from; defaults to the file's folder. Paths leading
            outside a given `image_root` are refused unless `allow_outside_root`.
        allow_outside_root: Accept image paths outside `image_root`.
    """
    path = Path(records_file)
    declared_root = image_root is not None
    image_root = Path(image_root) if image_root else path.parent
    for where, item in read_json_records(path):
        missing = [key for key in ("uid", "img1_path", "img2_path", "change_caption") if key not in item]
        if missing:
            raise DataInputError(f"{path}: {where} has no {', '.join(missing)}")
        not_text = [key for key in ("img1_path", "img2_path") if not isinstance(item[key], str)]
        if not_text:
            raise DataInputError(f"{path}: {where}: {', '.join(not_text)} must be a path (text)")
        captions = item["change_caption"]
        change_flag = item.get("change_flag")
        yield ChangeRecord(
            id=str(item["uid"]),
            split=split,
            before=path_under_root(image_root, item["img1_path"], f"{path} ({where})",
                                   allow_outside_root or not declared_root),
            after=path_under_root(image_root, item["img2_path"], f"{path} ({where})",
                                  allow_outside_root or not declared_root),
            captions=[captions] if isinstance(captions, str) else captions,
            change_flag=None if change_flag in (None, -1) else change_flag,
            source=source or path.stem,
            origin=f"{path} ({where})",
        )
