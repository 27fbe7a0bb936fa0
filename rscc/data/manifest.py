"""A user's manifest: a CSV or JSONL file with one image pair, or one series of dates, per row (also what `rscc
caption` reads)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from ..defaults import MANIFEST_FIELDS
from ..errors import read_text_file
from .source_files import read_json_records
from .schema import ChangeRecord, DataInputError

_NUMBERED_CAPTION = re.compile(r"^caption_\d+$")
# A series' dates, oldest first, in CSV (`image_1`, `image_2`, ...) instead of `before` and `after`.
_NUMBERED_IMAGE = re.compile(r"^image_\d+$")


def _read_csv_rows(path: Path) -> tuple:
    """(line, row) pairs and the header of a CSV manifest, every row read or a `DataInputError` naming the line.

    A manifest cell is a path, an id, a flag or a one-sentence caption, so a cell spanning lines is a quote left
    open: csv would otherwise swallow every later row into that one cell.
    """
    text = read_text_file(path, encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows, last_line = [], 1
    try:
        for row in reader:
            breaks = sum(cell.count("\n") for cell in row.values() if isinstance(cell, str))
            if breaks:
                first = reader.line_num - breaks
                raise DataInputError(
                    f"{path}: line {first}: a cell runs over lines {first}-{reader.line_num}: a quote (\") is left "
                    'open; close it, or double the quotes inside a quoted cell ("")'
                )
            rows.append((f"line {reader.line_num}", row))
            last_line = reader.line_num
    except csv.Error as error:
        raise DataInputError(f"{path}: the row after line {last_line} is not valid CSV ({error}): a quote (\") may be "
                             "left open") from None
    columns = reader.fieldnames or []
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:  # csv.DictReader keeps the last cell of a repeated column and drops the others
        raise DataInputError(f"{path}: line 1 names the column(s) {', '.join(map(repr, repeated))} more than once; "
                             "number repeated captions caption_1, caption_2, ...")
    for where, row in rows:
        if None in row:  # csv.DictReader's key for cells beyond the header
            raise DataInputError(f"{path}: {where} has more cells than the header has columns "
                                 f"(quote captions that contain commas)")
    return rows, columns


def read_manifest(path: Path, require_captions: bool = True) -> list:
    """(line, row) pairs of a CSV or JSONL manifest; unknown columns are an error, since a misspelt optional
    column (say "msk") would otherwise be dropped without a word. Captions are optional for captioning runs."""
    if path.suffix == ".csv":
        rows, columns = _read_csv_rows(path)
    elif path.suffix == ".jsonl":
        rows = read_json_records(path)
        columns = sorted({key for _, row in rows for key in row})
        for where, row in rows:
            text_keys = ("before", "after", "mask", "split", "caption", *filter(_NUMBERED_IMAGE.match, row))
            wrong = [key for key in text_keys if row.get(key) is not None and not isinstance(row[key], str)]
            images = row.get("images")
            if images is not None and not (isinstance(images, list) and all(isinstance(x, str) for x in images)):
                wrong.append("images")
            captions = row.get("captions")
            if captions is not None and not (isinstance(captions, str) or (
                    isinstance(captions, list) and all(isinstance(caption, str) for caption in captions))):
                wrong.append("captions")
            if wrong:
                raise DataInputError(f"{path}: {where}: {', '.join(wrong)} must be text (captions, images: lists of "
                                     "text)")
    else:
        raise DataInputError(f"{path}: a manifest must be a .csv or a .jsonl file")
    unknown = [c for c in columns if c not in MANIFEST_FIELDS and not _NUMBERED_CAPTION.match(c or "")
               and not _NUMBERED_IMAGE.match(c or "")]
    if unknown:
        raise DataInputError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(MANIFEST_FIELDS)}, image_1, image_2, ... or caption_1, caption_2, ...")
    # Rows may mix pairs and series of any N; whether each row gives one or the other is `manifest_dates`'s check.
    has_pairs = "before" in columns and "after" in columns
    has_series = "images" in columns or any(_NUMBERED_IMAGE.match(c or "") for c in columns)
    has_captions = any(c in ("caption", "captions") or _NUMBERED_CAPTION.match(c) for c in columns)
    if not (has_pairs or has_series) or (require_captions and not has_captions):
        needed = "before and after (or a series: images, or image_1, image_2, ...)"
        if require_captions:
            needed += " and caption (or captions, or caption_1, caption_2, ...)"
        raise DataInputError(f"{path}: a manifest needs the columns {needed}")
    return rows


def manifest_captions(row: dict) -> list:
    captions = row.get("captions")
    if captions is None:
        captions = [row["caption"]] if row.get("caption") is not None else []
    elif isinstance(captions, str):
        captions = [captions]
    numbered = sorted((key for key in row if _NUMBERED_CAPTION.match(key)), key=lambda key: int(key[8:]))
    # A CSV row with fewer captions than the widest row leaves trailing caption_<n> cells empty.
    return list(captions) + [row[key] for key in numbered if row[key]]


def manifest_dates(path: Path, where: str, row: dict) -> list:
    """A manifest row's image paths, oldest first, as the row gives them (relative to the manifest's folder or
    absolute): `before` and `after` (a pair; an empty cell stays "", for the caller to report), or a series of
    N >= 2 dates: `images` (JSONL), or `image_1`, `image_2`, ... (CSV; a row of fewer dates than the widest leaves
    its trailing cells empty). The one reader of these columns, for `rscc data manifest` and `rscc caption`.

    Args:
        path (`Path`): the manifest, for messages.
        where (`str`): the row's place in it (`line 3`), for messages.
        row (`dict`): the row as [`read_manifest`] returns it.

    Raises:
        DataInputError: the row gives both a pair and a series, a series in both forms, a series with a gap
            (image_1, image_3) or a series of fewer than 2 dates.
    """
    numbered = sorted((key for key in row if _NUMBERED_IMAGE.match(key)), key=lambda key: int(key[6:]))
    filled = [key for key in numbered if row[key]]
    kinds = [name for name, given in (("before, after", row.get("before") or row.get("after")),
                                      ("images", row.get("images") is not None), ("image_1, image_2, ...", filled))
             if given]
    if len(kinds) > 1:
        raise DataInputError(f"{path}: {where}: gives the dates as {' and as '.join(kinds)}; expected one of before, "
                             "after (a pair), images or image_1, image_2, ... (a series)")
    if row.get("images") is not None:
        dates = list(row["images"])
    elif filled:
        expected = [f"image_{number}" for number in range(1, len(filled) + 1)]
        if filled != expected:
            skipped = next(name for name, key in zip(expected, filled) if name != key)
            raise DataInputError(f"{path}: {where}: the series {', '.join(filled)} has no {skipped}; expected its "
                                 "dates as image_1, image_2, ... without gaps")
        dates = [row[key] for key in filled]
    else:
        return [str(row.get(key) or "") for key in ("before", "after")]
    if len(dates) < 2:
        raise DataInputError(f"{path}: {where}: a series needs at least 2 dates, got {len(dates)}")
    return dates


def manifest_records(manifest: Union[str, os.PathLike], split: str = "train", source: Optional[str] = None
                     ) -> Iterator[ChangeRecord]:
    """Records of a user's manifest: a CSV or JSONL file with one image pair, or one series of dates, per row.

    Columns: `before`, `after` (image paths, relative to the manifest's folder or absolute) or a series of N >= 2
    co-registered dates, oldest first, as `images` (a list, JSONL) or `image_1`, `image_2`, ... (CSV; rows may
    differ in N); the captions as `caption` (one), `captions` (a list, JSONL) or `caption_1`, `caption_2`, ...
    (CSV); optional `id` (default: the first image's file name without extension), `mask` (first to last date),
    `change_flag` (0/1; default: derived from the captions) and `split`.

    Args:
        manifest: The CSV or JSONL file.
        split: Split of the rows that have no `split` column.
        source: Source name; defaults to the manifest's file name without extension.
    """
    path = Path(manifest)
    for where, row in read_manifest(path):
        dates = manifest_dates(path, where, row)
        before, after, mask = dates[0], dates[-1], str(row.get("mask") or "")
        change_flag = row.get("change_flag")
        if isinstance(change_flag, str):
            change_flag = int(change_flag) if change_flag.strip() in ("0", "1") else (change_flag.strip() or None)
        yield ChangeRecord(
            id=str(row["id"]) if row.get("id") not in (None, "") else Path(before).stem,
            split=row.get("split") or split,
            before=path.parent / before if before else "",
            after=path.parent / after if after else "",
            captions=manifest_captions(row),
            change_flag=change_flag,
            change_mask=path.parent / mask if mask else None,
            source=source or path.stem,
            origin=f"{path} ({where})",
            images=tuple(path.parent / date if date else "" for date in dates[1:-1]),
        )
