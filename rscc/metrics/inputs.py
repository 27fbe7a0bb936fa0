"""What `rscc eval` scores, keyed by pair id: predictions (de-duplicated, or every row) and reference captions.

The files themselves are read by `rscc.caption_files`, the one reader of each format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..caption_files import read_karpathy_file, read_prediction_records
from ..caption_text import collapse_whitespace

logger = logging.getLogger(__name__)

# Image-file suffixes dropped from pair ids, so that "test_000001.png" and "test_000001" name the same pair.
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|tiff?|bmp|webp)$", re.IGNORECASE)


def preview_ids(ids: Sequence[str], limit: int = 10) -> str:
    """The first `limit` ids for a message, and how many more there are."""
    shown = ", ".join(str(pair_id) for pair_id in ids[:limit])
    return shown + (f" ... (and {len(ids) - limit} more)" if len(ids) > limit else "")


def _pair_id(value: object) -> str:
    return _IMAGE_SUFFIX.sub("", str(value).strip())


def deduplicate_predictions(records: Iterable[Mapping[str, object]]) -> tuple[dict[str, str], dict[str, int]]:
    """Keep one prediction per pair id (the first), as needed after multi-GPU gathering pads the last batch.

    Args:
        records: Mappings with an `id` and a `caption`.

    Returns:
        (pair id -> caption, counts `rows`, `unique_ids`, `duplicate_rows`, `conflicting_ids`). Ids whose
        duplicates disagree (after whitespace normalisation) are logged as a warning.
    """
    captions: dict[str, str] = {}
    rows = duplicate_rows = 0
    conflicting: list[str] = []
    for record in records:
        rows += 1
        pair_id, caption = _pair_id(record["id"]), str(record["caption"])
        if pair_id not in captions:
            captions[pair_id] = caption
            continue
        duplicate_rows += 1
        if collapse_whitespace(captions[pair_id]) != collapse_whitespace(caption) and pair_id not in conflicting:
            conflicting.append(pair_id)
    if conflicting:
        logger.warning(
            "%d pair ids have duplicate predictions that disagree; the first one of each is kept: %s",
            len(conflicting),
            preview_ids(conflicting),
        )
    counts = {"rows": rows, "unique_ids": len(captions), "duplicate_rows": duplicate_rows}
    return captions, {**counts, "conflicting_ids": len(conflicting)}


def every_row_as_a_pair(
    records: Iterable[Mapping[str, object]], references: Mapping[str, Sequence[str]]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Score every prediction row, duplicates included, as evaluations that do not de-duplicate do.

    CCExpert's released evaluation scores the gathered rows as they are; on its LEVIR-CC test file (1,936 rows for
    1,929 pairs) that adds about 0.08 S_m. This reproduces such numbers; `deduplicate_predictions` is the rule.

    Args:
        records: Mappings with an `id` and a `caption`, in file order.
        references: Pair id -> reference captions.

    Returns:
        (row key -> caption, row key -> references of its pair), the n-th repeat of an id keyed `"{id}#{n}"`.
    """
    predictions: dict[str, str] = {}
    row_references = {pair_id: list(refs) for pair_id, refs in references.items()}
    occurrences: dict[str, int] = {}
    for record in records:
        pair_id = _pair_id(record["id"])
        occurrences[pair_id] = occurrences.get(pair_id, 0) + 1
        key = pair_id if occurrences[pair_id] == 1 else f"{pair_id}#{occurrences[pair_id]}"
        predictions[key] = str(record["caption"])
        if key != pair_id and pair_id in references:
            row_references[key] = list(references[pair_id])
    return predictions, row_references



def load_predictions(path: str | Path) -> tuple[dict[str, str], dict[str, int]]:
    """Read predictions from JSON lines `{"id": ..., "caption": ...}` and de-duplicate them by id.

    Args:
        path: The `.jsonl` file. Ids may carry an image suffix (`test_000001.png`), which is dropped.

    Returns:
        (pair id -> caption, counts) as `deduplicate_predictions` returns them.
    """
    return deduplicate_predictions(read_prediction_records(path))


def load_references(path: str | Path, split: str | None = "test") -> dict[str, list[str]]:
    """Read reference captions by pair id.

    Args:
        path: A LEVIR-CC-style caption JSON (Karpathy format: `images[].filename/split/sentences[].raw`; ids are
            filename stems such as `test_000001`), or a dataset folder in rscc's format (read with
            `datasets.load_dataset`, columns `id` and `captions` only).
        split: The split to keep, as the caption file names it (LEVIR-CC: `"train"`, `"val"`, `"test"`); None keeps
            every entry of a caption JSON.

    Returns:
        Pair id -> list of reference captions, in file order.
    """
    path = Path(path)
    if path.is_dir():
        return _references_from_dataset(path, split)
    entries = read_karpathy_file(path)
    if split is not None:
        splits_present = sorted({entry.split for entry in entries})
        entries = [entry for entry in entries if entry.split == split]
        if not entries:
            raise ValueError(f"no pairs of split {split!r} in {path}; splits present: {', '.join(splits_present)}")
    return {_pair_id(entry.filename): entry.captions for entry in entries}


def _references_from_dataset(path: Path, split: str | None) -> dict[str, list[str]]:
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if split is None:
        raise ValueError(f"a split is needed to read references from the dataset folder {path}")
    try:
        # `columns` makes the Parquet reader skip the image columns entirely.
        dataset = datasets.load_dataset(str(path), split=split, columns=["id", "captions"])
    except (ValueError, FileNotFoundError, KeyError, DatasetGenerationError) as error:
        # A Parquet file without an `id` or `captions` column fails inside generation.
        raise ValueError(f"cannot read references from dataset folder {path} (split {split!r}): {error}") from error
    return {_pair_id(pair_id): list(captions) for pair_id, captions in zip(dataset["id"], dataset["captions"])}
