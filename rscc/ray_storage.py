"""Where the Ray engine's images, shards and output live (a local path or any pyarrow file-system URI such as
`s3://`), and how finished lines are read back from them (resume) and written as the one output (see `rscc.ray`)."""

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.json
import pyarrow.parquet as pq

from .batch import BatchInputError, SampleRecord, _resumable_id
from .errors import RsccInputError
from .output_files import atomic_output
from .parallel import read_part
from .input_fingerprint import FINGERPRINTS_FIELD, changed_files

SHARDS_SUFFIX = ".shards"
PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class Location:
    """A file on a pyarrow file system.

    Args:
        filesystem (`pyarrow.fs.FileSystem`): where it lives.
        path (`str`): its path on `filesystem` (no scheme).
        uri (`str`): how the user named it, for messages.
    """

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def parse(cls, uri: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> "Location":
        """A local path, or a URI pyarrow knows (`file://`, `s3://`, `gs://`, `hdfs://`, ...)."""
        uri = str(uri)
        if filesystem is not None:
            return cls(filesystem, uri, uri)
        if "://" not in uri:
            return cls(pafs.LocalFileSystem(), str(Path(uri).absolute()), uri)
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
            raise BatchInputError(f"{uri}: not a file-system URI pyarrow can open ({error})") from None
        return cls(filesystem, path, uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def sibling(self, suffix: str) -> "Location":
        """The file or folder named as this one with `suffix` added (before a URI's query string)."""
        base, query = self.uri.split("?", 1) if "?" in self.uri else (self.uri, None)
        uri = base + suffix + ("" if query is None else "?" + query)
        return Location(self.filesystem, self.path + suffix, uri)

    def exists(self) -> bool:
        return self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()


def fetched_image(source: str, stored: bytes | None, folder: str, number: int) -> str:
    """A local file holding one image: the path itself, or a copy of a URI's object or of stored bytes (named with
    the source's suffix), so that every image is decoded by `load_image` from a file, as `rscc caption` decodes it."""
    if stored is None and "://" not in source:
        return source
    data = stored if stored is not None else Location.parse(source).read_bytes()
    local = Path(folder) / f"{number}{Path(source.split('?')[0]).suffix}"
    local.write_bytes(data)
    return str(local)




def _shard_rows(shards: Location) -> Iterator[tuple[str, dict]]:
    """`(shard URI, row)` of every shard file Ray wrote, JSON lines or Parquet (a shard a killed writer left
    unreadable is skipped: its samples are captioned again)."""
    found = shards.filesystem.get_file_info(pafs.FileSelector(shards.path, allow_not_found=True))
    for entry in sorted(found, key=lambda entry: entry.path):
        if entry.type != pafs.FileType.File:
            continue
        uri = shards.sibling("/" + entry.base_name).uri
        try:
            with shards.filesystem.open_input_file(entry.path) as handle:
                if entry.path.endswith(PARQUET_SUFFIX):
                    table = pq.read_table(handle)
                else:
                    table = pyarrow.json.read_json(handle)
        except (pa.ArrowInvalid, OSError):
            continue
        for row in table.to_pylist():
            yield uri, row


def _checked_lines(lines: list[str], where: str, records: list[SampleRecord], made_by: dict) -> None:
    """Refuse result lines made from other images or by another model or options (`rscc.batch`'s resume check)."""
    with tempfile.TemporaryDirectory(prefix="rscc-ray-") as folder:
        staged = Path(folder) / "lines.jsonl"
        staged.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        try:
            checked_id = _resumable_id(records, made_by)
            for number, line in read_part(staged):
                checked_id(staged, number, line)
        except RsccInputError as error:
            raise BatchInputError(str(error).replace(str(staged), where)) from None


def _output_lines(out: Location) -> list[str]:
    """The result lines of a finished output (JSON lines or Parquet)."""
    if out.path.endswith(PARQUET_SUFFIX):
        with out.filesystem.open_input_file(out.path) as handle:
            rows = pq.read_table(handle).to_pylist()
        return [json.dumps({key: value for key, value in row.items() if value is not None}) for row in rows]
    return [raw for raw in out.read_bytes().decode("utf-8").splitlines() if raw.strip()]


def finished_lines(out: Location, records: list[SampleRecord], made_by: dict) -> tuple[dict, dict]:
    """The result lines done so far by id (a finished output's, then the shards'), and the errors by id. A line whose
    input files changed since it was made is left out, so that a newer line of the shards, or a rerun, replaces it."""
    lines, errors = {}, {}
    shards = out.sibling(SHARDS_SUFFIX)
    if out.exists():
        done = _output_lines(out)
        _checked_lines(done, out.uri, records, made_by)
        for line in done:
            _keep_unless_changed(lines, line)
    by_shard = {}
    for uri, row in _shard_rows(shards):
        if row.get("line"):
            by_shard.setdefault(uri, []).append(row["line"])
            _keep_unless_changed(lines, row["line"])
        elif row.get("error"):
            errors.setdefault(row["id"], row["error"])
    for uri, shard_lines in by_shard.items():
        _checked_lines(shard_lines, uri, records, made_by)
    return lines, {key: error for key, error in errors.items() if key not in lines}


def _keep_unless_changed(lines: dict, line: str) -> None:
    """Add `line` under its id unless one is there already or its input files changed since it was made."""
    record = json.loads(line)
    if record["id"] in lines:
        return
    changed = changed_files(record.get(FINGERPRINTS_FIELD) or {})
    if changed:
        print(f"rscc caption: {record['id']}: {', '.join(changed)} changed since it was captioned; captioning it "
              "again", file=sys.stderr)
        return
    lines[record["id"]] = line


def write_output(out: Location, lines: list[str]) -> None:
    """The one output: JSON lines, or Parquet when `out` ends in .parquet (a temporary file renamed, locally)."""
    if out.path.endswith(PARQUET_SUFFIX):
        records = [json.loads(line) for line in lines]
        payload = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records), payload)
        data = payload.getvalue().to_pybytes()
    else:
        data = "".join(line + "\n" for line in lines).encode("utf-8")
    if out.is_local:
        path = Path(out.path)
        with atomic_output(path, path.suffix) as temporary:
            temporary.write_bytes(data)
    else:  # one PUT: an object store shows the whole object or none
        with out.filesystem.open_output_stream(out.path) as stream:
            stream.write(data)


def remove_location(location: Location) -> None:
    if location.exists():
        location.filesystem.delete_dir(location.path)


__all__ = ["PARQUET_SUFFIX", "SHARDS_SUFFIX", "Location", "fetched_image", "finished_lines", "remove_location",
           "write_output"]
