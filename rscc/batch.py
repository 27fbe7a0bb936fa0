"""Batch captioning: pairs from two folders, or pairs and series of dates from a manifest, captioned into a resumable
JSON-lines file.

Results are appended to `OUT.partial` (next to `OUT`) after every batch and the file is renamed to `OUT` once every
sample is done, so an interrupted run leaves no file that looks complete, and rerunning the same command captions only
the samples that are not in `OUT.partial` yet. Under `accelerate launch` each process appends to its own
`OUT.partial.RANK` and the parts are merged in input order (see `rscc.parallel`). Captioning itself is a callable
given by the caller (the `rscc caption` command passes `rscc.captioning.caption_samples`), which keeps this module free
of model code.
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from .caption_files import date_fields, line_dates
from .data import manifest_captions, manifest_dates, read_manifest
from .errors import RsccInputError
from .input_fingerprint import FINGERPRINTS_FIELD, drop_results_of_changed_inputs, fingerprints
from .output_files import atomic_output
from .parallel import PartFiles, ProcessShare, batched, wait_for_everyone
from .terminal import command_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# Captions one batch of samples, returning one caption per sample in order.
CaptionBatchFunction = Callable[[list["SampleRecord"]], list[str]]


class BatchInputError(RsccInputError):
    """A batch input (folder, manifest, image or output path) is not what batch captioning expects."""


@dataclass(frozen=True)
class SampleRecord:
    """One sample to caption: a pair, or a series of N > 2 co-registered dates.

    Args:
        id (`str`): unique within the run; the key resuming relies on.
        images (`tuple[str, ...]`): the image paths, oldest first (before, after for a pair).
        references (`list[str]`): reference captions from a manifest (copied to the output for evaluation).
        mask (`str`, *optional*): a change-mask path from a manifest (copied to the output).
    """

    id: str
    images: tuple[str, ...]
    references: list[str] = field(default_factory=list)
    mask: str | None = None

    def result_line(self, caption: str, made_by: dict | None = None) -> dict:
        """The JSON-lines record of this sample once captioned, with what made the caption (`made_by`)."""
        line = {"id": self.id, **date_fields(self.images), "caption": caption}
        if self.references:
            line["references"] = self.references
        if self.mask:
            line["mask"] = self.mask
        if made_by is not None:
            line["made_by"] = made_by
        return line


def _listed(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pairs_from_folders(before_dir: str | os.PathLike, after_dir: str | os.PathLike) -> list[SampleRecord]:
    """Pair the images of two folders by file name (LEVIR-CC's `A/` and `B/` layout).

    Args:
        before_dir (`str` or `os.PathLike`): folder of the earlier images.
        after_dir (`str` or `os.PathLike`): folder of the later images, with the same file names.

    Returns:
        One [`SampleRecord`] per file name, sorted, with the file name as id.

    Raises:
        BatchInputError: a folder holds no images, or a file name is in one folder only.
    """
    folders = {"BEFORE": Path(before_dir), "AFTER": Path(after_dir)}
    names = {
        label: {path.name for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES}
        for label, folder in folders.items()
    }
    for label, folder in folders.items():
        if not names[label]:
            raise BatchInputError(f"{label} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for label, other in (("BEFORE", "AFTER"), ("AFTER", "BEFORE")):
        unmatched = names[label] - names[other]
        if unmatched:
            raise BatchInputError(
                f"{len(unmatched)} image(s) of the {label} folder {folders[label]} have no file of the same name in "
                f"the {other} folder {folders[other]}: {_listed(unmatched)}"
            )
    return [
        SampleRecord(id=name, images=(str(folders["BEFORE"] / name), str(folders["AFTER"] / name)))
        for name in sorted(names["BEFORE"])
    ]


def samples_from_manifest(manifest: str | os.PathLike) -> list[SampleRecord]:
    """Read samples from a manifest in the data issue's format: a CSV or JSONL file, one pair or series per row.

    Columns: `before`, `after` (a pair) or a series of N >= 2 co-registered dates, oldest first, as `images` (a
    list, JSONL) or `image_1`, `image_2`, ... (CSV); rows may differ in N. Image paths are relative to the
    manifest's folder or absolute. Optional: `id` (default: the first image's file name without extension),
    reference captions as `caption`, `captions` (a list, JSONL) or `caption_1`, `caption_2`, ... (CSV), `mask`,
    `split` and `change_flag` (accepted, not used for captioning).

    Args:
        manifest (`str` or `os.PathLike`): the CSV or JSONL file.

    Returns:
        One [`SampleRecord`] per row, in file order.

    Raises:
        BatchInputError: an unknown column, a row without images or with both a pair and a series, a series of one
            date or with a gap, duplicate ids, or an empty manifest.
    """
    path = Path(manifest)
    try:
        rows = read_manifest(path, require_captions=False)
        dated_rows = [(where, row, manifest_dates(path, where, row)) for where, row in rows]
    except (ValueError, FileNotFoundError) as error:
        raise BatchInputError(f"manifest {error}") from None
    records, seen = [], {}
    for where, row, dates in dated_rows:
        if not all(dates):  # a pair row with an empty cell: a series has no empty dates
            raise BatchInputError(f"manifest {path}, {where}: needs both a 'before' and an 'after' image path, or a "
                                  "series of 2 or more (images, or image_1, image_2, ...)")
        record = SampleRecord(
            id=str(row["id"]) if row.get("id") not in (None, "") else Path(dates[0]).stem,
            images=tuple(str(path.parent / date) for date in dates),
            references=manifest_captions(row),
            mask=str(path.parent / row["mask"]) if row.get("mask") else None,
        )
        if record.id in seen:
            raise BatchInputError(
                f"manifest {path}, {where}: id {record.id!r} already used at {seen[record.id]}; ids must be unique "
                "(add an 'id' column)"
            )
        seen[record.id] = where
        records.append(record)
    if not records:
        raise BatchInputError(f"manifest {path} lists no samples")
    return records


def check_images_exist(records: Iterable[SampleRecord]) -> None:
    """Fail before any model work when images are missing, naming them.

    Args:
        records (`Iterable[SampleRecord]`): the samples to check.
    """
    missing = [path for record in records for path in record.images if not Path(path).is_file()]
    if missing:
        raise BatchInputError(f"{len(missing)} image file(s) not found: {_listed(missing)}")


def _resumable_id(records: list[SampleRecord], made_by: dict | None) -> Callable[[Path, int, dict], str]:
    """The id of a part file's result, once checked to be one of these records captioned the way this run would."""
    by_id = {record.id: record for record in records}

    def checked_id(path: Path, number: int, line: dict) -> str:
        record = by_id.get(line.get("id"))
        images = line_dates(line)
        if record is None:
            raise BatchInputError(
                f"{path} holds a result for {line.get('id')!r} ({', '.join(map(str, images or []))}) that is not in "
                "this input; pass another --out or --overwrite to start again"
            )
        if images != list(record.images):
            raise BatchInputError(
                f"{path}, line {number}: {record.id!r} was captioned from the images "
                f"{', '.join(map(str, images or []))}, and this input gives "
                f"it {', '.join(record.images)}; pass another --out or --overwrite to start again"
            )
        if line.get("made_by") != made_by:
            earlier = line.get("made_by") or "an unrecorded model and options (an older rscc)"
            raise BatchInputError(
                f"{path}, line {number}: {record.id!r} was captioned by {earlier}, and this run "
                f"would caption by {made_by}; captions of different models or options are not mixed. Rerun with "
                "the earlier options, or pass another --out or --overwrite to start again"
            )
        return record.id

    return checked_id


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did.

    Args:
        total (`int`): samples in the input.
        captioned (`int`): samples captioned by this run.
        resumed (`int`): samples already done by an earlier run.
    """

    total: int
    captioned: int
    resumed: int


def _result_lines(batch: list[SampleRecord], caption_batch: CaptionBatchFunction, made_by: dict | None,
                  record_inputs: bool = False) -> str:
    # What the files were when read, so that a resumed run notices changed ones (rscc.input_fingerprint).
    inputs = [{FINGERPRINTS_FIELD: fingerprints(record_paths([record]))} if record_inputs else {} for record in batch]
    captions = caption_batch(batch)
    return "".join(json.dumps({**record.result_line(caption, made_by), **files}) + "\n"
                   for record, caption, files in zip(batch, captions, inputs))


def check_out_given(out: str | os.PathLike | None, share: ProcessShare) -> None:
    """Refuse stdout as the output of several processes: each writes its own part of an output file."""
    if out is None and share.count > 1:
        raise BatchInputError(f"--out is needed when {share.count} processes caption: each writes its part of it")


def caption_records(
    records: list[SampleRecord],
    caption_batch: CaptionBatchFunction,
    out: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool = False,
    overwrite: bool = False,
    made_by: dict | None = None,
    share: ProcessShare = ProcessShare(),
    record_inputs: bool = False,
) -> BatchSummary:
    """Caption samples (pairs or series) batch by batch into JSON lines, resuming an earlier run into the same `out`.

    Args:
        records (`list[SampleRecord]`): the samples, ids unique.
        caption_batch (`CaptionBatchFunction`): captions one batch of records.
        out (`str` or `os.PathLike`, *optional*): the JSON-lines file. Results go to `OUT.partial` as they come and
            the file is renamed to `out` at the end; a rerun skips the samples already in `OUT.partial` (or in
            `out`, when new samples were added to the input). Without `out`, lines go to stdout and nothing is resumed.
        batch_size (`int`): samples per `caption_batch` call.
        progress (`bool`): show a progress bar on stderr (the main process's, over every process's samples).
        overwrite (`bool`): ignore earlier results in `out` and its part files.
        made_by (`dict`, *optional*): what makes the captions (model, revision, options), written on every line; a
            rerun resumes only lines made the same way and refuses to mix in others.
        share ([`ProcessShare`]): this process's share of a data-parallel run (see `rscc.parallel`): it captions
            every `share.count`-th pending sample into its own `OUT.partial.RANK`, and the main process merges the
            parts in input order into `out` once every process is done. Every process must call this function.
        record_inputs (`bool`): write each sample's input fingerprints on its line (`input_fingerprints`, see
            `rscc.input_fingerprint`), so that a rerun captions again the samples whose files changed since.

    Returns:
        [`BatchSummary`] of the whole run (every process's samples).
    """
    if batch_size < 1:
        raise BatchInputError(f"--batch-size must be at least 1, got {batch_size}")
    if out is None:
        check_out_given(out, share)
        with tqdm(total=len(records), unit="sample", file=sys.stderr, disable=not progress) as progress_bar:
            for batch in batched(records, batch_size):
                command_output().write(_result_lines(batch, caption_batch, made_by))
                command_output().flush()
                progress_bar.update(len(batch))
        return BatchSummary(total=len(records), captioned=len(records), resumed=0)

    out = Path(out)
    parts = PartFiles(out, share)
    recaptioned = []
    if share.is_main:
        if overwrite:
            parts.remove()
        elif not parts.existing() and out.is_file():
            shutil.copyfile(out, parts.own)  # continue from a finished run whose input has grown
    parts.repair()
    if share.is_main:
        recaptioned = drop_results_of_changed_inputs(parts.existing(), "caption")
    finished = parts.finished(_resumable_id(records, made_by))
    pending = [record for record in records if record.id not in finished]
    parts.append(pending, batch_size, lambda batch: _result_lines(batch, caption_batch, made_by, record_inputs),
                 progress, len(records), len(finished), "sample")
    if share.is_main:
        if parts.existing() == [parts.own] and share.count == 1 and not recaptioned:  # else back in input order
            os.replace(parts.own, out)
        else:
            with atomic_output(out, ".jsonl") as temporary, open(temporary, "wb") as merged:
                merged.writelines(parts.merged((record.id for record in records), lambda line: line["id"]))
            parts.remove()
    wait_for_everyone(share)  # no process reports success before the output exists
    return BatchSummary(total=len(records), captioned=len(pending), resumed=len(finished))


def record_paths(records: Iterable[SampleRecord]) -> list[str]:
    """Every file the records name (images and masks)."""
    return [path for record in records for path in (*record.images, record.mask) if path]


__all__ = [
    "SampleRecord",
    "BatchSummary",
    "BatchInputError",
    "pairs_from_folders",
    "samples_from_manifest",
    "check_images_exist",
    "check_out_given",
    "record_paths",
    "caption_records",
]
