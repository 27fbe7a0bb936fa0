"""The files converters read, with a file that is not of its format reported as a `DataInputError`."""

from __future__ import annotations

import json
from pathlib import Path

from ..caption_files import CaptionFileError, read_karpathy_file
from ..errors import read_text_file
from .schema import DataInputError


def read_json_file(path: Path, kind: type, what: str):
    """The content of a JSON file, which must be of type `kind` (`what` names it in the error)."""
    try:
        content = json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise DataInputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(content, kind):
        raise DataInputError(f"{path}: expected {what}")
    return content


def read_json_records(path: Path) -> list:
    """Items of a JSON list or of a JSON Lines file, each with its position for error messages."""
    if path.suffix == ".jsonl":
        items = []
        for number, line in enumerate(read_text_file(path).splitlines(), start=1):
            if line.strip():
                try:
                    items.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataInputError(f"{path}: line {number} is not valid JSON ({error})") from None
    else:
        content = read_json_file(path, list, "a JSON list of records")
        items = [(f"[{position}]", item) for position, item in enumerate(content)]
    for where, item in items:
        if not isinstance(item, dict):
            raise DataInputError(f"{path}: {where} is not a JSON object")
    return items


def read_karpathy_entries(path: Path) -> list:
    """The entries of a Karpathy-style caption file (`rscc.caption_files.read_karpathy_file`), every one checked."""
    try:
        return read_karpathy_file(path)
    except CaptionFileError as error:
        raise DataInputError(str(error)) from None


def check_fields(path: Path, where: str, item: dict, fields: dict) -> None:
    """Raise a `DataInputError` naming the file and the item when `item` lacks one of `fields` (name -> what it
    must be: `str`, or `list` for a list of text)."""
    missing = [name for name in fields if name not in item]
    if missing:
        raise DataInputError(f"{path}: {where} has no {', '.join(missing)}")
    wrong = [name for name, kind in fields.items() if not (
        isinstance(item[name], str) if kind is str
        else isinstance(item[name], list) and all(isinstance(value, str) for value in item[name]))]
    if wrong:
        raise DataInputError(f"{path}: {where}: " + ", ".join(
            f"{name} must be {'text' if fields[name] is str else 'a list of text'}, got {item[name]!r}"
            for name in wrong))


def path_under_root(root: Path, relative: str, where: str, allow_outside: bool = False) -> Path:
    """`root / relative`, refused (naming both) when it leads outside `root` (`../`, an absolute path, a link out of
    it) unless `allow_outside`: a records file that names files elsewhere is more often wrong than meant.

    Args:
        root (`Path`): the declared image root (`--image-root`).
        relative (`str`): the path the records file gives.
        where (`str`): the file and item, for the message.
        allow_outside (`bool`): accept such paths (`--allow-outside-root`).
    """
    path = root / relative
    if not allow_outside and not path.resolve().is_relative_to(root.resolve()):
        raise DataInputError(f"{where}: image path {relative!r} leads outside --image-root {root} (to "
                             f"{path.resolve()}); pass --allow-outside-root if the records mean it")
    return path


def split_files(folder: Path, file_splits: dict, dataset: str) -> list:
    """(file, split) of the split files present in `folder`, `file_splits` mapping each file name to its split; a
    `DataInputError` when none is."""
    files = [(folder / name, split) for name, split in file_splits.items() if (folder / name).is_file()]
    if not files:
        raise DataInputError(f"{folder}: none of {', '.join(file_splits)} ({dataset}'s split files)")
    return files
