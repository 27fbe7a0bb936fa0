"""One run at a time per output: `rscc caption`, `rscc scene`, `rscc data` and `rscc eval` hold a lock on their output
while they write it.

The lock is an OS file lock (`filelock`, `flock` on POSIX) on `OUT.lock` next to the output, which names its holder
(process id, host, command line, start time). A second run into the same output is refused at once naming the
holder. The operating system releases the lock of a process that dies, even by `kill -9`, so the `OUT.lock` a killed
run leaves is recognised (its holder no longer holds it) and taken over, saying so. The processes of one
data-parallel run share its lock: the main process takes it before any process writes (every process meets it at
the first barrier), and the others write only under it.
"""

import argparse
import contextlib
import functools
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from .cli import EXIT_BAD_INPUT, EXIT_INVALID_RECORDS, exit_code_of
from .errors import RsccInputError

LOCK_SUFFIX = ".lock"


class OutputLockedError(RsccInputError):
    """Another run is writing the same output."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output file or folder: `OUT.lock` next to it."""
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


def _holder(path: Path) -> dict:
    """Who holds (or held) the lock at `path`, as it wrote itself there; empty when unreadable."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that did not say who it is"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    return [folder for folder in path.parents if not folder.exists()]


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for the lock (deepest first) that are empty: a refused command leaves nothing."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _acquire(path: Path, holder: dict, attempts: int = 3) -> FileLock | None:
    """The lock of `path`, held, with `holder` written into it; None when another process holds it. A lock won on a
    file its holder removed meanwhile (the holder's last moment) is given up and taken again on the new file."""
    inode = []

    def write_holder(descriptor: int) -> None:
        inode.append(os.fstat(descriptor).st_ino)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)

    for _ in range(attempts):
        lock, inode[:] = FileLock(path, timeout=0, on_acquired=write_holder), []
        try:
            lock.acquire()
        except Timeout:
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode[0]:
                return lock
        lock.release()
    return None


@contextlib.contextmanager
def output_lock(out: str | os.PathLike | None, command: str, is_main: bool = True) -> Iterator[None]:
    """Hold the lock of `out` for the block.

    Args:
        out (`str` or `os.PathLike`, *optional*): the output file or folder the command writes; None: nothing to
            lock (output to stdout).
        command (`str`): the command, for messages (`caption`, `data manifest`).
        is_main (`bool`): whether this process takes the lock; the other processes of a data-parallel run write
            under their main process's lock.

    Raises:
        OutputLockedError: another live run holds the lock; the message names it.
    """
    if not is_main or out is None or not str(out).strip():  # no output, or one its own checks refuse
        yield
        return
    path = lock_path(out)
    made = _missing_folders(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    left_behind = _holder(path) if path.is_file() else None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": " ".join(sys.argv)}
    lock = _acquire(path, me)
    if lock is None:
        _remove_empty(made)
        raise OutputLockedError(
            f"{out} is being written by another run ({_describe(_holder(path))}); wait for it to finish, stop it, or "
            f"choose another output. A run that was killed leaves {path}, which the next run takes over"
        )
    try:
        if left_behind is not None:
            print(f"rscc {command}: {path} was left by a run that stopped without releasing it "
                  f"({_describe(left_behind)}); taking it over", file=sys.stderr)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held, so no other run locks the file being removed
        lock.release()


def locking_output(run: Callable[[argparse.Namespace], int], option: str = "out"
                   ) -> Callable[[argparse.Namespace], int]:
    """A command's `run(args)` that holds the lock of the output its `option` names (`--out`, `--output`) while it
    runs; a held lock is the command's bad-input error (`OutputLockedError`, exit 2, one line naming the holder).

    Under a launcher (accelerate launch, torchrun) only the main process (`RANK` 0) takes the lock; the others write
    under it after the command's first barrier.
    """

    @functools.wraps(run)
    def locked(args: argparse.Namespace) -> int:
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
        out = getattr(args, option)
        made = _missing_folders(lock_path(out)) if out is not None and str(out).strip() else []
        try:
            with output_lock(out, command, is_main=int(os.environ.get("RANK", "0")) == 0):
                return run(args)
        except Exception as error:
            if exit_code_of(error) in (EXIT_INVALID_RECORDS, EXIT_BAD_INPUT):
                _remove_empty(made)  # refused input: no folder made for the lock is left behind
            raise

    return locked


__all__ = ["LOCK_SUFFIX", "OutputLockedError", "lock_path", "locking_output", "output_lock"]
