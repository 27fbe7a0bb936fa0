"""Caption and change-detection metrics, with the scoring conventions of the field's papers.

Caption scores are those of the `pycocoevalcap` scorers (the coco-caption reference implementation every
change-captioning paper uses): BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, plus S_m = mean(BLEU-4, METEOR,
ROUGE-L, CIDEr-D), all on the 0-100 scale. Papers differ in how they normalise captions before scoring, which
moves the numbers by up to about 2 S_m points on the same predictions, so every function here takes a
`convention` and every report names it:

- `"ccexpert"` (default): lower-case, delete ".", split on whitespace (CCExpert's `eval_CCExpert.py`).
- `"ptb"`: the Stanford PTBTokenizer shipped with pycocoevalcap (the COCO caption evaluation; needs Java).
- `"vocab-ids"`: the classic repositories (RSICCformer, Chg2Cap, Change-Agent, RSCaMa, MV-CC): words mapped
  through the training vocabulary, out-of-vocabulary words to `<UNK>`, scored as strings of ids.
- `"raw"`: no normalisation (Semantic-CC).

Whitespace is always stripped and collapsed first: ROUGE-L splits on single spaces, so the leading space of
LEVIR-CC's `raw` captions would otherwise cost about 5 ROUGE-L points.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from rscc_console import start_meteor_process, take_prestarted_meteor

from .captions import is_no_change_caption
from .cli import EXIT_BAD_INPUT, EXIT_OK
from .errors import RsccInputError, read_text_file

logger = logging.getLogger(__name__)

__all__ = [
    "CAPTION_METRICS",
    "CONVENTIONS",
    "ChangeDetectionMetrics",
    "JavaNotFoundError",
    "MissingPredictionsError",
    "add_cli",
    "apply_convention",
    "deduplicate_predictions",
    "evaluate_captions",
    "every_row_as_a_pair",
    "format_table",
    "leave_one_out_agreement",
    "load_predictions",
    "load_references",
    "load_vocab",
    "mask_to_class_indices",
    "model_index_results",
    "package_versions",
    "read_prediction_records",
    "score_captions",
    "write_report",
]

CONVENTIONS = {
    "ccexpert": "lower-case, delete '.', split on whitespace (CCExpert, eval_CCExpert.py)",
    "ptb": "Stanford PTBTokenizer of pycocoevalcap: lower-case, punctuation removed (COCO caption evaluation)",
    "vocab-ids": (
        "words mapped through a vocabulary file, out-of-vocabulary words to <UNK>, scored as strings of ids "
        "(RSICCformer, Chg2Cap, Change-Agent, RSCaMa, MV-CC)"
    ),
    "raw": "no normalisation beyond whitespace (Semantic-CC)",
}
DEFAULT_CONVENTION = "ccexpert"

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S_m")
S_M_COMPONENTS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")

JAVA_FIX = (
    "install a Java runtime and put `java` on PATH (Debian/Ubuntu: `apt-get install default-jre-headless`; "
    "conda: `conda install -c conda-forge openjdk`)"
)

# Image-file suffixes dropped from pair ids, so that "test_000001.png" and "test_000001" name the same pair.
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|tiff?|bmp|webp)$", re.IGNORECASE)


class JavaNotFoundError(RuntimeError):
    """Raised when a scorer that runs on the JVM (METEOR, PTBTokenizer) is needed and `java` is not on PATH."""


class MissingPredictionsError(RsccInputError):
    """Raised when some reference pairs have no prediction."""


# ----------------------------------------------------------------------------------------------------------
# Conventions
# ----------------------------------------------------------------------------------------------------------


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    return convention


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def load_vocab(path: str | Path) -> dict[str, int]:
    """Read a classic word -> id vocabulary (`{"<NULL>": 0, "<UNK>": 1, "<START>": 2, "<END>": 3, "a": 4, ...}`).

    Args:
        path: JSON file, e.g. `splits/vocab_468.json` (the vocabulary Change-Agent publishes for LEVIR-MCI) or
            `vocab_501.json` (what Chg2Cap's `preprocess_data.py` builds: words seen at least 5 times).
    """
    path = Path(path)
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read vocabulary file {path}: {error}") from error
    if not isinstance(vocab, dict) or "<UNK>" not in vocab:
        raise ValueError(f"vocabulary file {path} is not a word -> id mapping with an <UNK> entry")
    return {str(word): int(index) for word, index in vocab.items()}


_SPECIAL_TOKENS = ("<NULL>", "<UNK>", "<START>", "<END>")


def _classic_tokens(caption: str) -> list[str]:
    # Chg2Cap / Change-Agent `preprocess_data.tokenize`: "," and ";" become tokens of their own, "?" and "." are
    # deleted, then split on spaces. Lower-casing is added: the classic decoders only emit lower-case vocabulary
    # words, and without it a sentence-case prediction would lose its first word to <UNK>. Special tokens written
    # out in a decoded caption ("<UNK>", "<END>") keep their upper-case spelling.
    text = caption.lower()
    for punctuation in (";", ","):
        text = text.replace(punctuation, " " + punctuation)
    for punctuation in ("?", "."):
        text = text.replace(punctuation, "")
    return [token.upper() if token.upper() in _SPECIAL_TOKENS else token for token in text.split()]


def _classic_ids(caption: str, vocab: Mapping[str, int]) -> str:
    # The classic test scripts drop <START>, <END> and <NULL> (padding) from references and predictions alike,
    # keep <UNK>, and join the ids with spaces.
    dropped = {vocab[token] for token in ("<START>", "<END>", "<NULL>") if token in vocab}
    ids = (vocab.get(token, vocab["<UNK>"]) for token in _classic_tokens(caption))
    return " ".join(str(index) for index in ids if index not in dropped)


def _ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _require_java("the 'ptb' convention (Stanford PTBTokenizer)")
    tokenized = PTBTokenizer().tokenize({key: [{"caption": c} for c in caps] for key, caps in captions.items()})
    # PTBTokenizer maps output lines back to keys by position; a lost line would shift every caption after it.
    if any(len(tokenized.get(key, [])) != len(caps) for key, caps in captions.items()):
        raise RuntimeError("PTBTokenizer returned a different number of captions than it was given")
    return tokenized


def apply_convention(
    captions: Mapping[Hashable, Sequence[str]],
    convention: str = DEFAULT_CONVENTION,
    vocab: Mapping[str, int] | str | Path | None = None,
) -> dict[Hashable, list[str]]:
    """Normalise captions as a convention does before scoring.

    Args:
        captions: Any key (a pair id, say) -> list of captions.
        convention: One of `CONVENTIONS`.
        vocab: Word -> id mapping or the path of a vocabulary JSON; required by `"vocab-ids"`, ignored otherwise.

    Returns:
        The same keys -> normalised captions (strings of space-separated tokens, or of ids for `"vocab-ids"`).
    """
    _check_convention(convention)
    collapsed = {key: [_collapse_whitespace(c) for c in caps] for key, caps in captions.items()}
    if convention == "raw":
        return collapsed
    if convention == "ccexpert":
        return {
            key: [_collapse_whitespace(c.lower().replace(".", "")) for c in caps] for key, caps in collapsed.items()
        }
    if convention == "ptb":
        return _ptb_tokenize(collapsed)
    if vocab is None:
        raise ValueError("the 'vocab-ids' convention needs a vocabulary (e.g. splits/vocab_468.json)")
    if not isinstance(vocab, Mapping):
        vocab = load_vocab(vocab)
    return {key: [_classic_ids(c, vocab) for c in caps] for key, caps in collapsed.items()}


# ----------------------------------------------------------------------------------------------------------
# METEOR and Java
# ----------------------------------------------------------------------------------------------------------


def _require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise JavaNotFoundError(f"{what} runs on Java, and `java` is not on PATH: {JAVA_FIX}.")


@functools.lru_cache(maxsize=1)
def _java_version() -> str | None:
    if shutil.which("java") is None:
        return None
    completed = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "([^"]+)"', completed.stderr)
    return match.group(1) if match else (completed.stderr.strip().splitlines() or [None])[0]


def _meteor_score_line(references: Sequence[str], hypothesis: str) -> str:
    # Exactly the line pycocoevalcap's `Meteor._stat` sends.
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


class _StreamingMeteor(Meteor):
    """pycocoevalcap's METEOR 1.5 wrapper (same jar, arguments and SCORE/EVAL protocol), with two changes of speed.

    The SCORE lines are streamed by a writer thread instead of one blocking round trip per pair, and the
    per-pair statistics are kept, so that several subsets are scored by one EVAL line each without
    recomputing alignments. The corpus score of a subset is METEOR's aggregate over its pairs' statistics,
    which is what `Meteor.compute_score` returns when called on that subset alone.

    Args:
        process: A METEOR process from `rscc_console.start_meteor_process` (one the `rscc` console script started
            early, say); a new one by default.
    """

    def __init__(self, process: subprocess.Popen | None = None):  # pycocoevalcap's __init__ would start another
        self.meteor_p = process if process is not None else start_meteor_process()
        self.lock = threading.Lock()

    def _read_line(self) -> str:
        line = self.meteor_p.stdout.readline()
        if not line:
            error = self.meteor_p.stderr.read().decode(errors="replace") if self.meteor_p.poll() is not None else ""
            raise RuntimeError(f"the METEOR process stopped unexpectedly: {error.strip()[-2000:]}")
        return line.decode().strip()

    def segment_statistics(self, pairs: Sequence[tuple[Sequence[str], str]]) -> list[str]:
        """METEOR's sufficient statistics for each (references, hypothesis) pair."""
        lines = [_meteor_score_line(references, hypothesis) for references, hypothesis in pairs]
        writer_errors: list[BaseException] = []

        def write_lines() -> None:
            try:
                self.meteor_p.stdin.write("".join(line + "\n" for line in lines).encode())
                self.meteor_p.stdin.flush()
            except OSError as error:  # the process died; the reader reports why
                writer_errors.append(error)

        with self.lock:
            writer = threading.Thread(target=write_lines, daemon=True)
            writer.start()
            statistics = [self._read_line() for _ in lines]
            writer.join()
        if writer_errors:
            raise writer_errors[0]
        return statistics

    def corpus_score(self, statistics: Sequence[str]) -> float:
        """METEOR's corpus-level score from per-pair statistics (the value `Meteor.compute_score` returns)."""
        with self.lock:
            self.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(statistics) + "\n").encode())
            self.meteor_p.stdin.flush()
            for _ in statistics:  # METEOR answers with one score per pair, then the aggregate
                self._read_line()
            return float(self._read_line())


_meteor_lock = threading.Lock()
_meteor_process: _StreamingMeteor | None = None


def _meteor() -> _StreamingMeteor:
    # One JVM for the life of the Python process: loading METEOR's paraphrase table takes 12-15 s on two cores,
    # scoring the LEVIR-CC test split about 3 s. Starting it early lets the table load while Python computes the
    # other metrics; the `rscc` console script starts it before importing the package.
    global _meteor_process
    _require_java("METEOR")
    with _meteor_lock:
        if _meteor_process is None or _meteor_process.meteor_p.poll() is not None:
            _meteor_process = _StreamingMeteor(take_prestarted_meteor())
        return _meteor_process


@atexit.register
def _close_meteor() -> None:
    # METEOR exits at the end of its input; waiting for it here leaves no JVM behind the Python process.
    if _meteor_process is not None and _meteor_process.meteor_p.poll() is None:
        _meteor_process.meteor_p.stdin.close()
        try:
            _meteor_process.meteor_p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _meteor_process.meteor_p.kill()
            _meteor_process.meteor_p.wait()


# ----------------------------------------------------------------------------------------------------------
# Caption scoring
# ----------------------------------------------------------------------------------------------------------


def _check_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return CAPTION_METRICS
    metrics = tuple(metrics)
    unknown = [name for name in metrics if name not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from: {', '.join(CAPTION_METRICS)}")
    return metrics


def _check_ids(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    missing = [pair_id for pair_id in references if pair_id not in predictions]
    if missing:
        raise MissingPredictionsError(
            f"{len(missing)} of {len(references)} reference pairs have no prediction: {_preview(missing)}"
        )
    extra = [pair_id for pair_id in predictions if pair_id not in references]
    if extra:
        logger.warning("ignoring %d predictions whose id is not in the references: %s", len(extra), _preview(extra))
    not_text = [pair_id for pair_id, caption in predictions.items() if not isinstance(caption, str)]
    if not_text:
        raise RsccInputError(f"{len(not_text)} prediction(s) are not text: {_preview(not_text)}")
    empty = [pair_id for pair_id, refs in references.items()
             if not refs or not all(isinstance(ref, str) and ref.strip() for ref in refs)]
    if empty:
        raise RsccInputError(
            f"{len(empty)} reference pairs have no reference caption, or an empty one or one that is not text: "
            f"{_preview(empty)}"
        )
    return extra


def _preview(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(pair_id) for pair_id in ids[:limit])
    return shown + (f" ... (and {len(ids) - limit} more)" if len(ids) > limit else "")


def _needed_metrics(metrics: tuple[str, ...]) -> set[str]:
    return set(metrics) | (set(S_M_COMPONENTS) if "S_m" in metrics else set())


def _start_meteor(metrics: tuple[str, ...], require_meteor: bool) -> tuple[_StreamingMeteor | None, str | None]:
    """The METEOR process if METEOR is needed, else None; and why it is missing, if Java is."""
    if "METEOR" not in _needed_metrics(metrics):
        if require_meteor:
            raise ValueError("require_meteor=True, but neither METEOR nor S_m is among the metrics asked for")
        return None, None
    try:
        return _meteor(), None
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
    convention, metrics = _check_convention(convention), _check_metrics(metrics)
    _check_ids(predictions, references)
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

    A pair is "no change" when all its references are canonical no-change sentences (`rscc.captions`); a
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
    convention, metrics = _check_convention(convention), _check_metrics(metrics)
    if convention == "vocab-ids" and vocab is not None and not isinstance(vocab, Mapping):
        vocab = load_vocab(vocab)
    extra = _check_ids(predictions, references)
    ids = list(references)
    no_change_ids = {i for i in ids if all(is_no_change_caption(ref) for ref in references[i])}
    subsets = {
        "all": ids,
        "change": [i for i in ids if i not in no_change_ids],
        "no_change": [i for i in ids if i in no_change_ids],
    }
    meteor, meteor_error = _start_meteor(metrics, require_meteor)  # first, so that its JVM loads while the rest runs
    gts, res = _normalise_pairs(predictions, references, convention, vocab)
    scores = _score_subsets(gts, res, subsets, metrics, meteor)
    return {
        "convention": {
            "name": convention,
            "description": CONVENTIONS[convention],
            "vocab_size": len(vocab) if convention == "vocab-ids" and vocab is not None else None,
        },
        "scale": "0-100",
        "counts": {
            "pairs": len(ids),
            "references": sum(len(refs) for refs in references.values()),
            "change_pairs": len(subsets["change"]),
            "no_change_pairs": len(subsets["no_change"]),
            "ignored_predictions": len(extra),
        },
        "metrics": scores,
        "change_decision": _change_decision(predictions, no_change_ids, ids),
        "meteor_error": meteor_error,
        "versions": package_versions(),
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

    def mean(values: list[float | None]) -> float | None:
        return None if None in values else sum(values) / len(values)

    report = dict(runs[0])
    report["method"] = (
        f"leave-one-out: for k = 1..{per_pair}, reference k of every pair is scored as the prediction against the "
        f"other {per_pair - 1} references (corpus-level scores over the split and per subset); figures are the mean "
        f"of the {per_pair} runs"
    )
    report["counts"] = {**runs[0]["counts"], "references": sum(len(refs) for refs in references.values())}
    report["metrics"] = {
        subset: {metric: mean([run["metrics"][subset][metric] for run in runs]) for metric in scores}
        for subset, scores in runs[0]["metrics"].items()
    }
    report["change_decision"] = {
        key: mean([run["change_decision"][key] for run in runs]) for key in runs[0]["change_decision"]
    }
    report["runs"] = [run["metrics"] for run in runs]
    return report


# ----------------------------------------------------------------------------------------------------------
# Loading predictions and references
# ----------------------------------------------------------------------------------------------------------


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
        if _collapse_whitespace(captions[pair_id]) != _collapse_whitespace(caption) and pair_id not in conflicting:
            conflicting.append(pair_id)
    if conflicting:
        logger.warning(
            "%d pair ids have duplicate predictions that disagree; the first one of each is kept: %s",
            len(conflicting),
            _preview(conflicting),
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


def read_prediction_records(path: str | Path) -> list[dict]:
    """Read JSON lines `{"id": ..., "caption": ...}` as they are (no de-duplication); errors name the line."""
    path = Path(path)
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RsccInputError(f"{path}, line {number}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or "id" not in record or "caption" not in record:
            raise RsccInputError(
                f'{path}, line {number}: expected an object with "id" and "caption", got {line[:200]}'
            )
        # A null or a list would otherwise be scored as the words "None" or "['a', 'b']".
        if not isinstance(record["caption"], str):
            raise RsccInputError(f"{path}, line {number}: caption must be text, got {json.dumps(record['caption'])}")
        if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)):
            raise RsccInputError(f"{path}, line {number}: id must be text or a number, got {json.dumps(record['id'])}")
        records.append(record)
    if not records:
        raise RsccInputError(f"predictions file {path} holds no predictions")
    return records


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
        split: The split to keep (`"train"`, `"val"`, `"test"`); None keeps every entry of a caption JSON.

    Returns:
        Pair id -> list of reference captions, in file order.
    """
    path = Path(path)
    if path.is_dir():
        return _references_from_dataset(path, split)
    text = read_text_file(path)
    try:
        data = json.loads(text)
        entries = data["images"]
        if not isinstance(entries, list):
            raise TypeError(f"'images' is a {type(entries).__name__}")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RsccInputError(
            f"cannot read references from {path}: expected a LEVIR-CC-style JSON with an 'images' list ({error!r})"
        ) from None
    captions = [_entry_captions(entry) for entry in entries]
    if None in captions:
        raise RsccInputError(
            f"{path}: images[{captions.index(None)}] is not an entry of the form "
            '{"filename": text, "split": text, "sentences": [{"raw": text}, ...]}'
        )
    if split is not None:
        splits_present = sorted({str(entry.get("split")) for entry in entries})
        entries = [entry for entry in entries if entry.get("split") == split]
        if not entries:
            raise ValueError(f"no pairs of split {split!r} in {path}; splits present: {', '.join(splits_present)}")
    return {_pair_id(entry["filename"]): _entry_captions(entry) for entry in entries}


def _entry_captions(entry: object) -> list[str] | None:
    """The reference captions of a caption-file entry, or None when the entry is not of the Karpathy form."""
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        return None
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(sentence, dict) for sentence in sentences):
        return None
    # `raw` is the published sentence; older files have only `tokens`.
    captions = [sentence["raw"] if "raw" in sentence else sentence.get("tokens") for sentence in sentences]
    captions = [" ".join(caption) if isinstance(caption, list) and all(isinstance(token, str) for token in caption)
                else caption for caption in captions]
    return captions if all(isinstance(caption, str) for caption in captions) else None


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


# ----------------------------------------------------------------------------------------------------------
# Change detection
# ----------------------------------------------------------------------------------------------------------


def _to_numpy(array: object) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, possibly on an accelerator
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def mask_to_class_indices(mask: object, label_values: Sequence[int] = (0, 255)) -> np.ndarray:
    """Map the pixel values of a label image to class indices (value `label_values[k]` -> class k).

    Args:
        mask: Label image (array or tensor); for LEVIR-MCI pass channel 0.
        label_values: Pixel value of each class: `(0, 255)` for LEVIR-CD, `(0, 128, 255)` (background, road,
            building) for LEVIR-MCI.
    """
    mask = _to_numpy(mask)
    classes = np.full(mask.shape, -1, dtype=np.int64)
    for index, value in enumerate(label_values):
        classes[mask == value] = index
    if (classes < 0).any():
        unexpected = sorted(set(np.unique(mask[classes < 0]).tolist()))[:10]
        raise ValueError(f"mask has values {unexpected} outside the label values {tuple(label_values)}")
    return classes


class ChangeDetectionMetrics:
    """Change-detection metrics accumulated over a whole dataset through one confusion matrix.

    Binary masks (class 1 = change) give precision, recall, F1 and IoU of the change class and overall
    accuracy; multi-class masks (LEVIR-MCI: background, road, building) add per-class IoU and mIoU, and the
    binary figures are computed with every non-background class merged into "change". All on the 0-100 scale.

    Args:
        num_classes: Number of classes, background (no change) being class 0.
        class_names: Names for the per-class IoU entries; `class_0`... by default.
        ignore_index: Target value whose pixels are not counted.

    Example:
        >>> metrics = ChangeDetectionMetrics()
        >>> metrics.update(predicted_mask, target_mask)  # class indices, any shape, arrays or tensors
        >>> metrics.compute()["f1"]
    """

    def __init__(self, num_classes: int = 2, class_names: Sequence[str] | None = None, ignore_index: int | None = None):
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2 (background and change)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
        self.ignore_index = ignore_index
        self.confusion_matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion_matrix[:] = 0

    def update(self, prediction: object, target: object) -> None:
        """Add one mask or a batch of masks (class indices, same shape) to the confusion matrix (rows = target)."""
        prediction, target = _to_numpy(prediction), _to_numpy(target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
        for name, values in (("prediction", prediction), ("target", target)):
            # Probabilities or logits cast to int64 would silently become class 0.
            if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
                example = values[values != np.round(values)][0]
                raise RsccInputError(
                    f"{name} holds values that are not whole class indices (e.g. {example}); pass class indices "
                    "(argmax of the logits), not probabilities"
                )
        keep = np.ones(target.shape, dtype=bool) if self.ignore_index is None else target != self.ignore_index
        prediction, target = prediction[keep].astype(np.int64), target[keep].astype(np.int64)
        for name, values in (("prediction", prediction), ("target", target)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} has class indices outside 0..{self.num_classes - 1} "
                    f"(found {values.min()}..{values.max()}); see mask_to_class_indices"
                )
        counts = np.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        self.confusion_matrix += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict:
        """Metrics of everything accumulated; undefined ratios (0/0) are None."""
        matrix = self.confusion_matrix.astype(np.float64)

        def ratio(numerator: float, denominator: float) -> float | None:
            return 100.0 * numerator / denominator if denominator > 0 else None

        true_positive = matrix[1:, 1:].sum()  # change predicted where some change is true
        predicted_change, true_change = matrix[:, 1:].sum(), matrix[1:, :].sum()
        precision = ratio(true_positive, predicted_change)
        recall = ratio(true_positive, true_change)
        f1 = ratio(2 * true_positive, predicted_change + true_change)
        result = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "iou": ratio(true_positive, predicted_change + true_change - true_positive),
            "overall_accuracy": ratio(np.trace(matrix), matrix.sum()),
            "pixels": int(matrix.sum()),
        }
        intersection = np.diag(matrix)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - intersection
        per_class = [ratio(intersection[k], union[k]) for k in range(self.num_classes)]
        defined = [value for value in per_class if value is not None]
        result["per_class_iou"] = dict(zip(self.class_names, per_class))
        result["miou"] = sum(defined) / len(defined) if defined else None
        return result


# ----------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    """Versions of what the scores depend on (recorded in every report)."""
    from . import __version__

    versions: dict[str, str | None] = {"rscc": __version__, "python": platform.python_version()}
    for package in ("pycocoevalcap", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["java"] = _java_version()
    versions["meteor"] = "1.5"
    return versions


def write_report(report: Mapping, path: str | Path) -> Path:
    """Write a report as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def model_index_results(
    report: Mapping,
    dataset_name: str = "LEVIR-CC",
    dataset_type: str = "levir-cc",
    split: str | None = None,
) -> list[dict]:
    """`model-index` result entries (Hugging Face model card metadata) for a caption report.

    Only the scores on all pairs go in, each named with its convention (`"BLEU-4 (ccexpert)"`) and carrying it
    as `config`, so that numbers computed under different conventions never look comparable.

    Args:
        report: What `evaluate_captions` (or `rscc eval`) returned.
        dataset_name: Dataset shown on the card.
        dataset_type: Dataset id on the card.
        split: Split scored; by default the report's `references.split` when present.

    Returns:
        A list with one result entry: `{"task": ..., "dataset": ..., "metrics": [...]}`.
    """
    convention = report["convention"]["name"]
    split = split or report.get("references", {}).get("split")
    dataset = {"name": dataset_name, "type": dataset_type, **({"split": split} if split else {})}
    metrics = [
        {"type": name.lower(), "name": f"{name} ({convention})", "value": round(value, 2), "config": convention}
        for name, value in report["metrics"]["all"].items()
        if value is not None
    ]
    accuracy = report.get("change_decision", {}).get("accuracy")
    if accuracy is not None:
        metrics.append(
            {"type": "accuracy", "name": "Change/no-change accuracy", "value": round(accuracy, 2), "config": convention}
        )
    task = {"type": "image-to-text", "name": "Remote-sensing image change captioning"}
    return [{"task": task, "dataset": dataset, "metrics": metrics}]


def format_table(report: Mapping) -> str:
    """The report's caption scores as a plain-text table."""
    metrics = list(report["metrics"]["all"])
    counts = report["counts"]
    pairs = {"all": counts["pairs"], "change": counts["change_pairs"], "no_change": counts["no_change_pairs"]}
    lines = [f"convention: {report['convention']['name']} ({report['convention']['description']}); scale 0-100"]
    lines.append(f"{'subset':<10}{'pairs':>7}" + "".join(f"{name:>9}" for name in metrics))
    for subset, scores in report["metrics"].items():
        cells = "".join(f"{'-' if value is None else f'{value:.2f}':>9}" for value in scores.values())
        lines.append(f"{subset:<10}{pairs[subset]:>7}" + cells)
    decision = report["change_decision"]
    if decision["accuracy"] is not None:
        parts = [
            f"{key.removesuffix('_accuracy')} {decision[key]:.2f}"
            for key in ("change_accuracy", "no_change_accuracy")
            if decision[key] is not None
        ]
        lines.append(f"change/no-change accuracy {decision['accuracy']:.2f} ({', '.join(parts)})")
    if report.get("meteor_error"):
        lines.append(f"METEOR not computed: {report['meteor_error']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `rscc eval` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="score predicted captions against references (BLEU, METEOR, ROUGE-L, CIDEr-D, S_m)",
        description=(
            "Score predicted change captions with the pycocoevalcap scorers under a named convention, on all pairs "
            "and on the change / no-change subsets. Scores are on the 0-100 scale."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help='JSON lines {"id": ..., "caption": ...}')
    source.add_argument(
        "--human-agreement",
        action="store_true",
        help="score each reference against the other ones (leave-one-out) instead of predictions",
    )
    parser.add_argument(
        "--references", type=Path, required=True, help="LEVIR-CC-style caption JSON or dataset folder in rscc's format"
    )
    parser.add_argument("--split", default="test", help="split of the references to score (default: test)")
    parser.add_argument(
        "--convention",
        default=DEFAULT_CONVENTION,
        choices=list(CONVENTIONS),
        help="caption normalisation before scoring (default: ccexpert); "
        + "; ".join(f"{name}: {text}" for name, text in CONVENTIONS.items()),
    )
    parser.add_argument("--vocab", type=Path, help="vocabulary JSON for --convention vocab-ids")
    parser.add_argument(
        "--metrics",
        nargs="+",
        choices=list(CAPTION_METRICS),
        metavar="METRIC",
        help=f"metrics to compute, from {', '.join(CAPTION_METRICS)} (default: all)",
    )
    parser.add_argument(
        "--require-meteor", action="store_true", help="fail when Java is missing instead of skipping METEOR and S_m"
    )
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="score every prediction row, repeated ids included, as CCExpert's released evaluation did "
        "(default: one prediction per id, the first)",
    )
    parser.add_argument("--output", type=Path, help="write the full report (JSON) here")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Run `rscc eval`; returns the exit code."""
    try:
        if args.output is not None and (args.output.is_dir() or args.output in (args.predictions, args.references)):
            raise RsccInputError(f"--output {args.output} is a folder or an input; expected a .json file path")
        if args.convention == "vocab-ids" and args.vocab is None:
            raise ValueError("--convention vocab-ids needs --vocab (e.g. splits/vocab_468.json)")
        if args.vocab is not None and args.convention != "vocab-ids":
            raise RsccInputError(f"--vocab is used by --convention vocab-ids only; {args.convention!r} would ignore it")
        if args.keep_duplicates and args.human_agreement:
            raise RsccInputError("--keep-duplicates applies to --predictions; --human-agreement has none")
        vocab = load_vocab(args.vocab) if args.vocab is not None else None
        references = load_references(args.references, args.split)
        options = {"convention": args.convention, "vocab": vocab, "metrics": args.metrics,
                   "require_meteor": args.require_meteor}
        if args.human_agreement:
            report = leave_one_out_agreement(references, **options)
            prediction_info = None
        else:
            records = read_prediction_records(args.predictions)
            predictions, prediction_counts = deduplicate_predictions(records)
            if args.keep_duplicates:
                _check_ids(predictions, references)  # every pair still needs a prediction
                predictions, references = every_row_as_a_pair(records, references)
            report = evaluate_captions(predictions, references, **options)
            prediction_info = {"path": str(args.predictions), **prediction_counts,
                               "duplicates_scored": args.keep_duplicates}
    except (ValueError, FileNotFoundError, JavaNotFoundError) as error:
        print(f"rscc eval: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report["references"] = {"path": str(args.references), "split": args.split}
    report["convention"]["vocab"] = str(args.vocab) if args.vocab is not None else None
    if prediction_info is not None:
        report["predictions"] = prediction_info
    print(format_table(report))
    if args.output is not None:
        print(f"report written to {write_report(report, args.output)}")
    return EXIT_OK
