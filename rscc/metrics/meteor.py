"""METEOR 1.5 and Java: the one METEOR process of a Python process, and the Java check of the JVM-based scorers.

Loading METEOR's paraphrase table takes 12-15 s on two cores, scoring the LEVIR-CC test split about 3 s. The `rscc`
console script therefore calls `prestart_meteor` before anything else of `rscc eval`, so the table loads while
Python reads the files and computes the other metrics; the first scorer that needs METEOR takes that process over.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence

from pycocoevalcap.meteor.meteor import Meteor

JAVA_FIX = (
    "install a Java runtime and put `java` on PATH (Debian/Ubuntu: `apt-get install default-jre-headless`; "
    "conda: `conda install -c conda-forge openjdk`)"
)

# pycocoevalcap's METEOR 1.5 command (`Meteor.meteor_cmd`), plus JVM memory and GC options that only change how fast
# the JVM starts (an initial heap of the full 2 GB and the parallel collector: about 3 s less on two cores).
METEOR_COMMAND = (
    "java", "-Xms2G", "-XX:+UseParallelGC", "-jar", "-Xmx2G", "meteor-1.5.jar",
    "-", "-", "-stdio", "-l", "en", "-norm",
)


class JavaNotFoundError(RuntimeError):
    """Raised when a scorer that runs on the JVM (METEOR, PTBTokenizer) is needed and `java` is not on PATH."""


def require_java(what: str) -> None:
    """Raise `JavaNotFoundError`, saying how to install Java, when `java` is not on PATH."""
    if shutil.which("java") is None:
        raise JavaNotFoundError(f"{what} runs on Java, and `java` is not on PATH: {JAVA_FIX}.")


@functools.lru_cache(maxsize=1)
def java_version() -> str | None:
    """The version `java -version` reports, or None without Java."""
    if shutil.which("java") is None:
        return None
    completed = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "([^"]+)"', completed.stderr)
    return match.group(1) if match else (completed.stderr.strip().splitlines() or [None])[0]


def start_meteor_process() -> subprocess.Popen:
    """Start pycocoevalcap's METEOR 1.5 jar in its `-stdio` mode (SCORE and EVAL lines on stdin)."""
    import pycocoevalcap.meteor.meteor as meteor_module

    return subprocess.Popen(
        METEOR_COMMAND,
        cwd=os.path.dirname(os.path.abspath(meteor_module.__file__)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


_prestarted_meteor: subprocess.Popen | None = None


def prestart_meteor() -> None:
    """Start METEOR now, for the first scorer that needs it (the `rscc` console script does, for `rscc eval`)."""
    global _prestarted_meteor
    _prestarted_meteor = start_meteor_process()


def take_prestarted_meteor() -> subprocess.Popen | None:
    """The METEOR process `prestart_meteor` started, if it did and it still runs; each is handed out once."""
    global _prestarted_meteor
    process, _prestarted_meteor = _prestarted_meteor, None
    return process if process is not None and process.poll() is None else None


@atexit.register
def _stop_untaken_meteor() -> None:
    # A command that failed before scoring leaves the JVM loading; it would only exit after loading.
    if _prestarted_meteor is not None and _prestarted_meteor.poll() is None:
        _prestarted_meteor.kill()
        _prestarted_meteor.wait()


def _meteor_score_line(references: Sequence[str], hypothesis: str) -> str:
    # Exactly the line pycocoevalcap's `Meteor._stat` sends.
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


class _StreamingMeteor(Meteor):
    """pycocoevalcap's METEOR 1.5 wrapper (same jar, arguments and SCORE/EVAL protocol), with two changes of speed.

    The SCORE lines are streamed by a writer thread instead of one blocking round trip per pair, and the
    per-pair statistics are kept, so that several subsets are scored by one EVAL line each without
    recomputing alignments. The corpus score of a subset is METEOR's aggregate over its pairs' statistics,
    which is what `Meteor.compute_score` returns when called on that subset alone.

    Args:
        process: A METEOR process from `start_meteor_process` (one the `rscc` console script started
            early, say); a new one by default.
    """

    def __init__(self, process: subprocess.Popen | None = None):  # pycocoevalcap's __init__ would start another
        self.meteor_p = process if process is not None else start_meteor_process()
        self.lock = threading.Lock()

    def _read_line(self) -> str:
        line = self.meteor_p.stdout.readline()
        if not line:
            error = self.meteor_p.stderr.read().decode(errors="replace") if self.meteor_p.poll() is not None else ""
            raise RuntimeError(f"the METEOR process stopped unexpectedly: {error.strip()[-2000:]}")
        return line.decode().strip()

    def segment_statistics(self, pairs: Sequence[tuple[Sequence[str], str]]) -> list[str]:
        """METEOR's sufficient statistics for each (references, hypothesis) pair."""
        lines = [_meteor_score_line(references, hypothesis) for references, hypothesis in pairs]
        writer_errors: list[BaseException] = []

        def write_lines() -> None:
            try:
                self.meteor_p.stdin.write("".join(line + "\n" for line in lines).encode())
                self.meteor_p.stdin.flush()
            except OSError as error:  # the process died; the reader reports why
                writer_errors.append(error)

        with self.lock:
            writer = threading.Thread(target=write_lines, daemon=True)
            writer.start()
            statistics = [self._read_line() for _ in lines]
            writer.join()
        if writer_errors:
            raise writer_errors[0]
        return statistics

    def corpus_score(self, statistics: Sequence[str]) -> float:
        """METEOR's corpus-level score from per-pair statistics (the value `Meteor.compute_score` returns)."""
        with self.lock:
            self.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(statistics) + "\n").encode())
            self.meteor_p.stdin.flush()
            for _ in statistics:  # METEOR answers with one score per pair, then the aggregate
                self._read_line()
            return float(self._read_line())


_meteor_lock = threading.Lock()
_meteor_process: _StreamingMeteor | None = None


def shared_meteor() -> _StreamingMeteor:
    """The METEOR process of this Python process (one JVM for its whole life): the prestarted one, else a new one."""
    global _meteor_process
    require_java("METEOR")
    with _meteor_lock:
        if _meteor_process is None or _meteor_process.meteor_p.poll() is not None:
            _meteor_process = _StreamingMeteor(take_prestarted_meteor())
        return _meteor_process


@atexit.register
def _close_meteor() -> None:
    # METEOR exits at the end of its input; waiting for it here leaves no JVM behind the Python process.
    if _meteor_process is not None and _meteor_process.meteor_p.poll() is None:
        _meteor_process.meteor_p.stdin.close()
        try:
            _meteor_process.meteor_p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _meteor_process.meteor_p.kill()
            _meteor_process.meteor_p.wait()
