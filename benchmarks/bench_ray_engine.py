"""`rscc caption --engine ray` against the accelerate engine, with a tiny model on CPU, and Ray Data's scheduling
overhead per batch.

    python benchmarks/bench_ray_engine.py [--pairs 48] [--workers 1 2] [--scene-size 384] [--model DIR] [--json F]

The real LEVIR-CC pairs are repeated up to `--pairs` (as in bench_data_parallel.py). Rows:
- accelerate, 1 and N processes (`accelerate launch`, bench_data_parallel.py's runner): captioning pairs/s (the
  progress bar) and end-to-end pairs/s (the command's wall time);
- ray, 1 and N workers (`rscc caption --engine ray --num-workers N`, a local Ray instance the command starts): end to
  end pairs/s, which include starting Ray and loading one model per worker.
The scene rows do the same for `rscc scene` over a `--scene-size` crop of a real xView2 chip pair tiled at 64 px:
captioning tiles/s (accelerate) and end-to-end tiles/s. Every output must be byte for byte the accelerate engine's. The overhead row runs Ray Data pipelines of one no-op
actor (the stages and settings of `rscc.ray` with one CPU worker: from_items -> CPU map_batches -> actor map_batches
-> write_json) over 1 and `--pairs`
batches of one row (medians of 3, after a warm-up run); the difference of their wall times over the extra batches is
the cost Ray adds per batch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_parallel import (  # noqa: E402
    REPO_ROOT,
    SHARED_DATA,
    add_run_arguments,
    build_pairs,
    caption_arguments,
    model_or_tiny,
    run,
)


SCENE_TILE_SIZE = 64


def build_scene(size: int, folder: Path) -> list[str]:
    """A `size` x `size` crop of the xView2 pre and post chips (the post date is resampled onto the pre grid)."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True)
    rasters = []
    for date in ("pre", "post"):
        with rasterio.open(SHARED_DATA / "geotiff_xview2" / date / f"0_{date}.tif") as chip:
            crop = Window(0, 0, size, size)
            profile = chip.profile | {"width": size, "height": size, "transform": chip.window_transform(crop)}
            with rasterio.open(folder / f"{date}.tif", "w", **profile) as raster:
                raster.write(chip.read(window=crop))
        rasters.append(str(folder / f"{date}.tif"))
    return rasters


def scene_rows(rasters: list[str], model: str, scratch: Path, args) -> list[dict]:
    """Tiles/s of `rscc scene` on each engine and worker count; the outputs must be identical."""
    rows, outputs = [], {}
    for engine in ("accelerate", "ray"):
        for count in args.workers:
            out = scratch / f"scene-{engine}-{count}" / "changes.geojson"
            out.parent.mkdir()
            arguments = ["scene", *rasters, "--model", model, "--out", str(out), "--tile-size", str(SCENE_TILE_SIZE),
                         "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
            row = {"command": "scene", "engine": engine, "workers": count}
            if engine == "accelerate":
                rate, wall, _ = run(count, arguments, unit="tile")
                row["captioning_tiles_per_s"] = rate
            else:
                wall = run_ray(count, arguments)
            tiles = json.loads(out.read_text())["rscc"]["tiles"]
            row.update(tiles=tiles, end_to_end_tiles_per_s=round(tiles / wall, 2), wall_s=round(wall, 1))
            outputs[(engine, count)] = out.read_bytes()
            rows.append(row)
            print(json.dumps(row), flush=True)
    if len(set(outputs.values())) != 1:
        raise SystemExit("the scene outputs of the engines differ")
    return rows


def run_ray(workers: int, arguments: list[str]) -> float:
    """End-to-end wall seconds of `rscc caption|scene ... --engine ray --num-workers N`."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rscc", *arguments, "--engine", "ray", "--num-workers",
                             str(workers)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ray, {workers} worker(s) failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


class _Identity:
    def __call__(self, batch):
        return batch


def _pass_through(batch):
    return batch


def scheduling_overhead(batches: int, scratch: Path, repeats: int = 3) -> dict:
    """Seconds Ray Data adds per batch: no-op pipelines over 1 and `batches` one-row batches, after a warm-up run
    (which starts Ray's worker processes), `repeats` times each; medians."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    walls = {1: [], batches: []}
    try:
        for run_number, count in enumerate([1] + [1, batches] * repeats):
            dataset = ray.data.from_items([{"id": str(index)} for index in range(count)], override_num_blocks=count)
            started = time.perf_counter()
            (dataset.map_batches(_pass_through, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1))
             .map_batches(_Identity, compute=ray.data.ActorPoolStrategy(size=1), batch_size=1, num_cpus=1)
             .write_json(str(scratch / f"noop-{run_number}"), ray_remote_args={"num_cpus": 0}, concurrency=1))
            if run_number > 0:
                walls[count].append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    one, many = statistics.median(walls[1]), statistics.median(walls[batches])
    return {"batches": batches, "repeats": repeats, "median_wall_1_batch_s": round(one, 2),
            f"median_wall_{batches}_batches_s": round(many, 2),
            "overhead_per_batch_ms": round(1000 * (many - one) / (batches - 1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scene-size", type=int, default=384, help="side of the scene crop in pixels (0: no scene)")
    add_run_arguments(parser, pairs=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rscc-bench-ray-") as scratch:
        scratch = Path(scratch)
        model = model_or_tiny(args.model, scratch)
        before, after = build_pairs(args.pairs, scratch / "pairs")
        results, outputs = [], {}
        for engine in ("accelerate", "ray"):
            for count in args.workers:
                out = scratch / f"{engine}-{count}" / "captions.jsonl"
                arguments = caption_arguments(before, after, model, out, args)
                row = {"engine": engine, "workers": count, "pairs": args.pairs}
                if engine == "accelerate":
                    rate, wall, _ = run(count, arguments)
                    row["captioning_pairs_per_s"] = rate
                else:
                    out.parent.mkdir()
                    wall = run_ray(count, arguments)
                row.update(end_to_end_pairs_per_s=round(args.pairs / wall, 2), wall_s=round(wall, 1))
                outputs[(engine, count)] = out.read_bytes()
                results.append(row)
                print(json.dumps(row), flush=True)
        if len(set(outputs.values())) != 1:
            raise SystemExit("the outputs of the engines differ")
        if args.scene_size:
            results += scene_rows(build_scene(args.scene_size, scratch / "scene"), model, scratch, args)
        overhead = scheduling_overhead(args.pairs, scratch)
        print(json.dumps({"scheduling": overhead}), flush=True)
    report = {"cpus": os.cpu_count(), "model": "tiny random" if args.model is None else args.model,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "results": results,
              "scheduling": overhead}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
