"""Building a 20,000-pair CC-Foundation mixture with `rscc data mix --config`, and reading it back as a stream.

The sources are the real data this project has: the 3 real LEVIR-CC pairs with their human captions (`rscc data
levir-cc`) and the 11 real LEVIR-CD pairs captioned from their masks (`rscc data from-masks`; the pair without a
mask is skipped), built as the recipe's `levir_cc` and `sysu_cd` (a stand-in: both are upsampled 3x by the recipe).
A copy of mixtures/cc_foundation.yaml with their factors raised makes the mixture exactly --pairs pairs
(3 * a + 11 * b); its other sources are missing and listed. Reported: build pairs/s, the process's peak resident
memory (`ru_maxrss`, which bounds the build's, since nothing else runs) and the size written; then pairs/s reading
the mixture with `datasets` streaming, images decoded.

Usage: python benchmarks/bench_mixture.py [--data ../shared/data] [--pairs 20000] [--max-shard-size 64]
"""

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from rscc.cli import main as rscc_main
from rscc.data import load_change_dataset

LEVIR_CC_PAIRS = ("train_000016.png", "train_000051.png", "train_000054.png")
RECIPE = Path(__file__).resolve().parents[1] / "mixtures" / "cc_foundation.yaml"


def build_levir_cc(data: Path, temp: Path) -> Path:
    """SOURCES/levir_cc: the 3 real LEVIR-CC pairs and their captions, built with `rscc data levir-cc`; returns
    SOURCES."""
    root = temp / "levir_cc_raw"
    for side in ("A", "B"):
        (root / "images" / "train" / side).mkdir(parents=True)
        for name in LEVIR_CC_PAIRS:
            shutil.copy(data / "levir_cc" / "images" / "train" / side / name, root / "images" / "train" / side)
    entries = [entry for entry in json.loads((data / "levir_cc" / "LevirCCcaptions.json").read_text())["images"]
               if entry["filename"] in LEVIR_CC_PAIRS]
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": entries}))
    sources = temp / "sources"
    assert rscc_main(["data", "levir-cc", "--root", str(root), "--out", str(sources / "levir_cc")]) == 0
    return sources


def build_sources(data: Path, temp: Path) -> Path:
    """SOURCES/levir_cc (3 pairs) and SOURCES/sysu_cd (the 11 LEVIR-CD pairs captioned from their masks)."""
    sources = build_levir_cc(data, temp)
    assert rscc_main(["data", "from-masks", "--root", str(data / "levir_cd_samples"), "--skip-invalid",
                      "--source-name", "sysu_cd", "--out", str(sources / "sysu_cd")]) == 0
    return sources


def scaled_recipe(temp: Path, pairs: int) -> Path:
    """The CC-Foundation recipe with the levir_cc and sysu_cd factors set so the mixture has `pairs` pairs."""
    recipe = yaml.safe_load(RECIPE.read_text())
    sysu_factor = next(b for b in range(pairs // 11, -1, -1) if (pairs - 11 * b) % 3 == 0)
    factors = {"levir_cc": (pairs - 11 * sysu_factor) // 3, "sysu_cd": sysu_factor}
    for source in recipe["sources"]:
        source["factor"] = factors.get(source["name"], source["factor"])
    path = temp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--max-shard-size", type=int, default=64, help="MB per Parquet shard")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        sources = build_sources(args.data, temp)
        recipe = scaled_recipe(temp, args.pairs)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        out = temp / "cc_foundation"
        assert rscc_main(["data", "mix", "--config", str(recipe), "--sources-root", str(sources), "--out", str(out),
                          "--max-shard-size", str(args.max_shard_size)]) == 0
        build_seconds = time.perf_counter() - start
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        shards = sorted((out / "data").glob("*.parquet"))
        written = sum(path.stat().st_size for path in shards)

        start = time.perf_counter()
        streamed = 0
        for example in load_change_dataset(str(out), split="train", streaming=True):
            example["before"].load()
            example["after"].load()
            streamed += 1
        stream_seconds = time.perf_counter() - start
    print(json.dumps({
        "pairs": args.pairs,
        "build_seconds": round(build_seconds, 1),
        "build_pairs_per_second": round(args.pairs / build_seconds),
        "peak_rss_mb": round(peak_rss),
        "rss_before_build_mb": round(rss_before),
        "shards": len(shards),
        "written_mb": round(written / 1e6, 1),
        "streamed_pairs": streamed,
        "stream_pairs_per_second": round(streamed / stream_seconds),
    }, indent=2))


if __name__ == "__main__":
    main()
