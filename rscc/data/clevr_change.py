"""CLEVR-Change (Park, Darrell and Rohrbach, ICCV 2019): synthetic scenes, each with a semantically changed and a
distractor (viewpoint and lighting only) after image, in the layout of its published `data/` folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from .schema import ChangeRecord, DataInputError
from .source_files import read_json_file

CLEVR_CHANGE_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _read_captions(path: Path) -> dict:
    """`{"CLEVR_default_XXXXXX.png": [caption, ...]}`, every value a list of text."""
    captions = read_json_file(path, dict, "a JSON object")
    for name, sentences in captions.items():
        if not isinstance(sentences, list) or not all(isinstance(sentence, str) for sentence in sentences):
            raise DataInputError(f"{path}: entry {name!r} must be a list of captions (text)")
    return captions


def clevr_change_records(data_dir: Union[str, os.PathLike]) -> Iterator[ChangeRecord]:
    """Two records per scene index of `splits.json`: `images/CLEVR_default_<i>.png` to
    `sc_images/CLEVR_semantic_<i>.png` with its `change_captions.json` entry (change_flag 1), and to
    `nsc_images/CLEVR_nonsemantic_<i>.png` with its `no_change_captions.json` entry (change_flag 0).

    Ids are `<i>_change` and `<i>_no_change` (i zero-padded to 6 digits). A scene without a caption entry gets a
    record without captions, which the build reports.

    Args:
        data_dir: The dataset's `data/` folder.
    """
    data_dir = Path(data_dir)
    splits = read_json_file(data_dir / "splits.json", dict, "a JSON object")
    captions = {1: _read_captions(data_dir / "change_captions.json"),
                0: _read_captions(data_dir / "no_change_captions.json")}
    after_images = {1: ("sc_images", "CLEVR_semantic", "change"), 0: ("nsc_images", "CLEVR_nonsemantic", "no_change")}
    for name, split in CLEVR_CHANGE_SPLITS.items():
        indices = splits.get(name, [])
        if not isinstance(indices, list) or not all(isinstance(index, int) and index >= 0 for index in indices):
            raise DataInputError(f"{data_dir / 'splits.json'}: {name!r} must be a list of scene indices (integers)")
        for index in indices:
            before_name = f"CLEVR_default_{index:06d}.png"
            for change_flag, (folder, prefix, suffix) in after_images.items():
                caption_file = "change_captions.json" if change_flag else "no_change_captions.json"
                yield ChangeRecord(
                    id=f"{index:06d}_{suffix}",
                    split=split,
                    before=data_dir / "images" / before_name,
                    after=data_dir / folder / f"{prefix}_{index:06d}.png",
                    captions=captions[change_flag].get(before_name, []),
                    change_flag=change_flag,
                    source="clevr_change",
                    origin=f"{data_dir / 'splits.json'} ({name} index {index}; captions in {caption_file})",
                )
