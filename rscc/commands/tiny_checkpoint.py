"""`rscc tiny-checkpoint`: a tiny random rscc checkpoint folder (see `rscc.tiny_checkpoints`)."""

import argparse
from pathlib import Path

from ..cli import EXIT_OK, command_help
from ..output_files import OutputPathError
from ..terminal import print_result


def main(args: argparse.Namespace) -> int:
    """Run `rscc tiny-checkpoint`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..tiny_checkpoints import make_tiny_checkpoint

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputPathError(f"{out} exists and is not an empty folder; its files would be replaced. Choose a new "
                              "path")
    print_result(str(make_tiny_checkpoint(out, seed=args.seed)))
    return EXIT_OK


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tiny-checkpoint",
        help=command_help("tiny-checkpoint"),
        description="Write a tiny random rscc checkpoint (model and processor) to OUT. Its captions are noise: "
        "it exercises the code path, not the task.",
    )
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=main)
    return parser
