"""The files converters read, with a file that is not of its format reported as a `DataInputError`."""

from __future__ import annotations

import json
from pathlib import Path

from ..caption_files import CaptionFileError, read_karpathy_file
from ..errors import read_text_file
from .schema import DataInputError


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
        try:
            content = json.loads(read_text_file(path))
        except json.JSONDecodeError as error:
            raise DataInputError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(content, list):
            raise DataInputError(f"{path}: expected a JSON list of records")
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
