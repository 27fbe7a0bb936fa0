"""Loading built datasets, and training views with one target caption per example."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Literal, Optional, Union

import datasets
import numpy as np
import pyarrow.compute as pc

from ..caption_text import collapse_whitespace
from ..processing_rscc import to_sentence_case
from .schema import REQUIRED_COLUMNS, DataInputError


def load_built_dataset(path_or_repo: str, split: Optional[str], **load_kwargs):
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
    dataset = load_built_dataset(os.fspath(path_or_repo), split=split, **load_kwargs)
    features = dataset.features if split is not None else next(iter(dataset.values())).features
    missing = [name for name in REQUIRED_COLUMNS if features is not None and name not in features]
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
    return to_sentence_case(caption) if sentence_case else collapse_whitespace(caption)


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


class _StreamedCaptions:
    """`datasets` batched map of a streamed caption view: each pair becomes its examples, each with a `caption`."""

    def __init__(self, mode: CaptionMode, seed: int, epoch: int, sentence_case: bool, no_change_caption: Optional[str]):
        self.mode, self.seed, self.epoch = mode, seed, epoch
        self.sentence_case, self.no_change_caption = sentence_case, no_change_caption

    def __call__(self, batch: dict) -> dict:
        examples: dict = {name: [] for name in [*batch, "caption"]}
        for row in range(len(batch["id"])):
            captions, flag = batch["captions"][row], batch["change_flag"][row]
            if self.mode == "flatten":
                chosen = captions
            else:  # drawn from (seed, epoch, id): the same caption wherever the pair falls in the stream
                chosen = [captions[random.Random(f"{self.seed}:{self.epoch}:{batch['id'][row]}")
                                   .randrange(len(captions))]]
            for caption in chosen:
                for name in batch:
                    examples[name].append(batch[name][row])
                examples["caption"].append(normalize_caption(caption, flag, sentence_case=self.sentence_case,
                                                             no_change_caption=self.no_change_caption))
        return examples


def streaming_caption_view(dataset: datasets.IterableDataset, mode: CaptionMode = "random_choice", *, seed: int = 0,
                           epoch: int = 0, sentence_case: bool = False, no_change_caption: Optional[str] = None
                           ) -> datasets.IterableDataset:
    """`caption_view` of a streamed split (`load_change_dataset(..., streaming=True)`), for mixtures too large to
    prepare as Arrow files: the Parquet shards are read as the stream goes, never all at once.

    "flatten" yields one example per caption; "random_choice" one per pair, its caption drawn from (seed, epoch,
    pair id), so reruns see the same captions. Shuffle with `IterableDataset.shuffle(buffer_size=...)`.

    Args:
        dataset: One streamed split of a change-captioning dataset.
        mode, seed, epoch, sentence_case, no_change_caption: As in `caption_view`.
    """
    if mode not in ("flatten", "random_choice"):
        raise ValueError(f"mode must be 'flatten' or 'random_choice', got {mode!r}")
    return dataset.map(_StreamedCaptions(mode, seed, epoch, sentence_case, no_change_caption), batched=True,
                       batch_size=16)
