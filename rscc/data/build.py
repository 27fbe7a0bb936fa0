"""Building a dataset: every record validated, Parquet shards per split, a dataset card, all or nothing."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from ..defaults import DEFAULT_MAX_SHARD_SIZE
from .card import write_card
from .schema import FEATURES, SPLIT_ORDER, ChangeRecord, DataInputError, InvalidRecordsError, Problem
from .validation import check_record

# Small row groups let readers (and the Hub's dataset viewer) fetch a few pairs without reading 50 MB of images.
ROWS_PER_ROW_GROUP = 100


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
            in_flight.append((record, pool.submit(check_record, record)))
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
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


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
    source_notes: Optional[dict] = None,
    recipe_section: Optional[list] = None,
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
        source_notes: Source name -> how its data was made (e.g. template captions), written in the card.
        recipe_section: The card lines of the mixture recipe followed (`Recipe.card_lines`).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite, inputs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination and move it in place at the end, so a failed build leaves nothing behind.
    work_dir = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    try:
        writers, problems, skipped_ids = _write_valid_records(records, work_dir / "data", max_shard_size, num_workers)
        if problems and not skip_invalid:
            raise InvalidRecordsError(problems)
        if not writers:
            raise ValueError(f"no valid records to write to {out_dir}"
                             + (f" ({len(skipped_ids)} invalid record(s) skipped)" if skipped_ids else ""))
        writers = {split: writers[split] for split in sorted(writers, key=_split_sort_key)}
        for writer in writers.values():
            writer.close()
        write_card(work_dir, writers, problems, pretty_name=pretty_name, license=license, mixture=mixture,
                   source_notes=source_notes, recipe_section=recipe_section)
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


def _check_out_dir(out_dir: Path, overwrite: bool, inputs: Iterable[Union[str, os.PathLike]]) -> None:
    """Refuse an `out_dir` that is a file, or a non-empty folder without `overwrite` or that it may not replace."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataInputError(f"--out {out_dir} is a file; expected a dataset folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        _check_replaceable(out_dir, inputs)


def _write_valid_records(records: Iterable[ChangeRecord], data_dir: Path, max_shard_size: int, num_workers: int
                         ) -> tuple:
    """Check every record and write the valid ones, unclosed, per split: (writers, problems, invalid record keys).

    A record whose id its source already used is invalid, even when the record itself is valid.
    """
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
            data_dir.mkdir(exist_ok=True)
            writers[record.split] = _SplitWriter(data_dir, record.split, max_shard_size)
        writers[record.split].add(row, result)
    return writers, problems, skipped_ids
