"""Data-parallel captioning and its part files: `accelerate launch -m rscc caption|scene` shares the work out across
processes, and one process's run resumes from what a stopped run left ([`PartFiles`], the one protocol of both).

Each process takes every N-th item that is not done yet, appends its results to its own part file after every batch
(`OUT.partial.RANK`; one `rscc caption` process writes `OUT.partial`, as it always has), and once every process is
done the main process merges the parts in input order into the one output and removes them. A rerun reads every part
file, whatever the number of processes that wrote it, and skips what is in one; a process that dies loses at most the
batch it was captioning. Processes only meet at barriers (no collective per batch), so the work itself never waits on
another process; the main process's progress bar counts the lines the other processes append to their parts.
"""

import contextlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, TextIO, TypeVar

from tqdm.auto import tqdm

from .errors import RsccInputError
from .launch import report_process_mismatch

PARTIAL_SUFFIX = ".partial"

Item = TypeVar("Item")


@dataclass(frozen=True)
class ProcessShare:
    """This process's place in a data-parallel run.

    Args:
        index (`int`): the process's rank, 0 for the main process.
        count (`int`): processes in the run (1 without a launcher).
        local_index (`int`): the rank on this node: which of the node's GPUs is this process's.
    """

    index: int = 0
    count: int = 1
    local_index: int = 0

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, items: Iterable[Item]) -> Iterator[Item]:
        """This process's items, as they come: every `count`-th from its index on, so every process gets a share
        within one item of the others' and neighbouring items (tiles of one scene row) are spread out."""
        return itertools.islice(items, self.index, None, self.count)


def current_share(device: str = "cpu") -> ProcessShare:
    """The share of this process: from the launcher (accelerate launch, torchrun) when it started several,
    otherwise the whole run. Under a launcher this joins its process group: NCCL for CUDA devices, else gloo.

    Args:
        device (`str`): the torch device the run captions on (`--device`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        report_process_mismatch(1)
        return ProcessShare()
    from accelerate import PartialState

    # Without cpu=True accelerate leaves processes launched on a machine without GPUs unconnected, each on its own.
    state = PartialState(cpu=not device.startswith("cuda"))
    return ProcessShare(state.process_index, state.num_processes, state.local_process_index)


def wait_for_everyone(share: ProcessShare) -> None:
    """A barrier across the run's processes; nothing to wait for in a one-process run."""
    if share.count > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def process_device(device: str, share: ProcessShare) -> str:
    """The torch device of this process: `--device cuda` means each process's own GPU on its node; an explicit
    `cuda:K` (or the CPU) is taken as given."""
    if device == "cuda" and share.count > 1:
        return f"cuda:{share.local_index}"
    return device


def part_path(out: Path, share: ProcessShare) -> Path:
    """The file this process appends its results to."""
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    return partial if share.count == 1 else partial.with_name(f"{partial.name}.{share.index}")


def existing_parts(out: Path) -> list[Path]:
    """Every part file an earlier or the current run left for `out`: `OUT.partial` and `OUT.partial.RANK`."""
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    ranked = re.compile(re.escape(partial.name) + r"\.(\d+)")
    numbered = sorted(
        (int(match.group(1)), path)
        for path in out.parent.iterdir() if (match := ranked.fullmatch(path.name))
    ) if out.parent.is_dir() else []
    return ([partial] if partial.is_file() else []) + [path for _, path in numbered]


def repair_part(path: Path) -> None:
    """Cut off the last line of a part file when its process was stopped while writing it (no newline yet)."""
    with open(path, "rb") as file:
        complete = sum(len(raw) for raw in file if raw.endswith(b"\n"))
    if complete != path.stat().st_size:
        with open(path, "r+b") as file:
            file.truncate(complete)


def read_part(path: Path) -> Iterator[tuple[int, dict]]:
    """The results in a part file, `(line number, object)`, after [`repair_part`].

    Raises:
        RsccInputError: a line that is not a JSON object (not a file rscc wrote).
    """
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                raise RsccInputError(f"{path}, line {number} is not a result object ({raw[:80]!r}); it is not a part "
                                     "file of this output: move it away, or start again (--overwrite)")
            yield number, line


class PartsProgress:
    """Counts the lines the other processes have appended to their part files since the last look, for the main
    process's progress bar over the whole run.

    Args:
        out (`Path`): the run's output.
        share (`ProcessShare`): this process's share; a process other than the main one counts nothing.
    """

    def __init__(self, out: Path, share: ProcessShare):
        others = range(1, share.count) if share.is_main else ()
        paths = [part_path(out, ProcessShare(index, share.count)) for index in others]
        self._offsets = {path: path.stat().st_size if path.is_file() else 0 for path in paths}

    def new_lines(self) -> int:
        """Complete lines appended to the other processes' parts since the last call."""
        count = 0
        for path, offset in self._offsets.items():
            if not path.is_file():
                continue
            with open(path, "rb") as file:
                file.seek(offset)
                appended = file.read()
            complete = appended.rfind(b"\n") + 1  # a line being written counts once it ends
            count += appended[:complete].count(b"\n")
            self._offsets[path] = offset + complete
        return count


@contextlib.contextmanager
def appending_to_part(
    own: Path, share: ProcessShare, others: PartsProgress, progress: bool, total: int, done: int, unit: str
) -> Iterator[tuple[TextIO, tqdm]]:
    """This process's part file, open for appending, and the run's one progress bar (the main process's, over every
    process's items). Once the block is done every process is waited for and the others' last lines are counted; a
    part a failed block left empty is removed (nothing finished: nothing to resume from).

    Args:
        own (`Path`): this process's part file ([`part_path`]).
        share ([`ProcessShare`]), others ([`PartsProgress`]): this process's share and the other processes' parts.
        progress (`bool`): show the bar (on the main process only).
        total (`int`), done (`int`), unit (`str`): the run's items, those finished before, and what they are.
    """
    try:
        with open(own, "a", encoding="utf-8") as sink, tqdm(
            total=total, initial=done, unit=unit, file=sys.stderr, disable=not (progress and share.is_main)
        ) as progress_bar:
            yield sink, progress_bar
            wait_for_everyone(share)
            progress_bar.update(others.new_lines())
    except BaseException:
        if own.is_file() and own.stat().st_size == 0:
            own.unlink()
        raise


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """`items` in lists of `size` (the last one shorter), as they come."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


class PartFiles:
    """The part files of one output: the resumable protocol of every command that captions into a file.

    Every process of the run calls, in order (each waits for the others where it must):
    1. [`repair`]: the main process cuts the line a stopped process left unfinished off every part.
    2. [`finished`]: every process reads the keys of the results in the parts.
    3. [`append`] (or [`write`]): the process captions its share of the pending items into its own part, batch by
       batch.
    4. The main process reads [`merged`] (every part's lines in output order) into the output, then [`remove`]s
       the parts once the output is in place.

    Args:
        out (`Path`): the output the parts make up.
        share ([`ProcessShare`]): this process's share of the run.
    """

    def __init__(self, out: Path, share: ProcessShare):
        self.out, self.share = out, share
        self.own = part_path(out, share)

    def existing(self) -> list[Path]:
        """Every part file of the output, the own one included once it exists ([`existing_parts`])."""
        return existing_parts(self.out)

    def repair(self) -> None:
        """On the main process, cut off every part's last line when its process was stopped while writing it."""
        if self.share.is_main:
            for part in self.existing():
                repair_part(part)

    def finished(self, key_of: Callable[[Path, int, dict], Hashable]) -> set:
        """The keys of the results already in a part file, once every process is here (the parts repaired).

        Args:
            key_of (`Callable`): `(part, line number, result) -> key`; it raises [`RsccInputError`] for a result this
                run must not resume from (other inputs, model or options).
        """
        wait_for_everyone(self.share)
        return {key_of(part, number, line) for part in self.existing() for number, line in read_part(part)}

    def append(self, pending: Iterable, batch_size: int, lines_of: Callable[[list], str], progress: bool,
               total: int, done: int, unit: str) -> None:
        """Caption this process's share of `pending` into its own part, flushing after every batch.

        Args:
            pending (`Iterable`): the run's items not finished yet, in output order (every process the same).
            batch_size (`int`): items per `lines_of` call.
            lines_of (`Callable`): `batch -> text`, one JSON line per item.
            progress (`bool`), total (`int`), done (`int`), unit (`str`): the progress bar (see [`write`]).
        """
        batches = batched(self.share.take(pending), batch_size)
        self.write(((len(batch), lines_of(batch)) for batch in batches), progress, total, done, unit)

    def write(self, chunks: Iterable[tuple[int, str]], progress: bool, total: int, done: int, unit: str) -> None:
        """Append `chunks` to this process's own part as they come, flushing after each: the results of a batch
        captioned here, or of one an engine's workers captioned (see `rscc.ray_scene`).

        Args:
            chunks (`Iterable[tuple[int, str]]`): `(items, text)`, one JSON line per item in `text`.
            progress (`bool`), total (`int`), done (`int`), unit (`str`): the progress bar (see
                [`appending_to_part`]).
        """
        others = PartsProgress(self.out, self.share)  # where the others' parts end before any process appends
        wait_for_everyone(self.share)  # every process has read the parts before any appends to its own
        with appending_to_part(self.own, self.share, others, progress, total, done, unit) as (sink, progress_bar):
            for count, text in chunks:
                sink.write(text)
                sink.flush()
                progress_bar.update(count + others.new_lines())

    def merged(self, keys: Iterable[Hashable], key_of: Callable[[dict], Hashable]) -> Iterator[bytes]:
        """Every key's line, in the order of `keys` (the first part's where two have it). Only where each line
        starts is kept in memory, not the lines: a scene has millions of tiles.

        Raises:
            RsccInputError: a key no part holds (a process that did not finish its share).
        """
        keys = list(keys)
        with contextlib.ExitStack() as stack:
            where = {}
            for part in self.existing():
                file, offset = stack.enter_context(open(part, "rb")), 0
                for raw in file:
                    where.setdefault(key_of(json.loads(raw)), (file, offset))
                    offset += len(raw)
            missing = [str(key) for key in keys if key not in where]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise RsccInputError(f"the part files of {self.out} lack {len(missing)} result(s) at the merge "
                                     f"({shown}); rerun the same command to finish them")
            for key in keys:
                file, offset = where[key]
                file.seek(offset)
                yield file.readline()

    def remove(self) -> None:
        """Remove every part (once the output is in place)."""
        for part in self.existing():
            part.unlink()


__all__ = [
    "PartFiles",
    "appending_to_part",
    "batched",
    "PARTIAL_SUFFIX",
    "PartsProgress",
    "ProcessShare",
    "current_share",
    "existing_parts",
    "part_path",
    "process_device",
    "read_part",
    "repair_part",
    "wait_for_everyone",
]
