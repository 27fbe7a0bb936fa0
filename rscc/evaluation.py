"""Generation-based evaluation: caption every pair of a dataset split and score the captions.

Captions come from `rscc.captioning.caption_samples`, the one generation path of the package, so evaluation, training
validation and `rscc caption` decode the same way.

    from rscc.evaluation import generate_predictions, reference_captions
    predictions = generate_predictions(model, processor, split, batch_size=16, output_file="predictions.jsonl")
    references = reference_captions(split)          # {id: [caption, ...]}
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable, Union

import datasets
from tqdm.auto import tqdm

from .caption_files import read_prediction_records, write_predictions
from .data.schema import sample_images
from .captioning import DEFAULT_MAX_NEW_TOKENS, caption_samples

# A scoring function maps (predictions {id: caption}, references {id: [captions]}) to a report of metric values.
ScoringFunction = Callable[[dict, dict], dict]


def _check_unique_ids(ids: list, dataset_name: str) -> None:
    repeated = sorted(identifier for identifier, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(
            f"{dataset_name}: predictions are keyed by pair id, but {len(repeated)} id(s) occur more than once "
            f"(first: {repeated[:5]}); give every pair of the split its own id"
        )


def generate_predictions(
    model,
    processor,
    dataset: datasets.Dataset,
    batch_size: int = 8,
    output_file: Union[str, os.PathLike, None] = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
    **generate_kwargs,
) -> dict[str, str]:
    """Caption every pair of a change-captioning split (greedy decoding unless `generate_kwargs` say otherwise).

    Args:
        model: An rscc (or stock LLaVA-OneVision, or peft-wrapped) model; it is put in eval mode for the run and
            back in its previous mode afterwards.
        processor ([`RsccProcessor`]).
        dataset (`datasets.Dataset`): One split in rscc's schema (`id`, `before`, `after`, ...).
        batch_size (`int`): Pairs per `generate` call.
        output_file (`str` or `os.PathLike`, *optional*): Also write the predictions there as JSON lines
            `{"id": ..., "caption": ...}`, in dataset order.
        max_new_tokens (`int`): Caption length limit in tokens.
        progress (`bool`): Show a tqdm progress bar.
        **generate_kwargs: Passed to `model.generate` (e.g. `num_beams`).

    Returns:
        `dict[str, str]`: caption per pair id, in dataset order.
    """
    missing = [column for column in ("id", "before", "after") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; expected a split in rscc's change-captioning schema")
    ids = [str(identifier) for identifier in dataset["id"]]
    _check_unique_ids(ids, "generate_predictions")
    # Pairs, or series (`images`: the dates between before and after; absent from datasets built before series).
    columns = [name for name in ("before", "images", "after") if name in dataset.column_names]
    dates_only = dataset.select_columns(columns)
    was_training = model.training
    model.eval()
    captions = []
    try:
        with tqdm(total=len(ids), desc="captioning", unit="pair", disable=not progress) as bar:
            for start in range(0, len(ids), batch_size):
                rows = dates_only[start : start + batch_size]
                pairs = [sample_images(dict(zip(rows, values))) for values in zip(*rows.values())]
                captions.extend(
                    caption_samples(
                        model, processor, pairs, batch_size=len(pairs), max_new_tokens=max_new_tokens,
                        **generate_kwargs,
                    )
                )
                bar.update(len(pairs))
    finally:
        model.train(was_training)
    predictions = dict(zip(ids, captions))
    if output_file is not None:
        write_predictions(predictions, output_file)
    return predictions


def read_predictions(path: Union[str, os.PathLike]) -> dict[str, str]:
    """Read a JSON-lines predictions file written by [`write_predictions`] as `{id: caption}`."""
    return {str(record["id"]): record["caption"] for record in read_prediction_records(path)}


def reference_captions(dataset: datasets.Dataset) -> dict[str, list[str]]:
    """`{id: [reference captions]}` of a split, read without decoding any image."""
    rows = dataset.select_columns(["id", "captions"])
    ids = [str(identifier) for identifier in rows["id"]]
    _check_unique_ids(ids, "reference_captions")
    return dict(zip(ids, rows["captions"]))


def default_scoring_function(convention: str = "ccexpert") -> ScoringFunction:
    """The package's caption scorer, `rscc.metrics.evaluate_captions`, with one scoring convention.

    The metrics module is imported here, not when this module is imported, so generating predictions works
    without it; asking for the scorer without it fails at once (before any training) with a message saying so.
    """
    try:
        from .metrics import evaluate_captions
    except ImportError as error:
        raise ImportError(
            "caption scoring needs rscc.metrics (evaluate_captions), which this rscc installation lacks; "
            "pass a scoring function of your own (predictions, references) -> {metric: value}"
        ) from error

    def score(predictions: dict, references: dict) -> dict:
        report = evaluate_captions(predictions, references, convention=convention)
        # Validation logs and `metric_for_best_model` use the whole-split figures under their plain names (S_m, ...).
        return {**report["metrics"]["all"], "change_decision_accuracy": report["change_decision"]["accuracy"]}

    return score


def numeric_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a (possibly nested) metrics report, flattened to `parent/child` keys.

    Reports may carry strings (the scoring convention) and nested sections (per-subset scores); loggers and
    `metric_for_best_model` need flat numbers.
    """
    flat = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[name] = float(value)
        elif isinstance(value, dict):
            flat.update(numeric_metrics(value, prefix=f"{name}/"))
    return flat


__all__ = [
    "generate_predictions",
    "write_predictions",
    "read_predictions",
    "reference_captions",
    "default_scoring_function",
    "numeric_metrics",
]
