"""Build throughput and output size of `rscc.data` on a LEVIR-CC-sized set.

The full LEVIR-CC caption file (10,077 pairs, real ids, captions and splits) is joined to images that are links
to the 3 real pairs in the shared data folder, cycled, so every record has real images and the build does the
work it does on the full dataset: read, check and store 20,154 images, write the shards and the card.

Usage: python benchmarks/bench_data.py [--data ../shared/data] [--pairs 10077] [--workers 2] [--repeat 3] [--load]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import datasets

from rscc.data import build_dataset, levir_cc_records, load_change_dataset

REAL_PAIRS = ("train_000016.png", "train_000051.png", "train_000054.png")


def make_levir_cc_root(data: Path, root: Path, num_pairs: int) -> int:
    """A LEVIR-CC folder whose first `num_pairs` caption entries link to the real pairs; returns input bytes."""
    levir = data / "levir_cc"
    captions = json.loads((levir / "LevirCCcaptions.json").read_text())
    captions["images"] = captions["images"][:num_pairs]
    root.mkdir(parents=True)
    (root / "LevirCCcaptions.json").write_text(json.dumps(captions))
    input_bytes = 0
    for position, entry in enumerate(captions["images"]):
        real = REAL_PAIRS[position % len(REAL_PAIRS)]
        for side in ("A", "B"):
            folder = root / "images" / entry["filepath"] / side
            folder.mkdir(parents=True, exist_ok=True)
            target = levir / "images" / "train" / side / real
            os.symlink(target.resolve(), folder / entry["filename"])
            input_bytes += target.stat().st_size
    return input_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=10_077)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="builds to run; the median is reported")
    parser.add_argument("--load", action="store_true", help="also time datasets.load_dataset of the result")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        root, out = Path(temp) / "levir_cc", Path(temp) / "out"
        input_bytes = make_levir_cc_root(args.data, root, args.pairs)
        rates, cpu_seconds = [], []
        for _ in range(args.repeat):
            cpu_start = time.process_time()
            summary = build_dataset(levir_cc_records(root), out, num_workers=args.workers, overwrite=True)
            cpu_seconds.append(time.process_time() - cpu_start)
            print(summary)
            rates.append(summary.num_pairs / summary.seconds)
        # CPU time per pair is what other processes on a shared machine do not change; wall time is what users see.
        print(f"pairs/s: {statistics.median(rates):.0f} (median of {len(rates)}; min {min(rates):.0f}, "
              f"max {max(rates):.0f})   CPU: {1e3 * statistics.median(cpu_seconds) / summary.num_pairs:.2f} ms/pair   "
              f"load average: {os.getloadavg()[0]:.1f}   output: {summary.output_bytes / 1e6:.1f} MB   "
              f"input images: {input_bytes / 1e6:.1f} MB   output/input: {summary.output_bytes / input_bytes:.4f}   "
              f"workers: {args.workers}   cores: {os.cpu_count()}")
        if args.load:
            datasets.disable_progress_bars()
            start = time.perf_counter()
            dataset = load_change_dataset(out, cache_dir=Path(temp) / "cache")
            print(f"load_dataset (Parquet -> Arrow cache): {time.perf_counter() - start:.1f} s, "
                  f"{ {split: len(rows) for split, rows in dataset.items()} }")


if __name__ == "__main__":
    main()
