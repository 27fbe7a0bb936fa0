"""Bad user input: the error type every rscc reader and command raises for it, and the reader of users' text files
(standard library only, so that `rscc eval` uses them without torch); and the Hub failing. The input error types
live in the remote-code `errors_rscc.py`, which the saved processor uses without rscc installed."""

from pathlib import Path

from .errors_rscc import InputFileNotFoundError, RsccInputError

__all__ = ["HubUnreachableError", "RsccInputError", "InputFileNotFoundError", "read_text_file"]


class HubUnreachableError(RuntimeError):
    """The Hugging Face Hub could not be reached, refused, or failed, while a model was downloaded or a folder
    uploaded."""


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """The whole text of a user's file; a missing file, a folder or text in another encoding is an `RsccInputError`
    naming the file (and the line of the first byte that does not decode)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileNotFoundError(f"{path}: file not found") from None
    except OSError as error:
        raise RsccInputError(f"{path}: cannot read file ({error.strerror or error})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RsccInputError(
            f"{path}: line {line} is not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None
