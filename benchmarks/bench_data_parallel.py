"""Data-parallel `rscc caption` throughput: 1 process against N under `accelerate launch`, with a tiny model on CPU.

    python benchmarks/bench_data_parallel.py [--pairs 64] [--processes 1 2] [--model DIR] [--json out.json]

The real LEVIR-CC pairs of the shared data are repeated under new names up to `--pairs`. Each process count runs the
same `rscc caption A/ B/ --out ...` command (under `accelerate launch [--multi_gpu] --num_processes N`, one torch
thread per process, gloo on CPU) in a fresh output folder, and reports two rates: pairs/s of captioning (the main
process's progress bar over every process's pairs: model loading and start-up left out) and pairs/s end to end (the
command's wall time). The outputs of every count are checked to be identical. Without `--model`, a tiny random
checkpoint is made (`rscc tiny-checkpoint`), which measures rscc's own overhead rather than a model's compute.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PAIRS = SHARED_DATA / "levir_cc" / "images" / "train"


def build_pairs(count: int, folder: Path) -> tuple[Path, Path]:
    """`count` pairs in A/ and B/, the real LEVIR-CC pairs repeated under new names."""
    names = sorted(path.name for path in (PAIRS / "A").iterdir())
    for side in ("A", "B"):
        (folder / side).mkdir(parents=True)
        for index in range(count):
            name = names[index % len(names)]
            shutil.copyfile(PAIRS / side / name, folder / side / f"{index:06d}_{name}")
    return folder / "A", folder / "B"


def add_run_arguments(parser: argparse.ArgumentParser, pairs: int) -> None:
    """--pairs, --model, --batch-size, --max-new-tokens, --json: the options every captioning throughput benchmark
    takes (`pairs`: the default of --pairs)."""
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--model", help="checkpoint folder (default: a tiny random one)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--json", help="also write the results here")


def model_or_tiny(model: str | None, scratch: Path) -> str:
    """`model`, or a tiny random checkpoint made in `scratch` (`rscc tiny-checkpoint`)."""
    if model is not None:
        return model
    tiny = str(scratch / "tiny")
    subprocess.run([sys.executable, "-m", "rscc", "tiny-checkpoint", tiny], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return tiny


def caption_arguments(before: Path, after: Path, model: str, out: Path, args) -> list[str]:
    """`rscc caption BEFORE AFTER` into `out` with the benchmark's options."""
    return ["caption", str(before), str(after), "--model", model, "--out", str(out), "--batch-size",
            str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]


def run(processes: int, arguments: list[str], unit: str = "sample") -> tuple[float, float, str]:
    """(captioning items/s, end-to-end wall seconds, stderr) of one command (`unit`: what its progress bar counts)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    # accelerate's --multi_gpu is its torchrun launcher, which starts CPU processes too (and wants 2 or more).
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", *(["--multi_gpu"] if processes > 1 else []),
                "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", "-m", "rscc"]
    started = time.perf_counter()
    result = subprocess.run([*launcher, *arguments, "--progress"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{result.stderr[-4000:]}")
    rates = re.findall(rf"([\d.]+){unit}/s", result.stderr)
    return float(rates[-1]), wall, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    add_run_arguments(parser, pairs=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rscc-bench-dp-") as scratch:
        scratch = Path(scratch)
        model = model_or_tiny(args.model, scratch)
        before, after = build_pairs(args.pairs, scratch / "pairs")
        results, outputs = [], {}
        for processes in args.processes:
            out = scratch / f"run-{processes}" / "captions.jsonl"
            rate, wall, _ = run(processes, caption_arguments(before, after, model, out, args))
            outputs[processes] = out.read_bytes()
            results.append({"processes": processes, "pairs": args.pairs, "captioning_pairs_per_s": rate,
                            "end_to_end_pairs_per_s": round(args.pairs / wall, 2), "wall_s": round(wall, 1)})
            print(json.dumps(results[-1]), flush=True)
        if len(set(outputs.values())) != 1:
            raise SystemExit("the outputs of different process counts differ")
    report = {"cpus": os.cpu_count(), "model": "tiny random" if args.model is None else args.model,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
