"""Change-captioning sets already published as Parquet (e.g. on the Hub), their columns mapped onto the schema."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional, Union

import pyarrow.parquet as pq

from .schema import ChangeRecord, DataInputError

# Schema fields a column mapping may fill; before, after and captions are required.
MAPPABLE_FIELDS = ("id", "before", "after", "captions", "change_flag", "change_mask")
# Rows per batch read: a batch of images stays in the tens of megabytes whatever the file's size.
BATCH_ROWS = 64


def parse_column_mapping(spec: str) -> dict:
    """`FIELD=COLUMN,...` (captions may join columns with "+": `captions=caption_1+caption_2`) as field -> columns.

    Raises `DataInputError` for an unknown field, a missing required one or an item that is not FIELD=COLUMN.
    """
    mapping = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        field, separator, columns = item.partition("=")
        if not separator or not columns.strip() or field.strip() not in MAPPABLE_FIELDS:
            raise DataInputError(f"--columns {spec!r}: {item!r} is not FIELD=COLUMN with FIELD one of "
                                 f"{', '.join(MAPPABLE_FIELDS)}")
        names = [column.strip() for column in columns.split("+")]
        if len(names) > 1 and field.strip() != "captions":
            raise DataInputError(f"--columns {spec!r}: only captions may join several columns with '+'")
        mapping[field.strip()] = names
    missing = [field for field in ("before", "after", "captions") if field not in mapping]
    if missing:
        raise DataInputError(f"--columns {spec!r}: no column given for {', '.join(missing)}")
    return mapping


def _image(value: object, folder: Path, name: str, where: str) -> object:
    """An image cell as a record's image source: a `datasets` Image struct ({bytes, path}), raw bytes, or a path
    (relative to the Parquet file's folder); a null cell is a missing image, which the build reports."""
    if value is None:
        return ""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return {"bytes": value["bytes"], "path": value.get("path") or name}
    if isinstance(value, dict) and value.get("path"):
        return folder / value["path"]
    if isinstance(value, bytes):
        return {"bytes": value, "path": name}
    if isinstance(value, str):
        return folder / value if value else ""
    raise DataInputError(f"{where}: expected an image (bytes, a path or an {{bytes, path}} struct), "
                         f"got {type(value).__name__}")


def _captions(row: dict, columns: list, where: str) -> list:
    captions = []
    for column in columns:
        value = row[column]
        if isinstance(value, str):
            captions.append(value)
        elif isinstance(value, list) and all(isinstance(caption, str) for caption in value):
            captions.extend(value)
        elif value is not None:  # a null cell of one of several caption columns: that row has fewer captions
            raise DataInputError(f"{where}: column {column!r} must be a caption or a list of captions, "
                                 f"got {type(value).__name__}")
    return captions


def parquet_records(files: Iterable[Union[str, os.PathLike]], columns: Union[str, dict], split: str = "train",
                    source: Optional[str] = None) -> Iterator[ChangeRecord]:
    """Records of Parquet files whose columns `columns` maps onto the schema, read a batch at a time.

    Args:
        files: Parquet files or glob patterns (e.g. a downloaded Hub dataset's `data/train-*.parquet`).
        columns: `FIELD=COLUMN,...` or its parsed mapping (`parse_column_mapping`); without an id column, ids are
            `<file stem>-<row>`; without a change_flag column, it is derived from the captions.
        split: Split of all the records.
        source: Source name; defaults to the first file's folder name.
    """
    mapping = parse_column_mapping(columns) if isinstance(columns, str) else columns
    paths = []
    for pattern in map(os.fspath, files):
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise DataInputError(f"{pattern}: no such Parquet file")
        paths += [Path(match) for match in matches]
    for path in paths:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise DataInputError(f"{path}: not a Parquet file ({error})") from None
        needed = [column for names in mapping.values() for column in names]
        absent = [column for column in needed if column not in parquet.schema_arrow.names]
        if absent:
            raise DataInputError(f"{path}: no column(s) {', '.join(map(repr, absent))}; its columns are "
                                 f"{', '.join(parquet.schema_arrow.names)}")
        row_number = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=sorted(set(needed))):
            for row in batch.to_pylist():
                where = f"{path} (row {row_number})"
                record_id = str(row[mapping["id"][0]]) if "id" in mapping else f"{path.stem}-{row_number}"
                mask = row[mapping["change_mask"][0]] if "change_mask" in mapping else None
                yield ChangeRecord(
                    id=record_id,
                    split=split,
                    before=_image(row[mapping["before"][0]], path.parent, f"{record_id}_before", where),
                    after=_image(row[mapping["after"][0]], path.parent, f"{record_id}_after", where),
                    captions=_captions(row, mapping["captions"], where),
                    change_flag=row[mapping["change_flag"][0]] if "change_flag" in mapping else None,
                    change_mask=None if mask is None else _image(mask, path.parent, f"{record_id}_mask", where),
                    source=source or path.parent.name,
                    origin=where,
                )
                row_number += 1
