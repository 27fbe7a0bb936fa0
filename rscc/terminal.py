"""What a command shows: its results on stdout, everything else on stderr, progress bars on request, text made safe.

`rscc` commands print results that scripts read (`p=$(rscc tiny-checkpoint x)`, `--json`, eval's report), so stdout
must hold those alone. Libraries the commands import print to stdout on their own (DeepSpeed's logger, bound to
`sys.stdout` when it is imported, prints "Setting accelerator to CPU"), so while a command runs `sys.stdout` is
stderr, and the command writes its results to `command_output()`, the process's real stdout.
"""

import contextlib
import os
import sys
import unicodedata
from typing import Iterator, TextIO

_command_output: TextIO | None = None


def command_output() -> TextIO:
    """The stream a command writes its results to: the process's stdout, kept for them while the command runs."""
    return _command_output if _command_output is not None else sys.stdout


@contextlib.contextmanager
def stdout_for_results_only() -> Iterator[None]:
    """Run a command with `sys.stdout` pointing at stderr, so that whatever libraries print lands there; the
    command's own results go to `command_output()`."""
    global _command_output
    previous = _command_output
    _command_output = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _command_output = previous


def show_library_progress_bars(show: bool) -> None:
    """Turn the progress bars of huggingface_hub, transformers (which follows huggingface_hub's setting) and datasets
    on or off, whether or not they are imported yet."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if show else "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "0" if show else "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if show else disable_progress_bars)()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        (logging.enable_progress_bar if show else logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        from datasets.utils import logging as datasets_logging

        (datasets_logging.enable_progress_bar if show else datasets_logging.disable_progress_bar)()


def for_terminal(text: str, stream: TextIO) -> str:
    """`text` with its control characters (a caption's escape sequences, carriage returns, bells) written as
    `\\x1b`-style escapes when `stream` is a terminal; unchanged for a pipe or a file, whose readers get the exact
    text."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return text
    return "".join(
        character.encode("unicode_escape").decode("ascii") if unicodedata.category(character) == "Cc" else character
        for character in text
    )


def print_result(text: str, multiline: bool = False) -> None:
    """Print a command's result to `command_output()`, escaped for a terminal: one line (a caption: a newline in it
    is escaped too), or, with `multiline`, lines (a table) whose own line breaks are kept."""
    stream = command_output()
    lines = text.split("\n") if multiline else [text]
    print("\n".join(for_terminal(line, stream) for line in lines), file=stream)
