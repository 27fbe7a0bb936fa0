"""VisMin (Awal et al., NeurIPS 2024): images and minimally edited copies, each with its own caption, in the
training JSON its repository documents: `{"image_path", "caption", "negatives": [{"edited_image_path",
"edited_caption"}]}`. No real record could be read here (see the closing note of issue 20): this follows the
documented layout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Union

from ..caption_text import collapse_whitespace
from .schema import ChangeRecord, DataInputError
from .source_files import check_fields, path_under_root, read_json_records

VISMIN_CAPTION_NOTE = ("Captions are derived from VisMin's two image captions as 'X becomes Y' (`rscc data vismin`); "
                       "CCExpert rewrote them with a language model instead.")


def change_caption(caption: str, edited_caption: str) -> str:
    """The change from an image to its edited copy, from their captions: "two men ... becomes three men ..."."""
    def clause(text: str) -> str:
        text = collapse_whitespace(text).rstrip(".")
        return text[:1].lower() + text[1:]
    return f"{clause(caption)} becomes {clause(edited_caption)}"


def vismin_records(annotations: Union[str, os.PathLike], image_root: Union[str, os.PathLike], split: str = "train",
                   allow_outside_root: bool = False) -> Iterator[ChangeRecord]:
    """One record per edit (`negatives` item): the image to its edited copy, captioned by `change_caption`.

    Image paths are absolute in the published file ("/coco/images/train2017/...jpg"); they are taken relative to
    `image_root`. Ids are the edited image's path without its extension ("edited/coco/234136/0").

    Args:
        annotations: The training JSON (or JSON Lines) file.
        image_root: The folder the files' image paths start from.
        split: Split of all its records.
        allow_outside_root: Accept image paths that lead outside `image_root` (`../`); refused by default.
    """
    path, image_root = Path(annotations), Path(image_root)
    for where, item in read_json_records(path):
        check_fields(path, where, item, {"image_path": str, "caption": str})
        negatives = item.get("negatives")
        if not isinstance(negatives, list) or not negatives:
            raise DataInputError(f"{path}: {where}: negatives must be a non-empty list of edits")
        for position, edit in enumerate(negatives):
            if not isinstance(edit, dict):
                raise DataInputError(f"{path}: {where}: negatives[{position}] is not a JSON object")
            check_fields(path, f"{where} negatives[{position}]", edit,
                         {"edited_image_path": str, "edited_caption": str})
            edited = PurePosixPath(edit["edited_image_path"].lstrip("/"))
            yield ChangeRecord(
                id=str(edited.with_suffix("")),
                split=split,
                before=path_under_root(image_root, item["image_path"].lstrip("/"), f"{path} ({where})",
                                       allow_outside_root),
                after=path_under_root(image_root, str(edited), f"{path} ({where})", allow_outside_root),
                captions=[change_caption(item["caption"], edit["edited_caption"])],
                change_flag=1,
                source="vismin",
                origin=f"{path} ({where} negatives[{position}])",
            )
