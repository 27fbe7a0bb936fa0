"""Mixtures of built datasets, each pair of a component repeated `factor` times (CCExpert: LEVIR-CC train x6)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import REQUIRED_COLUMNS, ChangeRecord, DataInputError
from .views import load_built_dataset


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


def check_shards(component: MixtureComponent) -> None:
    """Refuse a local component whose Parquet shards of its split cannot be read (cut short, overwritten), naming the
    shard and how to rebuild it; streaming would otherwise fail part-way naming no file."""
    for shard in sorted((Path(component.path) / "data").glob(f"{component.split}-*.parquet")):
        try:
            pq.read_metadata(shard)
        except (pa.ArrowException, OSError) as error:
            raise DataInputError(
                f"{shard}: a shard of {component.path} that is not a readable Parquet file ({error}); rebuild "
                f"{component.path} with the `rscc data` command that built it, adding --overwrite"
            ) from None


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
        check_shards(component)
        # Streaming reads the Parquet shards directly instead of converting each source into the Arrow cache first.
        rows = load_built_dataset(component.path, split=component.split, streaming=True)
        missing = [name for name in REQUIRED_COLUMNS if rows.features is not None and name not in rows.features]
        if missing:
            raise ValueError(f"{component.path}: not a change-captioning dataset of this schema "
                             f"(no column {', '.join(missing)})")
        for column in ("before", "after", "change_mask"):
            rows = rows.cast_column(column, datasets.Image(decode=False))
        if rows.features is not None and "images" in rows.features:
            rows = rows.cast_column("images", datasets.List(datasets.Image(decode=False)))
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
                    images=tuple(row.get("images") or ()),
                )
