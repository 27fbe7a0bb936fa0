"""The `rscc eval` command: score predicted captions (or human agreement) against references, print and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..caption_files import read_prediction_records
from ..cli import EXIT_OK
from ..terminal import print_result
from ..errors import RsccInputError
from ..output_lock import locking_output
from .conventions import CONVENTIONS, DEFAULT_CONVENTION, load_vocab
from .inputs import deduplicate_predictions, every_row_as_a_pair, load_references
from .reports import format_table, write_report
from .scoring import CAPTION_METRICS, check_prediction_ids, evaluate_captions, leave_one_out_agreement


def make_parser(subparsers: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(run=locking_output(run_eval, "output"))



def _check_options(args: argparse.Namespace) -> None:
    if args.output is not None and (args.output.is_dir() or args.output in (args.predictions, args.references)):
        raise RsccInputError(f"--output {args.output} is a folder or an input; expected a .json file path")
    if args.convention == "vocab-ids" and args.vocab is None:
        raise ValueError("--convention vocab-ids needs --vocab (e.g. splits/vocab_468.json)")
    if args.vocab is not None and args.convention != "vocab-ids":
        raise RsccInputError(f"--vocab is used by --convention vocab-ids only; {args.convention!r} would ignore it")
    if args.keep_duplicates and args.human_agreement:
        raise RsccInputError("--keep-duplicates applies to --predictions; --human-agreement has none")


def _score(args: argparse.Namespace) -> dict:
    """The report of the command line's evaluation, with what was read (references, predictions) recorded."""
    vocab = load_vocab(args.vocab) if args.vocab is not None else None
    references = load_references(args.references, args.split)
    options = {"convention": args.convention, "vocab": vocab, "metrics": args.metrics,
               "require_meteor": args.require_meteor}
    prediction_info = None
    if args.human_agreement:
        report = leave_one_out_agreement(references, **options)
    else:
        records = read_prediction_records(args.predictions)
        predictions, prediction_counts = deduplicate_predictions(records)
        if args.keep_duplicates:
            check_prediction_ids(predictions, references)  # every pair still needs a prediction
            predictions, references = every_row_as_a_pair(records, references)
        report = evaluate_captions(predictions, references, **options)
        prediction_info = {"path": str(args.predictions), **prediction_counts,
                           "duplicates_scored": args.keep_duplicates}
    report["references"] = {"path": str(args.references), "split": args.split}
    report["convention"]["vocab"] = str(args.vocab) if args.vocab is not None else None
    if prediction_info is not None:
        report["predictions"] = prediction_info
    return report


def run_eval(args: argparse.Namespace) -> int:
    """Run `rscc eval`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    _check_options(args)
    report = _score(args)
    print_result(format_table(report), multiline=True)
    if args.output is not None:
        print_result(f"report written to {write_report(report, args.output)}")
    return EXIT_OK
