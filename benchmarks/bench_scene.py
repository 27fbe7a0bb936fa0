"""`rscc scene` throughput and peak memory on large mosaics built from the real xView2 chips, with a tiny model.

    python benchmarks/bench_scene.py [--sizes 2048 8192] [--tile-size 256] [--threads 1] [--json out.json]
    python benchmarks/bench_scene.py --sizes 20000 --dtype uint16 --outputs geojson parquet parquet+cog \
        --baseline-code /tmp/rscc-main --http-window

For each size S, a mosaic of S x S pixels is built in a temporary folder from the three real pre chips (and one
from the post chips, shifted by the real pre/post offset of about half a metre, so AFTER is resampled onto BEFORE's
grid as in the tests), as Cloud-Optimized GeoTIFFs; `--dtype uint16` scales the chips' bytes by 257 into 16-bit
values, which the scene stretches back per date. Each (size, output) then runs in a fresh process: load a tiny
random rscc checkpoint (with a change-detection head when an output writes the mask), run `describe_scene` over the
whole mosaic, and report tiles/s and the process's peak resident memory (VmHWM). If memory is bounded, the peak
is the same for every size.

Outputs: `geojson` (the GeoJSON tiles), `geojson+mask` (and the mask mosaic), `parquet` (GeoParquet tiles),
`parquet+cog` (GeoParquet and the mask as a COG). `--baseline-code DIR` also runs `geojson+mask` with the package
found in DIR (a checkout of the code before GeoParquet and COG outputs, e.g. `git archive main rscc | tar -x -C DIR`),
reported as `today: geojson+mask`. `--http-window` serves the BEFORE mosaic on 127.0.0.1 (tests/http_range_server.py)
and counts the bytes that reading one 256 x 256 window over HTTP takes, against the file's size.
"""

import argparse
import json
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

REPO_ROOT = Path(__file__).resolve().parent.parent
CHIPS = REPO_ROOT.parent / "shared" / "data" / "geotiff_xview2"
RANGE_SERVER = REPO_ROOT / "tests" / "http_range_server.py"
CHIP_SIZE = 1024
# output name -> (suffix of --out, whether the mask mosaic is written too)
OUTPUTS = {"geojson": (".geojson", False), "geojson+mask": (".geojson", True), "parquet": (".parquet", False),
           "parquet+cog": (".parquet", True)}
HTTP_WINDOW = 256


def build_mosaic(chip_paths: list[Path], size: int, destination: Path, shift: tuple[float, float] = (0.0, 0.0),
                 dtype: str = "uint8") -> Path:
    """Write a size x size Cloud-Optimized GeoTIFF repeating the chips row by row, on the first chip's grid (origin
    shifted by `shift` metres), one chip window at a time (to a tiled staging GeoTIFF, then copied as a COG).

    Args:
        chip_paths (`list[Path]`): the chips to cycle through.
        size (`int`): mosaic side in pixels (the chips of the last row and column are cropped).
        destination (`Path`): the COG to write.
        shift (`tuple[float, float]`): (x, y) added to the origin, in the CRS's units.
        dtype (`str`): `uint8` (the chips' values) or `uint16` (the values times 257).
    """
    chips = []
    for path in chip_paths:
        with rasterio.open(path) as chip:
            chips.append(chip.read().astype(dtype) * (257 if dtype == "uint16" else 1))
            profile, transform = chip.profile, chip.transform
    profile.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   transform=Affine.translation(*shift) @ transform, dtype=dtype, BIGTIFF="IF_SAFER")
    per_side = math.ceil(size / CHIP_SIZE)
    staging = destination.with_suffix(".staging.tif")
    with rasterio.open(staging, "w", **profile) as mosaic:
        for row in range(per_side):
            for col in range(per_side):
                window = Window(col * CHIP_SIZE, row * CHIP_SIZE, min(CHIP_SIZE, size - col * CHIP_SIZE),
                                min(CHIP_SIZE, size - row * CHIP_SIZE))
                chip = chips[(row * per_side + col) % len(chips)]
                mosaic.write(chip[:, : window.height, : window.width], window=window)
    copying = destination.with_suffix(".copying.tif")  # a stopped build leaves no file that looks finished
    rasterio.shutil.copy(staging, copying, driver="COG", COMPRESS="DEFLATE", BIGTIFF="IF_SAFER",
                         NUM_THREADS="ALL_CPUS")
    staging.unlink()
    copying.rename(destination)
    return destination


def http_window_read(raster: Path) -> dict:
    """Serve `raster`'s folder on 127.0.0.1 and read one window of it over HTTP: requests and bytes served."""
    from rscc.imagery import open_raster

    log = raster.parent / "requests.log"
    log.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, str(RANGE_SERVER), str(raster.parent), "--log", str(log),
                               "--lifetime", "120"], stdout=subprocess.PIPE, text=True)
    try:
        if not select.select([server.stdout], [], [], 20)[0]:
            raise RuntimeError("the HTTP server did not start")
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/{raster.name}"
        start = time.perf_counter()
        with open_raster(url, "BEFORE") as remote:
            middle = remote.width // 2
            remote.read(window=Window(middle, middle, HTTP_WINDOW, HTTP_WINDOW))
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=10)
    requests = [line.split() for line in log.read_text().splitlines() if line.startswith(f"/{raster.name}")]
    served = sum(int(sent) for _, sent in requests)
    size = raster.stat().st_size
    return {"window_px": HTTP_WINDOW, "get_requests": len(requests), "bytes_served": served, "file_bytes": size,
            "fraction_of_file": round(served / size, 6), "seconds": round(seconds, 3)}


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program. On Linux, VmHWM: ru_maxrss also counts the
    parent's resident memory at fork (a parent that built a mosaic through GDAL's block cache holds over 1 GB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports kilobytes


def run_one(args) -> None:
    """The measurement itself, in its own process so that the peak belongs to one scene size and output."""
    import torch

    try:
        from rscc.loading import load_captioner
        from rscc.scene import SceneOptions, describe_scene
        from rscc.tiny_checkpoints import make_tiny_checkpoint

        def scene_arguments(**options):
            return {"options": SceneOptions(**options)}
    except ImportError:  # --baseline-code from before the package split: options were keyword arguments
        from rscc.checkpoints import make_tiny_checkpoint
        from rscc.inference import load_captioner
        from rscc.scene import describe_scene

        def scene_arguments(**options):
            return options

    if args.threads:
        torch.set_num_threads(args.threads)
    suffix, with_mask = OUTPUTS[args.output]
    with tempfile.TemporaryDirectory() as scratch:
        out, mask = Path(scratch) / f"changes{suffix}", Path(scratch) / "mask.tif"
        checkpoint = make_tiny_checkpoint(Path(scratch) / "tiny", use_change_head=args.change_head)
        model, processor = load_captioner(str(checkpoint))
        rss_before_scene = peak_rss_mb()
        start = time.perf_counter()
        summary = describe_scene(
            model, processor, [args.before, args.after], out, **scene_arguments(
                tile_size=args.tile_size, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                mask_out=mask if with_mask else None),
        )
        seconds = time.perf_counter() - start
        out_mb = out.stat().st_size / 2**20
        mask_mb = mask.stat().st_size / 2**20 if with_mask else None
        mask_layout = None
        if with_mask:
            with rasterio.open(mask) as written:
                mask_layout = {"layout": written.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "GTiff"),
                               "block": written.block_shapes[0], "overviews": written.overviews(1)}
    print(json.dumps({
        "output": args.output,
        "tiles": summary.tiles,
        "captioned_tiles": summary.captioned,
        "alignment": summary.alignment,
        "seconds": round(seconds, 1),
        "tiles_per_second": round(summary.captioned / seconds, 2),
        "peak_rss_mb_after_model_load": round(rss_before_scene, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "out_mb": round(out_mb, 2),
        "mask_mb": None if mask_mb is None else round(mask_mb, 2),
        "mask": mask_layout,
        "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="mosaic sides in pixels")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", choices=["uint8", "uint16"], default="uint8", help="mosaic data type")
    parser.add_argument("--outputs", nargs="+", choices=list(OUTPUTS), default=["geojson"],
                        help="the outputs measured, each in its own run (default geojson)")
    parser.add_argument("--baseline-code", type=Path,
                        help="a folder holding the package before GeoParquet/COG outputs: its geojson+mask is run too")
    parser.add_argument("--http-window", action="store_true",
                        help="also measure the bytes read over HTTP for one window of the BEFORE mosaic")
    parser.add_argument("--mosaic-dir", type=Path,
                        help="keep the mosaics in this folder and reuse the ones already there (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--run-one", nargs=2, metavar=("BEFORE", "AFTER"), help=argparse.SUPPRESS)
    parser.add_argument("--output", choices=list(OUTPUTS), default="geojson", help=argparse.SUPPRESS)
    parser.add_argument("--change-head", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        args.before, args.after = args.run_one
        run_one(args)
        return
    # One model for every run: with a change-detection head when any run writes the mask.
    change_head = bool(args.baseline_code) or any(OUTPUTS[output][1] for output in args.outputs)
    runs = [(output, None) for output in args.outputs]
    if args.baseline_code:
        runs.append(("geojson+mask", args.baseline_code))

    pre_chips = sorted((CHIPS / "pre").glob("*_pre.tif"))
    post_chips = sorted((CHIPS / "post").glob("*_post.tif"))
    with rasterio.open(pre_chips[0]) as pre, rasterio.open(post_chips[0]) as post:
        shift = (post.transform.c - pre.transform.c, post.transform.f - pre.transform.f)
    figures = {"tile_size": args.tile_size, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
               "dtype": args.dtype, "change_head": change_head, "cpus": os.cpu_count(),
               "load_average_at_start": os.getloadavg(), "post_shift_m": [round(value, 3) for value in shift],
               "sizes": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.mosaic_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            start = time.perf_counter()
            before, after = (folder / f"{name}_{size}_{args.dtype}.tif" for name in ("pre", "post"))
            if not before.exists():
                build_mosaic(pre_chips, size, before, dtype=args.dtype)
            if not after.exists():
                build_mosaic(post_chips, size, after, shift, dtype=args.dtype)
            figures["sizes"][f"{size}x{size}"] = by_output = {
                "mosaic_build_seconds": round(time.perf_counter() - start, 1),
                "mosaic_mb_on_disk": round(sum(p.stat().st_size for p in (before, after)) / 2**20, 1),
            }
            if args.http_window:
                by_output["http_window"] = http_window_read(before)
                print(f"{size}x{size} http window: {json.dumps(by_output['http_window'])}", flush=True)
            for output, code in runs:
                command = [sys.executable, __file__, "--run-one", str(before), str(after), "--output", output,
                           "--tile-size", str(args.tile_size), "--batch-size", str(args.batch_size),
                           "--max-new-tokens", str(args.max_new_tokens)]
                command += (["--threads", str(args.threads)] if args.threads else [])
                command += ["--change-head"] if change_head else []
                environment = dict(os.environ) | ({"PYTHONPATH": str(code)} if code else {})
                result = subprocess.run(command, capture_output=True, text=True, env=environment)
                if result.returncode:
                    raise RuntimeError(f"{output} run failed:\n{result.stderr[-3000:]}")
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                name = f"today: {output}" if code else output
                by_output[name] = measured
                print(f"{size}x{size} {name}: {json.dumps(measured)}", flush=True)
            if args.mosaic_dir is None:
                for path in (before, after):
                    path.unlink()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
