"""Output files: checked before any work, and written all or nothing (a temporary file or folder next to the
output, renamed over it once complete), so that a failed, interrupted or terminated command leaves no output that
looks finished. Every command's outputs go through here."""

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import RsccInputError


class OutputPathError(RsccInputError):
    """An output path a command cannot write: empty, a folder, one of its inputs, or in a folder it cannot create."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to `path`, renamed to `path` if the block succeeds and removed if it fails.

    Args:
        path (`str` or `os.PathLike`): the output file.
        suffix (`str`): the temporary file's suffix, for writers that pick a format by it (`.tif`, `.png`).
    """
    path = Path(path)
    # A fresh name, not a file: the writer creates it, with the permissions of any file it writes (mkstemp's are
    # private to the user).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new folder next to `out` to write into: it replaces `out` (absent or checked empty) when the block
    succeeds and is removed otherwise, so a failure never leaves a half-written folder."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    temporary.chmod(0o755)  # mkdtemp's folder is private; the result is meant to be shared
    try:
        yield temporary
        if out.exists():
            out.rmdir()
        os.replace(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_output_file(
    path: str | os.PathLike | None, option: str, expected: str, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Validate an output file path before any work, and create its folder.

    Args:
        path: the option's value.
        option (`str`): the option, for messages (`--out`).
        expected (`str`): what the file is, for messages (`a .jsonl file path`).
        inputs: the files the command reads; an output replacing one of them is refused.

    Raises:
        OutputPathError: an empty path, a folder, an input file, or a folder that cannot be created.
    """
    if path is None or not str(path).strip():
        raise OutputPathError(f"{option} is an empty path; expected {expected}")
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; expected {expected}")
    for source in inputs:
        if source is not None and path.resolve() == Path(source).resolve():
            raise OutputPathError(f"{option} {path} is an input of this command; it would be overwritten. "
                                  f"Expected {expected} of its own")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"{option} {path}: cannot create its folder ({error.strerror or error})") from None
    return path


__all__ = ["OutputPathError", "atomic_output", "check_output_file", "staged_folder"]
