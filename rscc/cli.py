"""The `rscc` console script: one entry point, one subcommand per task.

Each module in `SUBCOMMAND_MODULES` defines `add_cli(subparsers)`, which adds its subcommand parsers and sets
`run=function(args) -> exit code` as their default. A command line naming a subcommand imports that module alone
(`rscc eval` needs no torch); help and unknown commands import them all.
"""

import argparse
import importlib
import sys

# Subcommand -> the module that defines it.
SUBCOMMAND_MODULES = {
    "caption": "rscc.inference",
    "tiny-checkpoint": "rscc.checkpoints",
    "data": "rscc.data",
    "eval": "rscc.metrics",
    "scene": "rscc.scene",
    "card": "rscc.hub",
    "publish": "rscc.hub",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of `command`'s module when it names one."""
    parser = argparse.ArgumentParser(prog="rscc", description="Remote-sensing image change captioning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in SUBCOMMAND_MODULES:
        module_names = [SUBCOMMAND_MODULES[command]]
    else:
        module_names = list(dict.fromkeys(SUBCOMMAND_MODULES.values()))
    for module_name in module_names:
        importlib.import_module(module_name).add_cli(subparsers)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
