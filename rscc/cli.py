"""The `rscc` console script: one entry point, one subcommand per task.

Each module in `SUBCOMMAND_MODULES` defines `make_parser(subparsers)`, which adds its subcommand parsers and sets
`run=main`, the command's `main(args) -> exit code`, as their default (TRL's pattern: the command apart from the
library code it calls). A command line naming a subcommand imports that module alone, and a command module imports
the library (torch, transformers) only when it runs, so help and argument errors take a fraction of a second;
`rscc --help` and unknown commands import no command module at all. A command reports failure by raising: `main`
here turns the exception into one line on stderr and its exit code (`EXIT_CODE_OF_ERROR`), the same for every
command. While a command runs its results go to stdout and everything else to stderr (`rscc.terminal`).
"""

import argparse
import importlib
import signal
import sys

from .terminal import show_library_progress_bars, stdout_for_results_only

# Subcommand -> the module that defines it, and the line `rscc --help` shows for it (the module's parser shows the
# same line): top-level help lists the commands without importing them.
SUBCOMMANDS = {
    "caption": ("rscc.commands.caption",
                "caption the change between two images (or a series of dates), or many pairs and series"),
    "tiny-checkpoint": ("rscc.commands.tiny_checkpoint",
                        "write a tiny random rscc model + processor folder (offline smoke tests and demos)"),
    "data": ("rscc.data.cli", "build change-captioning datasets (Parquet shards + dataset card)"),
    "eval": ("rscc.metrics.cli", "score predicted captions against references (BLEU, METEOR, ROUGE-L, CIDEr-D, S_m)"),
    "scene": ("rscc.commands.scene",
              "caption the change between two GeoTIFF scenes (or a series), tile by tile, into GeoJSON or GeoParquet"),
    "card": ("rscc.commands.hub", "write a model card from an evaluation JSON"),
    "publish": ("rscc.commands.hub", "assemble an rscc checkpoint for the Hub and upload it"),
    "demo": ("rscc.commands.demo", "serve the change-captioning demo page (Gradio)"),
    "space": ("rscc.commands.demo", "write (and upload) a Hub Space that serves the demo of a published model"),
    "launch": ("rscc.launch",
               "accelerate launch with rscc's exit codes: rscc launch [ACCELERATE LAUNCH OPTIONS] -m rscc COMMAND ..."),
}
SUBCOMMAND_MODULES = {command: module for command, (module, _) in SUBCOMMANDS.items()}


def command_help(command: str) -> str:
    """The one-line help of `command` (its parser's `help=`)."""
    return SUBCOMMANDS[command][1]


# The exit codes of every command (README, "Errors").
EXIT_OK = 0
EXIT_INVALID_RECORDS = 1  # rscc data: records failed validation, every problem listed (nothing written)
EXIT_BAD_INPUT = 2  # a file, option or model the command cannot use; also argparse's code for a bad command line
EXIT_OUT_OF_MEMORY = 3
EXIT_HUB = 4  # the Hugging Face Hub refused or could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), the shell's 128 + 2
EXIT_TERMINATED = 143  # SIGTERM, the shell's 128 + 15

# The exit code of a command's exception: the first row naming its class or a base class. Classes go by qualified
# name so that this table imports nothing (`rscc eval` starts without torch): an exception whose module was never
# imported was never raised. Any other exception is a defect, shown with its traceback.
EXIT_CODE_OF_ERROR = (
    ("rscc.data.schema.InvalidRecordsError", EXIT_INVALID_RECORDS),
    ("rscc.errors.HubUnreachableError", EXIT_HUB),
    ("torch.OutOfMemoryError", EXIT_OUT_OF_MEMORY),
    ("rscc.metrics.meteor.JavaNotFoundError", EXIT_BAD_INPUT),
    ("builtins.ValueError", EXIT_BAD_INPUT),  # rscc.errors.RsccInputError and every reader's bad-value error
    ("builtins.OSError", EXIT_BAD_INPUT),  # missing or unreadable files
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a command cleans up (temporary outputs, resumable files) the same way."""


def _raise_terminated(signum, frame):
    raise Terminated()


def interrupted_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by Ctrl-C or SIGTERM."""
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def exit_code_of(error: BaseException) -> int | None:
    """The exit code `EXIT_CODE_OF_ERROR` gives `error`, or None for an exception no command raises on purpose."""
    classes = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}
    return next((code for name, code in EXIT_CODE_OF_ERROR if name in classes), None)


def _failure_message(error: BaseException, code: int, args) -> str:
    """The line a failed command ends with: what went wrong, then what a stopped run left (the command's
    `stopped_note(args)`, e.g. the part files a rerun resumes from)."""
    if code == EXIT_OUT_OF_MEMORY:
        message = f"error: out of memory on {getattr(args, 'device', 'the device')}"
        message += "; lower --batch-size" if hasattr(args, "batch_size") else ""
    elif isinstance(error, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = f"error: {error}"
    note = args.stopped_note(args) if hasattr(args, "stopped_note") else ""
    return f"rscc {args.command}: {message}" + (f" ({note})" if note else "")


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
    """The parser of `command`'s module (importing that module alone), or, for any other first word (`--help`, a
    typo), a parser that lists every command without importing any."""
    parser = argparse.ArgumentParser(prog="rscc", description="Remote-sensing image change captioning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in SUBCOMMAND_MODULES:
        importlib.import_module(SUBCOMMAND_MODULES[command]).make_parser(subparsers)
    else:
        for name in SUBCOMMANDS:
            subparsers.add_parser(name, help=command_help(name), add_help=False)
    return parser


def _prepare_to_run(args) -> None:
    """What every command needs once its line is parsed: the rscc classes registered with the Auto classes (the
    console script imports rscc lazily, so that help and argument errors need no torch), and library progress bars
    that follow the command's --progress (default: when stderr is a terminal)."""
    import rscc

    if args.command != "eval":  # scoring needs neither torch nor transformers
        rscc.register_auto_classes()
    progress = getattr(args, "progress", None)
    show_library_progress_bars(sys.stderr.isatty() if progress is None else progress)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    _prepare_to_run(args)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with stdout_for_results_only():
            return args.run(args)
    except KeyboardInterrupt as interrupt:  # the command's finally blocks have run
        print(_failure_message(interrupt, EXIT_INTERRUPTED, args), file=sys.stderr)
        return interrupted_exit_code(interrupt)
    except Exception as error:
        code = exit_code_of(error)
        if code is None:
            raise
        print(_failure_message(error, code, args), file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
