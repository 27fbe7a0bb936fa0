"""Caption scoring: the pycocoevalcap scorers on all pairs and on the change / no-change subsets, and human agreement.

Scores are those of the coco-caption reference implementation every change-captioning paper uses: BLEU-1..4,
METEOR 1.5, ROUGE-L and CIDEr-D, plus S_m = mean(BLEU-4, METEOR, ROUGE-L, CIDEr-D), all on the 0-100 scale, under a
named convention (`rscc.metrics.conventions`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from ..caption_text import is_no_change_caption
from ..errors import RsccInputError
from .conventions import CONVENTIONS, DEFAULT_CONVENTION, apply_convention, check_convention, load_vocab
from .inputs import preview_ids
from .meteor import JavaNotFoundError, _StreamingMeteor, shared_meteor
from .reports import package_versions

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S_m")
S_M_COMPONENTS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


class MissingPredictionsError(RsccInputError):
    """Raised when some reference pairs have no prediction."""


def _check_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return CAPTION_METRICS
    metrics = tuple(metrics)
    unknown = [name for name in metrics if name not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from: {', '.join(CAPTION_METRICS)}")
    return metrics


def check_prediction_ids(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    """Check that every reference pair has a text prediction and text references; returns the ids of predictions
    without a reference pair (ignored, with a warning)."""
    missing = [pair_id for pair_id in references if pair_id not in predictions]
    if missing:
        raise MissingPredictionsError(
            f"{len(missing)} of {len(references)} reference pairs have no prediction: {preview_ids(missing)}"
        )
    extra = [pair_id for pair_id in predictions if pair_id not in references]
    if extra:
        logger.warning("ignoring %d predictions whose id is not in the references: %s", len(extra), preview_ids(extra))
    not_text = [pair_id for pair_id, caption in predictions.items() if not isinstance(caption, str)]
    if not_text:
        raise RsccInputError(f"{len(not_text)} prediction(s) are not text: {preview_ids(not_text)}")
    empty = [pair_id for pair_id, refs in references.items()
             if not refs or not all(isinstance(ref, str) and ref.strip() for ref in refs)]
    if empty:
        raise RsccInputError(
            f"{len(empty)} reference pairs have no reference caption, or an empty one or one that is not text: "
            f"{preview_ids(empty)}"
        )
    return extra



def _needed_metrics(metrics: tuple[str, ...]) -> set[str]:
    return set(metrics) | (set(S_M_COMPONENTS) if "S_m" in metrics else set())


def _start_meteor(metrics: tuple[str, ...], require_meteor: bool) -> tuple[_StreamingMeteor | None, str | None]:
    """The METEOR process if METEOR is needed, else None; and why it is missing, if Java is."""
    if "METEOR" not in _needed_metrics(metrics):
        if require_meteor:
            raise ValueError("require_meteor=True, but neither METEOR nor S_m is among the metrics asked for")
        return None, None
    try:
        return shared_meteor(), None
    except JavaNotFoundError as error:
        if require_meteor:
            raise
        logger.warning("METEOR (and S_m) not computed: %s", error)
        return None, str(error)


def _score_subsets(
    references: Mapping[str, list[str]],
    predictions: Mapping[str, list[str]],
    subsets: Mapping[str, Sequence[str]],
    metrics: tuple[str, ...],
    meteor: _StreamingMeteor | None,
) -> dict[str, dict[str, float | None]]:
    """Score normalised captions on several subsets of pair ids, on the 0-100 scale."""
    needed = _needed_metrics(metrics)
    scored_ids = list(dict.fromkeys(pair_id for ids in subsets.values() for pair_id in ids))
    if "ROUGE-L" in needed and scored_ids:
        # pycocoevalcap's corpus ROUGE-L is the mean of the per-pair scores, so each subset's score is the mean
        # of its pairs' scores from one pass (the same numbers, in the same order, as a pass per subset).
        _, pair_rouge = Rouge().compute_score(
            {i: references[i] for i in scored_ids}, {i: predictions[i] for i in scored_ids}
        )
        rouge_by_id = dict(zip(scored_ids, pair_rouge))
    raw_scores: dict[str, dict[str, float | None]] = {}
    for name, ids in subsets.items():
        scores: dict[str, float | None] = dict.fromkeys(needed)
        raw_scores[name] = scores
        if not ids:
            continue
        gts = {pair_id: references[pair_id] for pair_id in ids}
        res = {pair_id: predictions[pair_id] for pair_id in ids}
        if needed & {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}:
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            scores.update({f"BLEU-{n}": bleu[n - 1] for n in range(1, 5)})
        if "ROUGE-L" in needed:
            scores["ROUGE-L"] = np.mean(np.array([rouge_by_id[pair_id] for pair_id in ids]))
        if "CIDEr-D" in needed:
            # CIDEr-D's document frequencies come from the references being scored, hence one pass per subset.
            scores["CIDEr-D"] = Cider().compute_score(gts, res)[0]

    if meteor is not None and "METEOR" in needed:
        statistics = dict(
            zip(scored_ids, meteor.segment_statistics([(references[i], predictions[i][0]) for i in scored_ids]))
        )
        for name, ids in subsets.items():
            if ids:
                raw_scores[name]["METEOR"] = meteor.corpus_score([statistics[pair_id] for pair_id in ids])

    results = {}
    for name, scores in raw_scores.items():
        scaled = {metric: None if value is None else 100.0 * float(value) for metric, value in scores.items()}
        components = [scaled.get(metric) for metric in S_M_COMPONENTS]
        scaled["S_m"] = None if None in components else sum(components) / len(components)
        results[name] = {metric: scaled.get(metric) for metric in metrics}
    return results


def _normalise_pairs(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    convention: str,
    vocab: Mapping[str, int] | str | Path | None,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    # One call for both sides, so that the 'ptb' convention starts one JVM instead of two.
    captions = {("ref", i): list(refs) for i, refs in references.items()}
    captions.update({("pred", i): [predictions[i]] for i in references})
    normalised = apply_convention(captions, convention, vocab)
    return (
        {pair_id: normalised[("ref", pair_id)] for pair_id in references},
        {pair_id: normalised[("pred", pair_id)] for pair_id in references},
    )


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    convention: str = DEFAULT_CONVENTION,
    vocab: Mapping[str, int] | str | Path | None = None,
    metrics: Iterable[str] | None = None,
    require_meteor: bool = False,
) -> dict[str, float | None]:
    """Corpus-level caption metrics of `predictions` against `references`, on the 0-100 scale.

    Args:
        predictions: Pair id -> predicted caption. Ids not in `references` are ignored (with a warning).
        references: Pair id -> reference captions. Every id must have a prediction.
        convention: How captions are normalised before scoring; one of `CONVENTIONS`.
        vocab: Vocabulary (mapping or JSON path) for the `"vocab-ids"` convention.
        metrics: Names from `CAPTION_METRICS` to compute; all by default.
        require_meteor: Raise `JavaNotFoundError` when Java is missing, instead of reporting METEOR and S_m as None.

    Returns:
        Metric name -> score (None for METEOR and S_m when Java is missing and METEOR is not required).

    Raises:
        MissingPredictionsError: Some reference ids have no prediction (the message lists them).
    """
    convention, metrics = check_convention(convention), _check_metrics(metrics)
    check_prediction_ids(predictions, references)
    meteor, _ = _start_meteor(metrics, require_meteor)  # first, so that its JVM loads while the rest runs
    gts, res = _normalise_pairs(predictions, references, convention, vocab)
    return _score_subsets(gts, res, {"all": list(references)}, metrics, meteor)["all"]


def _change_decision(predictions: Mapping[str, str], no_change_ids: set[str], ids: Sequence[str]) -> dict:
    predicted_no_change = {pair_id for pair_id in ids if is_no_change_caption(predictions[pair_id])}
    change_ids = [pair_id for pair_id in ids if pair_id not in no_change_ids]
    correct_change = sum(pair_id not in predicted_no_change for pair_id in change_ids)
    correct_no_change = len(no_change_ids & predicted_no_change)

    def percent(numerator: int, denominator: int) -> float | None:
        return 100.0 * numerator / denominator if denominator else None

    return {
        "accuracy": percent(correct_change + correct_no_change, len(ids)),
        "change_accuracy": percent(correct_change, len(change_ids)),
        "no_change_accuracy": percent(correct_no_change, len(no_change_ids)),
        "predicted_no_change": len(predicted_no_change),
    }


def evaluate_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    convention: str = DEFAULT_CONVENTION,
    vocab: Mapping[str, int] | str | Path | None = None,
    metrics: Iterable[str] | None = None,
    require_meteor: bool = False,
) -> dict:
    """Full caption evaluation: metrics on all pairs and on the change / no-change subsets, change-decision accuracy.

    A pair is "no change" when all its references are canonical no-change sentences (`rscc.caption_text`); a
    prediction says "no change" when it is one. Each subset is scored on its own, as the classic repositories
    do (so CIDEr-D's document frequencies come from that subset's references; on the no-change subset, whose
    reference sets are identical, CIDEr-D is 0 by construction).

    Args:
        predictions: Pair id -> predicted caption.
        references: Pair id -> reference captions.
        convention: One of `CONVENTIONS`.
        vocab: Vocabulary (mapping or JSON path) for the `"vocab-ids"` convention.
        metrics: Names from `CAPTION_METRICS`; all by default.
        require_meteor: Raise when Java is missing instead of reporting METEOR and S_m as None.

    Returns:
        A JSON-serialisable report: `convention`, `scale`, `counts`, `metrics` (per subset), `change_decision`,
        `meteor_error` and `versions`.
    """
    convention, metrics = check_convention(convention), _check_metrics(metrics)
    if convention == "vocab-ids" and vocab is not None and not isinstance(vocab, Mapping):
        vocab = load_vocab(vocab)
    extra = check_prediction_ids(predictions, references)
    subsets = _change_subsets(references)
    meteor, meteor_error = _start_meteor(metrics, require_meteor)  # first, so that its JVM loads while the rest runs
    gts, res = _normalise_pairs(predictions, references, convention, vocab)
    return {
        "convention": {
            "name": convention,
            "description": CONVENTIONS[convention],
            "vocab_size": len(vocab) if convention == "vocab-ids" and vocab is not None else None,
        },
        "scale": "0-100",
        "counts": {
            "pairs": len(subsets["all"]),
            "references": sum(len(refs) for refs in references.values()),
            "change_pairs": len(subsets["change"]),
            "no_change_pairs": len(subsets["no_change"]),
            "ignored_predictions": len(extra),
        },
        "metrics": _score_subsets(gts, res, subsets, metrics, meteor),
        "change_decision": _change_decision(predictions, set(subsets["no_change"]), subsets["all"]),
        "meteor_error": meteor_error,
        "versions": package_versions(),
    }


def _change_subsets(references: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Pair ids of all pairs, the change pairs and the no-change pairs (all references no-change sentences)."""
    ids = list(references)
    no_change_ids = {i for i in ids if all(is_no_change_caption(ref) for ref in references[i])}
    return {
        "all": ids,
        "change": [i for i in ids if i not in no_change_ids],
        "no_change": [i for i in ids if i in no_change_ids],
    }


def leave_one_out_agreement(
    references: Mapping[str, Sequence[str]],
    convention: str = DEFAULT_CONVENTION,
    vocab: Mapping[str, int] | str | Path | None = None,
    metrics: Iterable[str] | None = None,
    require_meteor: bool = False,
) -> dict:
    """Human agreement: each reference scored as a prediction against the other references of its pair.

    For each reference position k, reference k of every pair is the prediction and the remaining ones are the
    references; each run is a full `evaluate_captions` (corpus-level scores over all pairs and per subset). The
    reported figure of each metric is the mean of the runs' corpus-level scores.

    This is what one more human caption would score, with one reference fewer. It is often read as a ceiling, but
    n-gram metrics reward the most common phrasing, which a trained model learns and a human does not use: on
    LEVIR-CC's no-change pairs the five references are five different canonical sentences, so a held-out one never
    matches the others, while a model that emits one of them matches a reference exactly.

    Args:
        references: Pair id -> reference captions; every pair needs the same number (at least 2).
        convention: One of `CONVENTIONS`.
        vocab: Vocabulary for the `"vocab-ids"` convention.
        metrics: Names from `CAPTION_METRICS`; all by default.
        require_meteor: Raise when Java is missing instead of reporting METEOR and S_m as None.

    Returns:
        A report like `evaluate_captions`' (means in `metrics` and `change_decision`), plus `method` and `runs`.
    """
    counts = {len(refs) for refs in references.values()}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"leave-one-out needs the same number (>= 2) of references per pair, got {sorted(counts)}")
    (per_pair,) = counts
    runs = []
    for held_out in range(per_pair):
        run_predictions = {i: refs[held_out] for i, refs in references.items()}
        run_references = {i: [r for k, r in enumerate(refs) if k != held_out] for i, refs in references.items()}
        runs.append(evaluate_captions(run_predictions, run_references, convention, vocab, metrics, require_meteor))
    return _mean_of_runs(runs, per_pair, sum(len(refs) for refs in references.values()))


def _mean_of_runs(runs: list[dict], per_pair: int, num_references: int) -> dict:
    """The leave-one-out report: the first run's report with each figure the mean over the runs."""

    def mean(values: list[float | None]) -> float | None:
        return None if None in values else sum(values) / len(values)

    report = dict(runs[0])
    report["method"] = (
        f"leave-one-out: for k = 1..{per_pair}, reference k of every pair is scored as the prediction against the "
        f"other {per_pair - 1} references (corpus-level scores over the split and per subset); figures are the mean "
        f"of the {per_pair} runs"
    )
    report["counts"] = {**runs[0]["counts"], "references": num_references}
    report["metrics"] = {
        subset: {metric: mean([run["metrics"][subset][metric] for run in runs]) for metric in scores}
        for subset, scores in runs[0]["metrics"].items()
    }
    report["change_decision"] = {
        key: mean([run["change_decision"][key] for run in runs]) for key in runs[0]["change_decision"]
    }
    report["runs"] = [run["metrics"] for run in runs]
    return report
