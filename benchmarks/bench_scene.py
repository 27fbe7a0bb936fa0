"""`rscc scene` throughput and peak memory on large mosaics built from the real xView2 chips, with a tiny model.

    python benchmarks/bench_scene.py [--sizes 2048 8192] [--tile-size 256] [--threads 1] [--json out.json]

For each size S, a tiled GeoTIFF mosaic of S x S pixels is built in a temporary folder from the three real pre
chips (and one from the post chips, shifted by the real pre/post offset of about half a metre, so AFTER is
resampled onto BEFORE's grid as in the tests). Each size then runs in a fresh process: load a tiny random rscc
checkpoint, run `describe_scene` over the whole mosaic, and report tiles/s and the process's peak resident memory
(ru_maxrss). If memory is bounded, the peak is the same for every size.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.windows import Window

CHIPS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "geotiff_xview2"
CHIP_SIZE = 1024


def build_mosaic(chip_paths: list[Path], size: int, destination: Path, shift: tuple[float, float] = (0.0, 0.0)) -> Path:
    """Write a size x size tiled GeoTIFF repeating the chips row by row, on the first chip's grid (origin shifted by
    `shift` metres), one chip window at a time.

    Args:
        chip_paths (`list[Path]`): the chips to cycle through.
        size (`int`): mosaic side in pixels, a multiple of the chip size.
        destination (`Path`): the GeoTIFF to write.
        shift (`tuple[float, float]`): (x, y) added to the origin, in the CRS's units.
    """
    chips = []
    for path in chip_paths:
        with rasterio.open(path) as chip:
            chips.append(chip.read())
            profile, transform = chip.profile, chip.transform
    profile.update(width=size, height=size, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   transform=Affine.translation(*shift) @ transform)
    per_side = size // CHIP_SIZE
    with rasterio.open(destination, "w", **profile) as mosaic:
        for row in range(per_side):
            for col in range(per_side):
                window = Window(col * CHIP_SIZE, row * CHIP_SIZE, CHIP_SIZE, CHIP_SIZE)
                mosaic.write(chips[(row * per_side + col) % len(chips)], window=window)
    return destination


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports kilobytes


def run_one(args) -> None:
    """The measurement itself, in its own process so that ru_maxrss belongs to one scene size."""
    import torch

    from rscc.tiny_checkpoints import make_tiny_checkpoint
    from rscc.loading import load_captioner
    from rscc.scene import SceneOptions, describe_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model, processor = load_captioner(str(make_tiny_checkpoint(Path(scratch) / "tiny")))
        rss_before_scene = peak_rss_mb()
        start = time.perf_counter()
        summary = describe_scene(
            model, processor, [args.before, args.after], Path(scratch) / "changes.geojson",
            SceneOptions(tile_size=args.tile_size, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens),
        )
        seconds = time.perf_counter() - start
        geojson_mb = (Path(scratch) / "changes.geojson").stat().st_size / 2**20
    print(json.dumps({
        "tiles": summary.tiles,
        "captioned_tiles": summary.captioned,
        "alignment": summary.alignment,
        "seconds": round(seconds, 1),
        "tiles_per_second": round(summary.captioned / seconds, 2),
        "peak_rss_mb_after_model_load": round(rss_before_scene, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "geojson_mb": round(geojson_mb, 2),
        "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="mosaic sides in pixels")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--run-one", nargs=2, metavar=("BEFORE", "AFTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        args.before, args.after = args.run_one
        run_one(args)
        return

    pre_chips = sorted((CHIPS / "pre").glob("*_pre.tif"))
    post_chips = sorted((CHIPS / "post").glob("*_post.tif"))
    with rasterio.open(pre_chips[0]) as pre, rasterio.open(post_chips[0]) as post:
        shift = (post.transform.c - pre.transform.c, post.transform.f - pre.transform.f)
    figures = {"tile_size": args.tile_size, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
               "post_shift_m": [round(value, 3) for value in shift], "sizes": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            if size % CHIP_SIZE:
                parser.error(f"--sizes must be multiples of {CHIP_SIZE}, got {size}")
            start = time.perf_counter()
            before = build_mosaic(pre_chips, size, Path(scratch) / f"pre_{size}.tif")
            after = build_mosaic(post_chips, size, Path(scratch) / f"post_{size}.tif", shift)
            build_seconds = time.perf_counter() - start
            command = [sys.executable, __file__, "--run-one", str(before), str(after), "--tile-size",
                       str(args.tile_size), "--batch-size", str(args.batch_size), "--max-new-tokens",
                       str(args.max_new_tokens)] + (["--threads", str(args.threads)] if args.threads else [])
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            measured["mosaic_build_seconds"] = round(build_seconds, 1)
            measured["mosaic_mb_on_disk"] = round(sum(p.stat().st_size for p in (before, after)) / 2**20, 1)
            figures["sizes"][f"{size}x{size}"] = measured
            print(f"{size}x{size}: {json.dumps(measured)}", flush=True)
            for path in (before, after):
                path.unlink()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
