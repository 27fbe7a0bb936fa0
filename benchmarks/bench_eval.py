"""Benchmark: score the full LEVIR-CC test split (1,929 pairs x 5 references) with `rscc eval`, METEOR included.

The target is under 30 s on 2 CPU cores, from a cold start (the METEOR JVM loads its 62 MB paraphrase table,
about 15 s of it). Without a predictions file, each pair's first reference in CCExpert's target format
("A road is built.") stands in for a model's output: the same length and vocabulary as real predictions.

    PYTHONPATH=. python benchmarks/bench_eval.py [--predictions P.jsonl] [--max-seconds 30]

Prints one JSON line (cold and warm wall times, metrics, machine load) and exits 1 above --max-seconds.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rscc import cli
from rscc.metrics import load_references
from rscc.processing_rscc import to_sentence_case

DEFAULT_REFERENCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "levir_cc" / "LevirCCcaptions.json"


def timed_eval(predictions: Path, references: Path, output: Path) -> float:
    args = ["eval", "--predictions", str(predictions), "--references", str(references), "--split", "test",
            "--require-meteor", "--output", str(output)]
    start = time.perf_counter()
    exit_code = cli.main(args)
    elapsed = time.perf_counter() - start
    if exit_code != 0:
        sys.exit(f"rscc eval failed with exit code {exit_code}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, default=DEFAULT_REFERENCES)
    parser.add_argument("--predictions", type=Path, help="JSON lines to score instead of the stand-in predictions")
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
        cold = timed_eval(predictions, args.references, output)  # includes starting METEOR's JVM
        warm = timed_eval(predictions, args.references, output)  # the JVM is kept by the process
        report = json.loads(output.read_text())

    result = {
        "pairs": report["counts"]["pairs"],
        "references": report["counts"]["references"],
        "cold_seconds": round(cold, 2),
        "warm_seconds": round(warm, 2),
        "max_seconds": args.max_seconds,
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "metrics": {name: round(value, 2) for name, value in report["metrics"]["all"].items()},
    }
    print(json.dumps(result))
    return 0 if cold <= args.max_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
