"""Change-captioning datasets: one schema for every source, validated Parquet builds, training views.

Every source (LEVIR-CC, Dubai-CC, CCExpert records, a user's CSV/JSONL manifest, or a mixture of built datasets)
becomes rows of `FEATURES`:

    id            str, unique within its source
    before, after datasets.Image, the original encoded bytes (never re-encoded)
    captions      list of str, whitespace-collapsed but otherwise as written in the source
    change_flag   0 (nothing changed) or 1
    change_mask   datasets.Image or null, bytes as in the source (LEVIR-MCI 0/128/255, LEVIR-CD 0/255)
    source        str, e.g. "levir_cc"

A converter yields `ChangeRecord`s; `build_dataset` validates all of them, writes `data/{split}-*.parquet` and a
dataset card (README.md) whose YAML makes `datasets.load_dataset(folder)` return the splits, and which the Hub takes
as it is (`hf upload USER/NAME FOLDER --repo-type dataset`, or `HfApi.upload_folder`).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

from rscc.captions import canonical_form, is_no_change_caption
from rscc.cli import EXIT_BAD_INPUT, EXIT_INVALID_RECORDS, EXIT_OK, positive_int
from rscc.errors import RsccInputError, read_text_file
from rscc.processing_rscc import load_change_mask, pillow_truncates, to_sentence_case

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "before": datasets.Image(),
        "after": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "change_flag": datasets.Value("int8"),
        "change_mask": datasets.Image(),
        "source": datasets.Value("string"),
    }
)

# An image given as a file path, or as already-encoded bytes {"bytes": ..., "path": file name} (rows of a built set).
ImageSource = Union[str, os.PathLike, dict]

# Classes a stored change mask may encode: LEVIR-MCI's three (0/128/255, or class ids 0/1/2), LEVIR-CD's two.
MAX_MASK_CLASSES = 3
# Small row groups let readers (and the Hub's dataset viewer) fetch a few pairs without reading 50 MB of images.
ROWS_PER_ROW_GROUP = 100
DEFAULT_MAX_SHARD_SIZE = 500 * 1024**2
_SPLIT_ORDER = ("train", "validation", "test")
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what `datasets` accepts as a split name


@dataclass
class ChangeRecord:
    """One image pair as a converter reads it, before validation.

    Args:
        id: Identifier, unique within `source`.
        split: Split name ("train", "validation", "test", ...).
        before: The earlier image.
        after: The later image, co-registered with `before`.
        captions: Reference captions.
        change_flag: 0 (no change) or 1; None derives it from the captions (0 when all of them are
            LEVIR-CC's canonical no-change sentences).
        change_mask: Optional per-pixel change mask of the same size as the images.
        source: Short source name such as "levir_cc".
        origin: Where the record was read from (caption file and entry, manifest line), for error messages.
    """

    id: str
    split: str
    before: ImageSource
    after: ImageSource
    captions: list
    change_flag: Optional[int] = None
    change_mask: Optional[ImageSource] = None
    source: str = ""
    origin: str = ""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: `kind` groups problems in summaries, `file` is what to look at."""

    kind: str
    id: str
    file: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.id}] {self.kind}: {self.detail}"


class DataInputError(RsccInputError):
    """A source file (caption file, records, manifest) or an option of a build is not what rscc expects."""


class InvalidRecordsError(RsccInputError):
    """Raised by a build that found invalid records; `problems` holds every one of them."""

    def __init__(self, problems: list[Problem], max_listed: int = 20):
        self.problems = problems
        super().__init__(summarize_problems(problems, max_listed=max_listed))


def summarize_problems(problems: list[Problem], max_listed: int = 20) -> str:
    """A readable summary: problem counts by kind, then the first `max_listed` problems.

    Args:
        problems: The problems found by a build.
        max_listed: How many problems to quote in full.
    """
    lines = [f"{len(problems)} problem(s) in {len({problem.id for problem in problems})} record(s):"]
    lines += [f"  {count:>7}  {kind}" for kind, count in Counter(p.kind for p in problems).most_common()]
    lines.append("First problems:" if len(problems) > max_listed else "Problems:")
    lines += [f"  {problem}" for problem in problems[:max_listed]]
    if len(problems) > max_listed:
        lines.append(f"  ... and {len(problems) - max_listed} more")
    lines.append("Fix them, or build with skip_invalid=True (--skip-invalid) to leave those records out; "
                 "skipped ids are listed in the dataset card.")
    return "\n".join(lines)


@dataclass
class BuildSummary:
    """What `build_dataset` wrote.

    Args:
        out_dir: The dataset folder.
        split_sizes: Pairs written per split.
        skipped: Problems of the records left out (only with `skip_invalid=True`).
        seconds: Wall time of the build.
        output_bytes: Size of the Parquet shards plus the card.
    """

    out_dir: Path
    split_sizes: dict
    skipped: list
    seconds: float
    output_bytes: int

    @property
    def num_pairs(self) -> int:
        return sum(self.split_sizes.values())

    def __str__(self) -> str:
        splits = ", ".join(f"{name}: {size}" for name, size in self.split_sizes.items())
        text = (f"Wrote {self.num_pairs} pairs ({splits}) to {self.out_dir}: {self.output_bytes / 1e6:.1f} MB "
                f"in {self.seconds:.1f} s ({self.num_pairs / max(self.seconds, 1e-9):.0f} pairs/s).")
        if self.skipped:
            skipped_ids = len({problem.id for problem in self.skipped})
            text += f"\nSkipped {skipped_ids} invalid record(s), listed in {self.out_dir / 'README.md'}."
        return text


# --------------------------------------------------------------------------------------------------------------------
# Converters: each yields plain ChangeRecords and touches no image; `build_dataset` does the checking.
# --------------------------------------------------------------------------------------------------------------------

LEVIR_CC_SPLITS = {"train": "train", "val": "validation", "test": "test"}
DUBAI_CC_SPLITS = {"Train": "train", "Validation": "validation", "Test": "test"}

# Dubai-CC's annotators wrote free-form no-change sentences ("No change was made in this area.", "All remained the
# same."); these patterns cover every one of them in the published caption files (canonical form).
_DUBAI_CC_NO_CHANGE = re.compile(
    r"^(there is )?no (change|changes|changed|difference)\b"
    r"|^nothing (has )?changed\b"
    r"|^(everything|all) (remains|remained|is) the same\b"
    r"|^the area appears the same$"
)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise DataInputError(f"{path}: not valid JSON ({error})") from None


def _karpathy_entries(path: Path) -> list:
    """The `images` list of a Karpathy-style caption file, with the keys every entry needs checked."""
    content = _read_json(path)
    entries = content.get("images") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise DataInputError(f'{path}: expected a Karpathy-style caption file, {{"images": [...]}}')
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataInputError(f"{path}: images[{position}] is a {type(entry).__name__}, not a JSON object")
        missing = [key for key in ("filename", "split", "sentences") if key not in entry]
        if missing:
            raise DataInputError(f"{path}: images[{position}] has no {', '.join(missing)}")
        wrong = [key for key, kind in (("filename", str), ("split", str), ("sentences", list))
                 if not isinstance(entry[key], kind)]
        wrong += [f"sentences[{index}]" for index, sentence in enumerate(entry["sentences"])
                  if not isinstance(sentence, dict) or not isinstance(sentence.get("raw", ""), str)]
        if wrong:
            raise DataInputError(f"{path}: images[{position}]: {', '.join(wrong)} not of the expected type "
                                 '(filename and split: text; sentences: a list of {"raw": text})')
    return entries


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
    for position, entry in enumerate(_karpathy_entries(captions_file)):
        filename = entry["filename"]
        folder = entry.get("filepath", entry["split"])
        if folder not in folders:
            split_dir = root / "images" / folder
            folders[folder] = (split_dir / "A", split_dir / "B",
                               split_dir / "label" if (split_dir / "label").is_dir() else None)
        before_dir, after_dir, label_dir = folders[folder]
        yield ChangeRecord(
            id=Path(filename).stem,
            split=LEVIR_CC_SPLITS.get(entry["split"], entry["split"]),
            before=before_dir / filename,
            after=after_dir / filename,
            captions=[sentence.get("raw", "") for sentence in entry["sentences"]],
            change_flag=entry.get("changeflag"),
            change_mask=label_dir / filename if label_dir else None,
            source="levir_cc",
            origin=f"{captions_file} (images[{position}])",
        )


def is_dubai_cc_no_change_caption(caption: str) -> bool:
    """Whether `caption` is one of Dubai-CC's no-change sentences (case and period ignored)."""
    return bool(_DUBAI_CC_NO_CHANGE.search(canonical_form(caption)))


def dubai_cc_records(captions_dir: Union[str, os.PathLike], images_dir: Union[str, os.PathLike],
                     before_dir: str = "500_2000", after_dir: str = "500_2010") -> Iterator[ChangeRecord]:
    """Records of Dubai-CC from its `{Train,Validation,Test}_Dubai_CC.json` caption files.

    Dubai-CC has no change flag: a pair is flagged 0 when all its captions are no-change sentences
    (`is_dubai_cc_no_change_caption`), as LEVIR-CC's flag is defined.

    Args:
        captions_dir: The folder holding the three caption files (or its parent, holding
            `description_jsontr_te_val/`).
        images_dir: The folder holding the before and after image folders.
        before_dir: Subfolder of `images_dir` with the 2000 images.
        after_dir: Subfolder of `images_dir` with the 2010 images.
    """
    captions_dir, images_dir = Path(captions_dir), Path(images_dir)
    if (captions_dir / "description_jsontr_te_val").is_dir():
        captions_dir = captions_dir / "description_jsontr_te_val"
    for file_split, split in DUBAI_CC_SPLITS.items():
        path = captions_dir / f"{file_split}_Dubai_CC.json"
        for position, entry in enumerate(_karpathy_entries(path)):
            filename = entry["filename"]
            captions = [sentence.get("raw", "") for sentence in entry["sentences"]]
            yield ChangeRecord(
                id=Path(filename).stem,
                split=split,
                before=images_dir / before_dir / filename,
                after=images_dir / after_dir / filename,
                captions=captions,
                change_flag=0 if captions and all(map(is_dubai_cc_no_change_caption, captions)) else 1,
                source="dubai_cc",
                origin=f"{path} (images[{position}])",
            )


def _read_json_or_jsonl(path: Path) -> list:
    """Items of a JSON list or of a JSON Lines file, each with its position for error messages."""
    if path.suffix == ".jsonl":
        items = []
        for number, line in enumerate(read_text_file(path).splitlines(), start=1):
            if line.strip():
                try:
                    items.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataInputError(f"{path}: line {number} is not valid JSON ({error})") from None
    else:
        content = _read_json(path)
        if not isinstance(content, list):
            raise DataInputError(f"{path}: expected a JSON list of records")
        items = [(f"[{position}]", item) for position, item in enumerate(content)]
    for where, item in items:
        if not isinstance(item, dict):
            raise DataInputError(f"{path}: {where} is not a JSON object")
    return items


def ccexpert_records(records_file: Union[str, os.PathLike], split: str = "train", source: Optional[str] = None,
                     image_root: Union[str, os.PathLike, None] = None) -> Iterator[ChangeRecord]:
    """Records in CCExpert's format: a JSON list (or JSON Lines) of
    `{"uid", "change_flag", "img1_path", "img2_path", "change_caption": [...]}`.

    A `change_flag` of -1 or none (CCExpert's "unknown") is derived from the captions.

    Args:
        records_file: The JSON or JSONL file.
        split: Split of all its records (the format has none).
        source: Source name; defaults to the file name without extension.
        image_root: Folder that relative image paths start from; defaults to the file's folder.
    """
    path = Path(records_file)
    image_root = Path(image_root) if image_root else path.parent
    for where, item in _read_json_or_jsonl(path):
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
            before=image_root / str(item["img1_path"]),
            after=image_root / str(item["img2_path"]),
            captions=[captions] if isinstance(captions, str) else captions,
            change_flag=None if change_flag in (None, -1) else change_flag,
            source=source or path.stem,
            origin=f"{path} ({where})",
        )


MANIFEST_FIELDS = ("id", "split", "before", "after", "caption", "captions", "mask", "change_flag")
_NUMBERED_CAPTION = re.compile(r"^caption_\d+$")


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
        rows = _read_json_or_jsonl(path)
        columns = sorted({key for _, row in rows for key in row})
        for where, row in rows:
            wrong = [key for key in ("before", "after", "mask", "split", "caption")
                     if row.get(key) is not None and not isinstance(row[key], str)]
            captions = row.get("captions")
            if captions is not None and not (isinstance(captions, str) or (
                    isinstance(captions, list) and all(isinstance(caption, str) for caption in captions))):
                wrong.append("captions")
            if wrong:
                raise DataInputError(f"{path}: {where}: {', '.join(wrong)} must be text (captions: a list of text)")
    else:
        raise DataInputError(f"{path}: a manifest must be a .csv or a .jsonl file")
    unknown = [c for c in columns if c not in MANIFEST_FIELDS and not _NUMBERED_CAPTION.match(c or "")]
    if unknown:
        raise DataInputError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(MANIFEST_FIELDS)} or caption_1, caption_2, ...")
    missing = [c for c in ("before", "after") if c not in columns]
    has_captions = any(c in ("caption", "captions") or _NUMBERED_CAPTION.match(c) for c in columns)
    if missing or (require_captions and not has_captions):
        needed = "before, after and caption (or captions, or caption_1, caption_2, ...)" if require_captions else (
            "before and after")
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


def manifest_records(manifest: Union[str, os.PathLike], split: str = "train", source: Optional[str] = None
                     ) -> Iterator[ChangeRecord]:
    """Records of a user's manifest: a CSV or JSONL file with one image pair per row.

    Columns: `before`, `after` (image paths, relative to the manifest's folder or absolute), the captions as
    `caption` (one), `captions` (a list, JSONL) or `caption_1`, `caption_2`, ... (CSV); optional `id` (default:
    the before image's file name without extension), `mask`, `change_flag` (0/1; default: derived from the
    captions) and `split`.

    Args:
        manifest: The CSV or JSONL file.
        split: Split of the rows that have no `split` column.
        source: Source name; defaults to the manifest's file name without extension.
    """
    path = Path(manifest)
    for where, row in read_manifest(path):
        before, after, mask = (str(row.get(key) or "") for key in ("before", "after", "mask"))
        change_flag = row.get("change_flag")
        if isinstance(change_flag, str):
            change_flag = int(change_flag) if change_flag.strip() in ("0", "1") else (change_flag.strip() or None)
        yield ChangeRecord(
            id=str(row.get("id") or Path(before).stem),
            split=row.get("split") or split,
            before=path.parent / before if before else "",
            after=path.parent / after if after else "",
            captions=manifest_captions(row),
            change_flag=change_flag,
            change_mask=path.parent / mask if mask else None,
            source=source or path.stem,
            origin=f"{path} ({where})",
        )


@dataclass(frozen=True)
class MixtureComponent:
    """One source of a mixture.

    Args:
        path: A dataset folder built by this module, or a Hub dataset repo in the same schema.
        split: Which split of it to take.
        factor: How many times each of its pairs appears in the mixture (CCExpert: LEVIR-CC train x6).
    """

    path: str
    split: str = "train"
    factor: int = 1

    @classmethod
    def parse(cls, spec: str) -> "MixtureComponent":
        """Parse `PATH:SPLIT:FACTOR`, e.g. `out/levir_cc:train:6`."""
        parts = spec.rsplit(":", 2)
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise DataInputError(f"mixture source {spec!r}: expected PATH:SPLIT:FACTOR with FACTOR a positive integer")
        return cls(parts[0], parts[1], int(parts[2]))


def mixture_records(components: Iterable[MixtureComponent], split: str = "train") -> Iterator[ChangeRecord]:
    """Records of several built datasets, each pair repeated `factor` times.

    Repeats get ids `<id>#<k>` (k = 1 .. factor-1) so ids stay unique within each source.

    Args:
        components: The sources and their factors.
        split: Split name of every record of the mixture.
    """
    for component in components:
        if component.factor < 1:
            raise ValueError(f"{component.path}: mixture factor must be at least 1, got {component.factor}")
        # Streaming reads the Parquet shards directly instead of converting each source into the Arrow cache first.
        rows = _load_built_dataset(component.path, split=component.split, streaming=True)
        missing = [name for name in FEATURES if rows.features is not None and name not in rows.features]
        if missing:
            raise ValueError(f"{component.path}: not a change-captioning dataset of this schema "
                             f"(no column {', '.join(missing)})")
        for column in ("before", "after", "change_mask"):
            rows = rows.cast_column(column, datasets.Image(decode=False))
        for row in rows:
            for copy in range(component.factor):
                yield ChangeRecord(
                    id=row["id"] if copy == 0 else f"{row['id']}#{copy}",
                    split=split,
                    before=row["before"],
                    after=row["after"],
                    captions=row["captions"],
                    change_flag=row["change_flag"],
                    change_mask=row["change_mask"],
                    source=row["source"],
                    origin=f"{component.path} ({component.split})",
                )


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------


class _ImageProblem(Exception):
    def __init__(self, kind: str, file: str, detail: str):
        super().__init__(detail)
        self.kind, self.file, self.detail = kind, file, detail


def _load_image(source: ImageSource) -> tuple:
    """Encoded bytes as stored ({"bytes", "path"}), the file to name in messages, and the image size.

    Raises `_ImageProblem` when the file is missing or does not decode.
    """
    if isinstance(source, dict) and source.get("bytes") is None:
        source = source.get("path") or ""
    if isinstance(source, dict):
        data, name = source["bytes"], source.get("path") or ""
        file = name
    else:
        file = os.fspath(source)
        name = os.path.basename(file)
        if not file:
            raise _ImageProblem("missing image", "(no path)", "no image path given")
        try:
            with open(file, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise _ImageProblem("missing image", file, "file not found") from None
        except OSError as error:
            raise _ImageProblem("unreadable image", file, f"cannot read file ({error.strerror or error})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if pillow_truncates(image):
                raise _ImageProblem(
                    "16-bit colour image", file, "training decodes images with Pillow, which keeps only the high "
                    "byte of each 16-bit colour band (a black image); convert it to 8 bits first")
            # PNG's verify() checks the CRC of every chunk, which catches truncated and corrupted files without
            # decoding pixels (about 20x faster); other formats have no such check, so they are decoded.
            if image.format == "PNG":
                image.verify()
            else:
                image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError) as error:
        raise _ImageProblem("unreadable image", file, f"not an image Pillow can read ({error})") from None
    if size[0] == 0 or size[1] == 0:
        raise _ImageProblem("unreadable image", file, f"image of {size[0]} x {size[1]} pixels has no pixels")
    return {"bytes": data, "path": name}, file, size


def _check_mask_values(encoded: dict) -> None:
    """Raise `_ImageProblem` unless the mask's values are an encoding the change head reads (`load_change_mask`,
    up to LEVIR-MCI's three classes)."""
    try:
        load_change_mask(Image.open(io.BytesIO(encoded["bytes"])), name="mask", num_classes=MAX_MASK_CLASSES)
    except RsccInputError as error:
        raise _ImageProblem("bad mask values", encoded["path"], str(error)) from None


def _has_words(caption: str) -> bool:
    """Whether a caption says anything once whitespace and punctuation are gone ("." and " , " say nothing)."""
    return any(character.isalnum() for character in caption)


def _check_record(record: ChangeRecord) -> tuple:
    """(row in FEATURES form, encoded size) of a valid record, or (None, problems)."""
    problems = []

    def report(kind: str, file: str, detail: str) -> None:
        problems.append(Problem(kind, str(record.id), file, detail))

    if not record.id:
        report("missing id", record.origin, "record has no id")
    if not isinstance(record.split, str) or not _SPLIT_NAME.match(record.split):
        report("bad split", record.origin, f"split {record.split!r} is not a valid split name (letters, digits, _)")
    if not record.source:
        report("missing source", record.origin, "record has no source name")
    captions = record.captions if isinstance(record.captions, (list, tuple)) else []
    captions = [" ".join(caption.split()) if isinstance(caption, str) else "" for caption in captions]
    if not captions:
        report("empty caption", record.origin, f"no captions (got {record.captions!r})")
    elif not all(map(_has_words, captions)):
        empty = [str(index) for index, caption in enumerate(captions) if not _has_words(caption)]
        report("empty caption", record.origin,
               f"caption(s) {', '.join(empty)} of {len(captions)} empty, punctuation only or not text")
    change_flag = record.change_flag
    if change_flag is None:
        change_flag = 0 if captions and all(map(is_no_change_caption, captions)) else 1
    elif change_flag not in (0, 1):
        report("bad change_flag", record.origin, f"change_flag must be 0 or 1, got {change_flag!r}")

    images = {}
    for role, source in (("before", record.before), ("after", record.after), ("change_mask", record.change_mask)):
        if source is None:
            continue
        try:
            images[role] = _load_image(source)
        except _ImageProblem as problem:
            report(problem.kind if role != "change_mask" else problem.kind.replace("image", "mask"),
                   problem.file, f"{role}: {problem.detail}")
    if "before" in images and "after" in images and images["before"][2] != images["after"][2]:
        (_, _, before_size), (_, after_file, after_size) = images["before"], images["after"]
        report("pair size mismatch", after_file,
               f"after image is {after_size[0]}x{after_size[1]} but before image is {before_size[0]}x{before_size[1]}")
    if "change_mask" in images and "before" in images and images["change_mask"][2] != images["before"][2]:
        (_, _, image_size), (_, mask_file, mask_size) = images["before"], images["change_mask"]
        report("mask size mismatch", mask_file,
               f"mask is {mask_size[0]}x{mask_size[1]} but the images are {image_size[0]}x{image_size[1]}")
    elif "change_mask" in images:
        try:
            _check_mask_values(images["change_mask"][0])
        except _ImageProblem as problem:
            report(problem.kind, images["change_mask"][1], problem.detail)
    if problems:
        return None, problems
    row = {
        "id": str(record.id),
        "before": images["before"][0],
        "after": images["after"][0],
        "captions": captions,
        "change_flag": int(change_flag),
        "change_mask": images["change_mask"][0] if "change_mask" in images else None,
        "source": record.source,
    }
    return row, sum(len(image[0]["bytes"]) for image in images.values())


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


class _SplitWriter:
    """Writes one split into Parquet shards of at most about `max_shard_size` bytes."""

    def __init__(self, data_dir: Path, split: str, max_shard_size: int):
        self.data_dir, self.split, self.max_shard_size = data_dir, split, max_shard_size
        self.shards: list = []
        self.writer: Optional[pq.ParquetWriter] = None
        self.shard_bytes = 0
        self.pending: list = []
        self.pending_bytes = 0
        self.num_rows = 0
        self.num_bytes = 0
        self.stats_by_source: dict = defaultdict(Counter)

    def add(self, row: dict, encoded_size: int) -> None:
        self.pending.append(row)
        self.pending_bytes += encoded_size
        self.stats_by_source[row["source"]].update(pairs=1, captions=len(row["captions"]),
                                                   no_change=row["change_flag"] == 0,
                                                   masks=row["change_mask"] is not None)
        if len(self.pending) >= ROWS_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.writer is None or self.shard_bytes and self.shard_bytes + self.pending_bytes > self.max_shard_size:
            self._open_shard()
        table = pa.Table.from_pylist(self.pending, schema=FEATURES.arrow_schema)
        self.writer.write_table(table)
        self.shard_bytes += self.pending_bytes
        self.num_rows += table.num_rows
        self.num_bytes += table.nbytes
        self.pending, self.pending_bytes = [], 0

    def _open_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.shards.append(self.data_dir / f"{self.split}-{len(self.shards):05d}.parquet")
        # Encoded images are over 99% of the bytes and already compressed, and nearly every value is unique:
        # Parquet compression and dictionaries would cost time and save nothing. Content-defined chunking (as
        # `datasets` writes) lets the Hub's storage deduplicate repeated images, e.g. the repeats of a mixture.
        self.writer = pq.ParquetWriter(
            self.shards[-1], FEATURES.arrow_schema, compression="none", use_dictionary=False,
            use_content_defined_chunking=datasets.config.DEFAULT_CDC_OPTIONS,
            write_page_index=True,
        )
        self.shard_bytes = 0

    def close(self) -> None:
        """Finish the last shard and name the shards `{split}-00000-of-00002.parquet` like `push_to_hub` does."""
        self._flush()
        if self.writer is not None:
            self.writer.close()
        for index, shard in enumerate(self.shards):
            shard.rename(shard.with_name(f"{self.split}-{index:05d}-of-{len(self.shards):05d}.parquet"))


def _checked(records: Iterable[ChangeRecord], num_workers: int) -> Iterator[tuple]:
    """(record, _check_record(record)) in order, checked by `num_workers` threads while the caller writes.

    At most 16 records per worker are in flight, so memory stays bounded however large the source is.
    """
    with ThreadPoolExecutor(num_workers) as pool:
        in_flight: deque = deque()
        for record in records:
            in_flight.append((record, pool.submit(_check_record, record)))
            if len(in_flight) >= 16 * num_workers:
                record, future = in_flight.popleft()
                yield record, future.result()
        while in_flight:
            record, future = in_flight.popleft()
            yield record, future.result()


# What a build writes into its folder; --overwrite replaces only folders holding nothing else.
_BUILD_OUTPUTS = ("README.md", "data")


def _check_replaceable(out_dir: Path, inputs: Iterable[Union[str, os.PathLike]]) -> None:
    """Refuse to replace `out_dir` when it is or holds an input, or holds anything a build does not write."""
    folder = out_dir.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == folder or folder in source.parents:
            raise DataInputError(f"--out {out_dir} holds the input {source}; --overwrite would delete it. "
                                 "Write the dataset to another folder")
    foreign = [path.name for path in out_dir.iterdir() if path.name not in _BUILD_OUTPUTS]
    foreign += [f"data/{path.name}" for path in (out_dir / "data").glob("*") if path.suffix != ".parquet"]
    if foreign or not (out_dir / "data").is_dir() and any(out_dir.iterdir()):
        shown = ", ".join(sorted(foreign)[:5]) or "no data/ folder"
        raise DataInputError(f"--out {out_dir} holds files that rscc data did not write ({shown}); --overwrite only "
                             "replaces a dataset folder built by rscc data. Write the dataset to another folder")


def _split_sort_key(split: str) -> tuple:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def build_dataset(
    records: Iterable[ChangeRecord],
    out_dir: Union[str, os.PathLike],
    *,
    pretty_name: Optional[str] = None,
    license: Optional[str] = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    num_workers: int = 2,
    mixture: Optional[list] = None,
    inputs: Iterable[Union[str, os.PathLike]] = (),
) -> BuildSummary:
    """Validate every record, then write Parquet shards per split and a dataset card to `out_dir`.

    Checks: id present and unique within its source, images present and readable, before and after of the same
    size, at least one caption and none empty, change_flag 0/1, mask readable and of the images' size. Any problem
    fails the whole build with an `InvalidRecordsError` listing all of them, and nothing is written; with
    `skip_invalid` the invalid records are left out and listed (id, file, problem) in the card instead. Images and
    masks are stored as their original encoded bytes.

    Args:
        records: The records, e.g. `levir_cc_records(root)`.
        out_dir: Folder to write; it must not exist or be empty unless `overwrite`.
        pretty_name: Title of the card; defaults to the sources' names.
        license: Hub license id for the card; defaults to the sources' licence when known, else "unknown".
        skip_invalid: Leave invalid records out (listed in the card) instead of failing.
        overwrite: Replace an existing non-empty `out_dir`, which must hold only what a build writes (a card and
            `data/*.parquet`) and none of `inputs`.
        max_shard_size: Approximate maximum bytes of image data per Parquet shard.
        num_workers: Threads reading and checking images while the main thread writes.
        mixture: The components of a mixture, recorded in the card.
        inputs: The source files and folders read (caption files, manifests, image folders, datasets mixed):
            `overwrite` never replaces a folder that is or holds one of them.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataInputError(f"--out {out_dir} is a file; expected a dataset folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        _check_replaceable(out_dir, inputs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination and move it in place at the end, so a failed build leaves nothing behind.
    work_dir = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    try:
        writers: dict = {}
        problems: list = []
        skipped_ids: set = set()
        first_seen: dict = {}
        for record, (row, result) in _checked(records, max(1, num_workers)):
            key = (record.source, str(record.id))
            if key in first_seen:
                result = ([] if row is not None else result) + [Problem(
                    "duplicate id", str(record.id), record.origin,
                    f"id already used in source {record.source!r} by {first_seen[key]}")]
                row = None
            else:
                first_seen[key] = record.origin
            if row is None:
                problems.extend(result)
                skipped_ids.add(key)
                continue
            if record.split not in writers:
                (work_dir / "data").mkdir(exist_ok=True)
                writers[record.split] = _SplitWriter(work_dir / "data", record.split, max_shard_size)
            writers[record.split].add(row, result)
        if problems and not skip_invalid:
            raise InvalidRecordsError(problems)
        if not writers:
            raise ValueError(f"no valid records to write to {out_dir}"
                             + (f" ({len(skipped_ids)} invalid record(s) skipped)" if skipped_ids else ""))
        writers = {split: writers[split] for split in sorted(writers, key=_split_sort_key)}
        for writer in writers.values():
            writer.close()
        _write_card(work_dir, writers, problems, pretty_name=pretty_name, license=license, mixture=mixture)
        if out_dir.exists():
            _check_replaceable(out_dir, inputs)  # again: it may have changed during the build
            shutil.rmtree(out_dir)
        work_dir.rename(out_dir)
    finally:
        if work_dir.exists():
            shutil.rmtree(work_dir)
    output_bytes = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())
    return BuildSummary(out_dir, {split: writer.num_rows for split, writer in writers.items()}, problems,
                        time.perf_counter() - start, output_bytes)


# --------------------------------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------------------------------

# Card text and licence of the sources this module converts; other sources are listed by name only.
KNOWN_SOURCES = {
    "levir_cc": {
        "name": "LEVIR-CC",
        "license": "other",
        "text": "LEVIR-CC (Liu et al., \"Remote Sensing Image Change Captioning With Dual-Branch Transformers: A New "
                "Method and a Large Scale Dataset\", IEEE TGRS 2022): 10,077 pairs of 256x256 images at 0.5 m/px "
                "with 5 captions each. For academic use only; see the dataset's terms. LEVIR-MCI adds change masks "
                "(0 background, 128 road, 255 building).",
    },
    "dubai_cc": {
        "name": "Dubai-CC",
        "license": "other",
        "text": "Dubai-CC (Hoxha et al., \"Change Captioning: A New Paradigm for Multitemporal Remote Sensing Image "
                "Analysis\", IEEE TGRS 2022): 500 Landsat pairs of Dubai (2000, 2010) with 5 captions each. "
                "change_flag is derived: 0 when all captions say nothing changed. See the dataset's terms.",
    },
}


def _size_category(num_pairs: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_pairs < limit:
            return name
    return "1M<n<10M"


def _write_card(folder: Path, writers: dict, skipped: list, *, pretty_name: Optional[str], license: Optional[str],
                mixture: Optional[list]) -> None:
    sources = sorted({source for writer in writers.values() for source in writer.stats_by_source})
    source_names = [KNOWN_SOURCES.get(source, {}).get("name", source) for source in sources]
    if license is None:
        licenses = {KNOWN_SOURCES.get(source, {}).get("license", "unknown") for source in sources}
        license = licenses.pop() if len(licenses) == 1 else "unknown"
    pretty_name = pretty_name or " + ".join(source_names)
    splits = datasets.SplitDict()
    for split, writer in writers.items():
        splits.add(datasets.SplitInfo(name=split, num_bytes=writer.num_bytes, num_examples=writer.num_rows))
    info = datasets.DatasetInfo(
        features=FEATURES, splits=splits,
        download_size=sum(shard.stat().st_size for shard in (folder / "data").iterdir()),
        dataset_size=sum(writer.num_bytes for writer in writers.values()),
    )
    # The Hub asks for a name and a link with license "other": the card's source list states each source's terms.
    license_details = {"license_name": "source-dataset-terms", "license_link": "README"} if license == "other" else {}
    card_data = DatasetCardData(
        license=license,
        **license_details,
        pretty_name=pretty_name,
        task_categories=["image-to-text"],
        tags=["remote-sensing", "change-detection", "change-captioning", "rscc"],
        size_categories=[_size_category(sum(writer.num_rows for writer in writers.values()))],
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": f"data/{split}-*"} for split in writers]}],
    )
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    body = [f"# {pretty_name}", "",
            "Bi-temporal remote-sensing image pairs with change captions, in the `rscc` change-captioning schema. "
            "Images and masks are stored as their original encoded bytes.", ""]
    body += [f"- {KNOWN_SOURCES[source]['text']}" for source in sources if source in KNOWN_SOURCES]
    body += ["", "## Columns", "",
             "| column | type | meaning |", "|---|---|---|",
             "| `id` | string | pair identifier, unique within its source |",
             "| `before`, `after` | image | the earlier and the later image, co-registered |",
             "| `captions` | list of string | reference captions |",
             "| `change_flag` | int8 | 0: nothing changed, 1: something changed |",
             "| `change_mask` | image or null | per-pixel change mask, same size as the images |",
             "| `source` | string | source dataset |",
             "", "## Splits", "",
             "| split | source | pairs | captions | no-change pairs | with mask |", "|---|---|---|---|---|---|"]
    for split, writer in writers.items():
        rows = sorted(writer.stats_by_source.items())
        if len(rows) > 1:
            rows.append(("all", sum(writer.stats_by_source.values(), Counter())))
        body += [f"| {split} | {source} | {stats['pairs']} | {stats['captions']} | {stats['no_change']} | "
                 f"{stats['masks']} |" for source, stats in rows]
    if mixture:
        body += ["", "## Mixture", "",
                 "Each pair of a component appears `factor` times; repeats have ids `<id>#<k>`.", "",
                 "| component | split | factor |", "|---|---|---|"]
        body += [f"| `{component.path}` | {component.split} | {component.factor} |" for component in mixture]
    if skipped:
        by_record = defaultdict(list)
        for problem in skipped:
            by_record[problem.id].append(problem)
        body += ["", "## Skipped records", "",
                 f"{len(by_record)} invalid record(s) were left out of this build:", ""]
        body += [f"- {count} x {kind}" for kind, count in Counter(p.kind for p in skipped).most_common()]
        body += ["", "<details><summary>Skipped ids</summary>", ""]
        body += [f"- `{record_id}`: " + "; ".join(f"{p.kind} ({p.file}: {p.detail})" for p in record_problems)
                 for record_id, record_problems in by_record.items()]
        body += ["", "</details>"]
    body += ["", "## Usage", "", "```python", "from rscc.data import load_change_dataset", "",
             'dataset = load_change_dataset("<this folder or repo id>", split="train")',
             "```", ""]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
    card.save(folder / "README.md")


# --------------------------------------------------------------------------------------------------------------------
# Loading and training views
# --------------------------------------------------------------------------------------------------------------------


def _load_built_dataset(path_or_repo: str, split: Optional[str], **load_kwargs):
    """`datasets.load_dataset`, with a missing folder or split named as such (not as a Hub failure)."""
    try:
        return datasets.load_dataset(path_or_repo, split=split, **load_kwargs)
    except (FileNotFoundError, ConnectionError, ValueError) as error:  # DatasetNotFoundError is one
        where = ("" if Path(path_or_repo).exists()
                 else "no such local folder, and not a dataset the Hugging Face Hub has or could be asked for: ")
        raise DataInputError(f"dataset {path_or_repo} (split {split!r}): {where}{error}") from None


def load_change_dataset(path_or_repo: Union[str, os.PathLike], split: Optional[str] = None, **load_kwargs
                        ) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load a dataset built by this module (a local folder or a Hub dataset repo).

    Args:
        path_or_repo: The folder, or the Hub repo id ("user/levir-cc").
        split: One split ("train", "validation", "test"); None returns a `DatasetDict` of all.
        **load_kwargs: Passed to `datasets.load_dataset` (e.g. `cache_dir`, `revision`, `streaming`).
    """
    dataset = _load_built_dataset(os.fspath(path_or_repo), split=split, **load_kwargs)
    features = dataset.features if split is not None else next(iter(dataset.values())).features
    missing = [name for name in FEATURES if features is not None and name not in features]
    if missing:
        raise ValueError(f"{path_or_repo}: not a change-captioning dataset of this schema "
                         f"(no column {', '.join(missing)})")
    return dataset


def normalize_caption(caption: str, change_flag: int, *, sentence_case: bool = False,
                      no_change_caption: Optional[str] = None) -> str:
    """A caption as a training target.

    Args:
        caption: The reference caption.
        change_flag: The pair's flag.
        sentence_case: Format as CCExpert's targets: "The road is built." (first letter upper case, final ".").
        no_change_caption: When set, the target of every no-change pair (flag 0), as Change-Agent trains with one
            canonical no-change sentence.
    """
    if no_change_caption is not None and change_flag == 0:
        caption = no_change_caption
    return to_sentence_case(caption) if sentence_case else " ".join(caption.split())


CaptionMode = Literal["flatten", "random_choice"]


class _GatherPairs:
    """`datasets` transform of a caption view: turns (row, caption_index) batches into examples of the pairs."""

    def __init__(self, pairs: datasets.Dataset, sentence_case: bool, no_change_caption: Optional[str]):
        self.pairs, self.sentence_case, self.no_change_caption = pairs, sentence_case, no_change_caption

    def __call__(self, batch: dict) -> dict:
        examples = self.pairs[list(batch["row"])]
        examples["caption"] = [
            normalize_caption(captions[index], flag, sentence_case=self.sentence_case,
                              no_change_caption=self.no_change_caption)
            for captions, index, flag in zip(examples["captions"], batch["caption_index"], examples["change_flag"])
        ]
        return examples


def caption_view(dataset: datasets.Dataset, mode: CaptionMode = "random_choice", *, seed: int = 0, epoch: int = 0,
                 sentence_case: bool = False, no_change_caption: Optional[str] = None) -> datasets.Dataset:
    """A training view with one target caption per example, in the `caption` column.

    The view is a small index (pair row, caption index) with a `datasets` transform that fetches and decodes the
    pair on access, so no image is copied. Each example holds the pair's columns plus `caption`. Its own columns
    are the index, so a `transformers.Trainer` needs `remove_unused_columns=False`.

    Args:
        dataset: One split of a change-captioning dataset.
        mode: "flatten": one example per caption (CCExpert stages 1-2); "random_choice": one example per pair with
            a caption drawn from (seed, epoch), so each epoch sees other captions and a rerun sees the same ones
            (CCExpert stage 3). Build a new view per epoch.
        seed: Seed of the caption draw.
        epoch: Epoch of the caption draw.
        sentence_case: Passed to `normalize_caption`.
        no_change_caption: Passed to `normalize_caption`.
    """
    counts = pc.list_value_length(dataset.with_format("arrow")["captions"]).to_numpy(zero_copy_only=False)
    if mode == "flatten":
        rows = np.repeat(np.arange(len(counts)), counts)
        caption_index = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    elif mode == "random_choice":
        rows = np.arange(len(counts))
        caption_index = np.random.default_rng([seed, epoch]).integers(0, counts)
    else:
        raise ValueError(f"mode must be 'flatten' or 'random_choice', got {mode!r}")
    index = datasets.Dataset.from_dict({"row": rows, "caption_index": caption_index})
    return index.with_transform(_GatherPairs(dataset, sentence_case, no_change_caption))


# --------------------------------------------------------------------------------------------------------------------
# Command line: rscc data {levir-cc, dubai-cc, ccexpert, manifest, mix}
# --------------------------------------------------------------------------------------------------------------------


def _split_and_path(spec: str) -> tuple:
    """`SPLIT=PATH` or `PATH` (split "train")."""
    split, separator, path = spec.partition("=")
    return (split, Path(path)) if separator else ("train", Path(spec))


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave invalid records out (listed in the card) instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--pretty-name", help="title of the dataset card")
    parser.add_argument("--license", help="Hub license id for the card (default: the source's, else 'unknown')")
    parser.add_argument("--max-shard-size", type=positive_int, default=DEFAULT_MAX_SHARD_SIZE // 1024**2,
                        metavar="MB",
                        help="approximate maximum size of a Parquet shard (default: %(default)s)")


def _records_for(args: argparse.Namespace, mixture: Optional[list]) -> Iterable[ChangeRecord]:
    if args.data_command == "levir-cc":
        return levir_cc_records(args.root, args.captions)
    if args.data_command == "dubai-cc":
        return dubai_cc_records(args.captions, args.images, args.before_dir, args.after_dir)
    if args.data_command == "ccexpert":
        return itertools.chain.from_iterable(
            ccexpert_records(path, split, args.source_name, args.image_root)
            for split, path in map(_split_and_path, args.records))
    if args.data_command == "manifest":
        return itertools.chain.from_iterable(
            manifest_records(path, split, args.source_name) for split, path in map(_split_and_path, args.manifest))
    return mixture_records(mixture, args.split)


def _inputs_of(args: argparse.Namespace, mixture: Optional[list]) -> list:
    """The files and folders a `rscc data` command reads, which its --out must never replace."""
    if args.data_command == "levir-cc":
        return [args.root, *([args.captions] if args.captions else [])]
    if args.data_command == "dubai-cc":
        return [args.captions, args.images]
    if args.data_command == "ccexpert":
        paths = [path for _, path in map(_split_and_path, args.records)]
        return paths + [args.image_root or path.parent for path in paths]
    if args.data_command == "manifest":
        paths = [path for _, path in map(_split_and_path, args.manifest)]
        return paths + [path.parent for path in paths]
    return [component.path for component in mixture if Path(component.path).exists()]


def _run(args: argparse.Namespace) -> int:
    try:
        mixture = [MixtureComponent.parse(spec) for spec in args.source] if args.data_command == "mix" else None
        summary = build_dataset(
            _records_for(args, mixture), args.out, pretty_name=args.pretty_name, license=args.license,
            skip_invalid=args.skip_invalid, overwrite=args.overwrite, max_shard_size=args.max_shard_size * 1024**2,
            mixture=mixture, inputs=_inputs_of(args, mixture),
        )
    except InvalidRecordsError as error:
        # Every problem, then the summary last so that it is what a terminal shows.
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"\nrscc data {args.data_command}: build failed.\n{error}", file=sys.stderr)
        return EXIT_INVALID_RECORDS
    except (OSError, ValueError) as error:
        print(f"rscc data {args.data_command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary)
    return EXIT_OK


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `rscc data ...`: one converter per source format, each writing a validated Parquet dataset."""
    parser = subparsers.add_parser(
        "data", help="build change-captioning datasets (Parquet shards + dataset card)",
        description="Convert a change-captioning source into Parquet shards plus a dataset card that "
                    "datasets.load_dataset(OUT) and push_to_hub accept. Every record is validated; any problem "
                    "fails the build unless --skip-invalid.")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="FORMAT")

    levir = commands.add_parser("levir-cc", help="LEVIR-CC / LEVIR-MCI (Karpathy-style JSON + images/)")
    levir.add_argument("--root", required=True, type=Path,
                       help="folder with LevirCCcaptions.json and images/{train,val,test}/{A,B}[,label]")
    levir.add_argument("--captions", type=Path, help="caption file (default: ROOT/LevirCCcaptions.json)")

    dubai = commands.add_parser("dubai-cc", help="Dubai-CC ({Train,Validation,Test}_Dubai_CC.json + images)")
    dubai.add_argument("--captions", required=True, type=Path,
                       help="folder with the three caption files (or its parent)")
    dubai.add_argument("--images", required=True, type=Path, help="folder with the before and after folders")
    dubai.add_argument("--before-dir", default="500_2000", help="before-image folder in --images (%(default)s)")
    dubai.add_argument("--after-dir", default="500_2010", help="after-image folder in --images (%(default)s)")

    ccexpert = commands.add_parser("ccexpert", help="CCExpert records (uid, change_flag, img1_path, img2_path, "
                                                    "change_caption)")
    ccexpert.add_argument("--records", required=True, action="append", metavar="[SPLIT=]FILE",
                          help="JSON or JSONL records file, optionally with its split (default train); repeatable")
    ccexpert.add_argument("--image-root", type=Path, help="folder relative image paths start from "
                                                          "(default: the records file's folder)")
    ccexpert.add_argument("--source-name", help="source column value (default: the records file name)")

    manifest = commands.add_parser("manifest", help="your own pairs: CSV or JSONL with before, after, caption(s)")
    manifest.add_argument("--manifest", required=True, action="append", metavar="[SPLIT=]FILE",
                          help="CSV or JSONL manifest, optionally with the split of rows without a split column "
                               "(default train); repeatable. Columns: " + ", ".join(MANIFEST_FIELDS)
                               + ", caption_1, caption_2, ...")
    manifest.add_argument("--source-name", help="source column value (default: the manifest file name)")

    mix = commands.add_parser("mix", help="mixture of built datasets with per-source upsampling factors")
    mix.add_argument("--source", required=True, action="append", metavar="PATH:SPLIT:FACTOR",
                     help="a built dataset (folder or Hub repo), its split and how many times to repeat it; "
                          "repeatable, e.g. out/levir_cc:train:6")
    mix.add_argument("--split", default="train", help="split name of the mixture (%(default)s)")

    for command in (levir, dubai, ccexpert, manifest, mix):
        _add_build_arguments(command)
        command.set_defaults(run=_run)
