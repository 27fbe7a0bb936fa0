"""The `rscc` console script: one entry point, one subcommand per task.

Each module in `SUBCOMMAND_MODULES` defines `add_cli(subparsers)`, which adds its subcommand parsers and sets
`run=function(args) -> exit code` as their default. A command line naming a subcommand imports that module alone
(`rscc eval` needs no torch); help and unknown commands import them all.
"""

import argparse
import importlib
import signal
import sys

# Subcommand -> the module that defines it.
SUBCOMMAND_MODULES = {
    "caption": "rscc.inference",
    "tiny-checkpoint": "rscc.checkpoints",
    "data": "rscc.data.cli",
    "eval": "rscc.metrics.cli",
    "scene": "rscc.scene",
    "card": "rscc.hub",
    "publish": "rscc.hub",
    "demo": "rscc.demo",
    "space": "rscc.demo",
    "launch": "rscc.launch",
}


# The exit codes of every command (README, "Errors").
EXIT_OK = 0
EXIT_INVALID_RECORDS = 1  # rscc data: records failed validation, every problem listed (nothing written)
EXIT_BAD_INPUT = 2  # a file, option or model the command cannot use; also argparse's code for a bad command line
EXIT_OUT_OF_MEMORY = 3
EXIT_HUB = 4  # the Hugging Face Hub refused or could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), the shell's 128 + 2
EXIT_TERMINATED = 143  # SIGTERM, the shell's 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a command cleans up (temporary outputs, resumable files) the same way."""


def _raise_terminated(signum, frame):
    raise Terminated()


def interrupted_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by Ctrl-C or SIGTERM."""
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def positive_int(text: str) -> int:
    """argparse type of counts and sizes (--batch-size, --max-new-tokens, --max-shard-size): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.run(args)
    except KeyboardInterrupt as interrupt:  # commands without their own message; their finally blocks have run
        print(f"rscc {args.command}: interrupted", file=sys.stderr)
        return interrupted_exit_code(interrupt)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
