"""The caption file formats that data preparation, evaluation and training share, read and written in one place.

- Karpathy-style caption files (LEVIR-CC's `LevirCCcaptions.json`, Dubai-CC's `*_Dubai_CC.json`):
  `{"images": [{"filename", "split", "sentences": [{"raw": ...}, ...], ...}, ...]}`.
- Predictions as JSON lines `{"id": ..., "caption": ...}` (`rscc eval --predictions`, training validation); the
  lines of `rscc caption` also name their images: `before` and `after` for a pair, `images` for a series.

Standard library only, so that `rscc eval` reads them without torch or `datasets`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import RsccInputError, read_text_file
from .output_files import atomic_output

KARPATHY_ENTRY_FORM = '{"filename": text, "split": text, "sentences": [{"raw": text}, ...]}'


class CaptionFileError(RsccInputError):
    """A caption or predictions file is not of its format (the message names the file and the entry or line)."""


@dataclass(frozen=True)
class KarpathyEntry:
    """One entry of a Karpathy-style caption file.

    Args:
        position: Index in the file's `images` list, for messages.
        filename: The image file name (`test_000001.png`).
        split: The split as the file names it (LEVIR-CC: "train", "val", "test"; callers map it as they need).
        captions: Each sentence's `raw` text (older files: its `tokens` joined by spaces; neither: "").
        fields: The whole entry, for keys of one source (LEVIR-CC's `filepath` and `changeflag`).
    """

    position: int
    filename: str
    split: str
    captions: list
    fields: dict


def _sentence_text(sentence: dict):
    """A sentence's caption, or None when its `raw` (or `tokens`) is not text."""
    text = sentence["raw"] if "raw" in sentence else sentence.get("tokens", "")
    if isinstance(text, list) and all(isinstance(token, str) for token in text):
        text = " ".join(text)
    return text if isinstance(text, str) else None


def _karpathy_entry(path: Path, position: int, entry: object) -> KarpathyEntry:
    if not isinstance(entry, dict):
        raise CaptionFileError(f"{path}: images[{position}] is not an entry of the form {KARPATHY_ENTRY_FORM}: "
                               f"it is a {type(entry).__name__}")
    missing = [key for key in ("filename", "split", "sentences") if key not in entry]
    if missing:
        raise CaptionFileError(f"{path}: images[{position}] is not an entry of the form {KARPATHY_ENTRY_FORM}: "
                               f"it has no {', '.join(missing)}")
    wrong = [key for key, kind in (("filename", str), ("split", str), ("sentences", list))
             if not isinstance(entry[key], kind)]
    sentences = entry["sentences"] if isinstance(entry["sentences"], list) else []
    captions = [_sentence_text(sentence) if isinstance(sentence, dict) else None for sentence in sentences]
    wrong += [f"sentences[{index}]" for index, caption in enumerate(captions) if caption is None]
    if wrong:
        raise CaptionFileError(f"{path}: images[{position}] is not an entry of the form {KARPATHY_ENTRY_FORM}: "
                               f"{', '.join(wrong)} not of that type")
    return KarpathyEntry(position, entry["filename"], entry["split"], captions, entry)


def read_karpathy_file(path: Union[str, os.PathLike]) -> list:
    """The entries of a Karpathy-style caption file, every one checked, as `KarpathyEntry`s in file order.

    Raises:
        CaptionFileError: The file is not JSON, has no `images` list, or an entry is not of the form (named).
        InputFileNotFoundError: The file does not exist.
    """
    path = Path(path)
    try:
        content = json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise CaptionFileError(f"{path}: not valid JSON ({error})") from None
    entries = content.get("images") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise CaptionFileError(f'{path}: expected a Karpathy-style (LEVIR-CC) caption file, {{"images": [...]}}')
    return [_karpathy_entry(path, position, entry) for position, entry in enumerate(entries)]


def date_fields(dates: list) -> dict:
    """How a result line names the images it captions: `before` and `after` for a pair (as rscc always wrote them),
    `images` (oldest first) for a series of N > 2 dates.

    Args:
        dates (`list[str]`): the image paths, oldest first.
    """
    return {"before": dates[0], "after": dates[1]} if len(dates) == 2 else {"images": list(dates)}


def line_dates(line: dict) -> list | None:
    """The image paths a result line names (see [`date_fields`]), oldest first; `None` when it names none."""
    if "images" in line:
        return line["images"]
    if "before" in line or "after" in line:
        return [line.get("before"), line.get("after")]
    return None


def _prediction_record(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CaptionFileError(f"{path}, line {number}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or "id" not in record or "caption" not in record:
        raise CaptionFileError(f'{path}, line {number}: expected an object with "id" and "caption", got {line[:200]}')
    # A null or a list would otherwise be scored as the words "None" or "['a', 'b']".
    if not isinstance(record["caption"], str):
        raise CaptionFileError(f"{path}, line {number}: caption must be text, got {json.dumps(record['caption'])}")
    if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)):
        raise CaptionFileError(f"{path}, line {number}: id must be text or a number, got {json.dumps(record['id'])}")
    return record


def read_prediction_records(path: Union[str, os.PathLike]) -> list:
    """Read JSON lines `{"id": ..., "caption": ...}` as they are (no de-duplication); errors name the line."""
    path = Path(path)
    records = [_prediction_record(path, number, line)
               for number, line in enumerate(read_text_file(path).splitlines(), start=1) if line.strip()]
    if not records:
        raise CaptionFileError(f"predictions file {path} holds no predictions")
    return records


def write_predictions(predictions: dict, output_file: Union[str, os.PathLike]) -> Path:
    """Write `{id: caption}` as JSON lines `{"id": ..., "caption": ...}` (parent folders created; all or nothing)."""
    path = Path(output_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        for identifier, caption in predictions.items():
            file.write(json.dumps({"id": identifier, "caption": caption}, ensure_ascii=False) + "\n")
    return path
