"""Benchmark: score the full LEVIR-CC test split (1,929 pairs x 5 references) with `rscc eval`, METEOR included.

The target is under 30 s on 2 CPU cores for one `rscc eval` command, from a cold start: 12-15 s of it is METEOR's
JVM loading its 62 MB paraphrase table, while Python imports the package and runs the other scorers on the other
core. Without a
predictions file, each pair's first reference in CCExpert's target format ("A road is built.") stands in for a
model's output: the same length and vocabulary as real predictions.

    PYTHONPATH=. python benchmarks/bench_eval.py [--predictions P.jsonl] [--max-seconds 30]

Each run is a fresh `rscc eval` process (`python -m rscc_console eval`: the console script, which starts
METEOR's JVM before importing the package). Prints one JSON line: wall seconds per run, the CPU
seconds of the command and its JVM (user + system; on a machine shared with other jobs the wall time grows, the
CPU time does not), the load average, and the scores. Exits 1 when the fastest run is above --max-seconds.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rscc.metrics import load_references
from rscc.processing_rscc import to_sentence_case

DEFAULT_REFERENCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "levir_cc" / "LevirCCcaptions.json"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_eval(predictions: Path, references: Path, output: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one `rscc eval` process (its METEOR JVM included)."""
    command = [sys.executable, "-m", "rscc_console", "eval", "--predictions", str(predictions), "--references",
               str(references), "--split", "test", "--require-meteor", "--output", str(output)]
    cpu_before, start = children_cpu_seconds(), time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu_before
    if completed.returncode != 0:
        sys.exit(f"rscc eval failed ({completed.returncode}):\n{completed.stderr}")
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, default=DEFAULT_REFERENCES)
    parser.add_argument("--predictions", type=Path, help="JSON lines to score instead of the stand-in predictions")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        predictions = args.predictions
        if predictions is None:
            references = load_references(args.references, "test")
            predictions = Path(folder) / "predictions.jsonl"
            rows = [{"id": i, "caption": to_sentence_case(refs[0])} for i, refs in references.items()]
            predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
        output = Path(folder) / "report.json"
        load_before = os.getloadavg()[0]
        timings = [timed_eval(predictions, args.references, output) for _ in range(args.runs)]
        report = json.loads(output.read_text())

    fastest = min(wall for wall, _ in timings)
    result = {
        "pairs": report["counts"]["pairs"],
        "references": report["counts"]["references"],
        "wall_seconds": [round(wall, 2) for wall, _ in timings],
        "cpu_seconds": [round(cpu, 2) for _, cpu in timings],
        "max_seconds": args.max_seconds,
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "metrics": {name: round(value, 2) for name, value in report["metrics"]["all"].items()},
    }
    print(json.dumps(result))
    return 0 if fastest <= args.max_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
