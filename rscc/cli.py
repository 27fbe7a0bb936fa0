"""The `rscc` console script: one entry point, one subcommand per task."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rscc", description="Remote-sensing image change captioning.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    del subparsers
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
