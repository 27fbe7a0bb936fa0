"""What an input file was when a result was made from it, so that a resumed run notices inputs changed since.

A fingerprint is the file's size and modification time, and its SHA-256 where hashing is cheap (files up to
`HASHED_BYTES`, which covers image files; large rasters are compared by size and time). `rscc caption` writes the
fingerprints of a sample's files on its line; a rerun into the same output drops the lines of samples whose files
changed (another content, or size and time when there is no hash) and captions them again, saying which.
"""

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable

FINGERPRINTS_FIELD = "input_fingerprints"
HASHED_BYTES = 64 * 1024**2


def fingerprint(path: str | os.PathLike) -> dict:
    """`{"size", "mtime_ns"[, "sha256"]}` of a file (the hash for files up to `HASHED_BYTES`); `{"missing": true}`
    for a file that does not exist (a manifest's mask column, copied to the output but not read)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return {"missing": True}
    result = {"size": status.st_size, "mtime_ns": status.st_mtime_ns}
    if status.st_size <= HASHED_BYTES:
        with open(path, "rb") as file:
            result["sha256"] = hashlib.file_digest(file, "sha256").hexdigest()
    return result


def content_fingerprint(path: str | os.PathLike) -> dict:
    """What a file holds, for settings compared as a whole: size and hash where hashed (a file only touched is the
    same), else size and modification time."""
    whole = fingerprint(path)
    return {key: value for key, value in whole.items() if key != "mtime_ns" or "sha256" not in whole}


def fingerprints(paths: Iterable[str | os.PathLike]) -> dict:
    """`{path: fingerprint}` of the files a result is made from."""
    return {str(path): fingerprint(path) for path in paths}


def changed_files(recorded: dict) -> list[str]:
    """The files of `recorded` (`fingerprints()` of an earlier run) that are no longer what they were: missing, or of
    another content (hash), or, without a hash, of another size or modification time; or created since."""
    changed = []
    for path, before in recorded.items():
        try:
            now = os.stat(path)
        except OSError:
            if not before.get("missing"):
                changed.append(path)
            continue
        if before.get("missing") or now.st_size != before.get("size"):
            changed.append(path)
        elif "sha256" in before and now.st_size <= HASHED_BYTES:
            if now.st_mtime_ns != before.get("mtime_ns") and fingerprint(path).get("sha256") != before["sha256"]:
                changed.append(path)
        elif now.st_mtime_ns != before.get("mtime_ns"):
            changed.append(path)
    return changed


def _changed_since(raw: bytes, part: Path, command: str, dropped: list) -> bool:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError:
        return False  # not a result line: the reader of the part names it
    changed = changed_files(line.get(FINGERPRINTS_FIELD) or {}) if isinstance(line, dict) else []
    if changed:
        dropped.append(line.get("id"))
        print(f"rscc {command}: {line.get('id')!r} is captioned again: {', '.join(changed)} changed since it was "
              f"captioned ({part})", file=sys.stderr)
    return bool(changed)


def drop_results_of_changed_inputs(parts: Iterable[Path], command: str) -> list[str]:
    """Remove from resumable part files the result lines whose input files changed since they were written (lines
    without fingerprints, of an older rscc, are kept), and say on stderr which samples are made again and why.

    Args:
        parts (`Iterable[Path]`): the part files of an output (complete lines: after `rscc.parallel.repair_part`).
        command (`str`): the command, for the message (`caption`).

    Returns:
        The ids of the dropped results.
    """
    dropped = []
    for part in parts:
        lines = part.read_bytes().splitlines(keepends=True)
        kept = [raw for raw in lines if not _changed_since(raw, part, command, dropped)]
        if len(kept) < len(lines):
            temporary = part.with_name(part.name + ".rewrite")
            temporary.write_bytes(b"".join(kept))
            os.replace(temporary, part)
    return dropped


__all__ = [
    "FINGERPRINTS_FIELD",
    "changed_files",
    "content_fingerprint",
    "drop_results_of_changed_inputs",
    "fingerprint",
    "fingerprints",
]
