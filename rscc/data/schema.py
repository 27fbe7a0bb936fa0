"""The change-captioning schema every source becomes, the record converters yield, and the problems a build finds."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Union

import datasets

from ..errors import RsccInputError
from ..masks import MASK_GREY_LEVELS

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "before": datasets.Image(),
        "after": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "change_flag": datasets.Value("int8"),
        "change_mask": datasets.Image(),
        "source": datasets.Value("string"),
        # The dates between `before` and `after` of a series of N > 2 dates, oldest first; empty for a pair.
        "images": datasets.List(datasets.Image()),
    }
)
# Columns that datasets built before them lack; readers treat a missing one as empty.
OPTIONAL_COLUMNS = ("images",)
REQUIRED_COLUMNS = tuple(name for name in FEATURES if name not in OPTIONAL_COLUMNS)

# An image given as a file path, or as already-encoded bytes {"bytes": ..., "path": file name} (rows of a built set).
ImageSource = Union[str, os.PathLike, dict]

# Classes a stored change mask may encode: LEVIR-MCI's three (0/128/255, or class ids 0/1/2), LEVIR-CD's two.
MAX_MASK_CLASSES = max(MASK_GREY_LEVELS)
SPLIT_ORDER = ("train", "validation", "test")  # splits first in a build and its card, in this order
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what `datasets` accepts as a split name


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
        problems: What the converter found wrong while reading it (e.g. a mask it had to caption from), reported
            by the build with the problems validation finds.
        images: For a series of N > 2 dates, the dates between `before` (the first) and `after` (the last), oldest
            first; empty for a pair.
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
    problems: tuple = ()
    images: tuple = ()


def sample_images(row: dict) -> list:
    """The dates of a dataset row or example, oldest first: `before`, the `images` between (none for a pair, or in a
    dataset built before series existed), `after`."""
    return [row["before"], *(row.get("images") or ()), row["after"]]


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
