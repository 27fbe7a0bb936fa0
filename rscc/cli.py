"""The `rscc` console script: one entry point, one subcommand per task.

Each module in `SUBCOMMAND_MODULES` defines `add_cli(subparsers)`, which adds its subcommand parser and sets
`run=function(args) -> exit code` as its default.
"""

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "rscc.inference",
    "rscc.checkpoints",
    "rscc.data",
    "rscc.metrics",
    "rscc.scene",
    "rscc.hub",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rscc", description="Remote-sensing image change captioning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_cli(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
