"""Data-parallel captioning: `accelerate launch -m rscc caption|scene` shares the work out across processes.

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
from typing import Iterable, Iterator, TextIO, TypeVar

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


__all__ = [
    "appending_to_part",
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
