"""`rscc scene`: two GeoTIFFs (or a series) captioned tile by tile into GeoJSON (see `rscc.scene`)."""

import argparse
import sys
from pathlib import Path

from ..cli import EXIT_OK, command_help
from ..defaults import MIN_TILE_SIZE, SCENE_DATE_ORDERS
from ..output_lock import locking_output
from ..parallel import current_share, existing_parts, process_device
from .options import (
    add_device_arguments,
    add_engine_arguments,
    add_progress_arguments,
    batch_size_of,
    show_progress,
)


def _band_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 4,3,2, got {text!r}") from None


def _check_options_take_effect(scene, args) -> None:
    """Refuse options that `scene` (a `SceneSeries`) would ignore, rather than run as if they had been applied."""
    from ..imagery import SceneInputError

    stretch_options = [option for option, given in (("--percentiles", args.percentiles is not None),
                                                    ("--value-range", args.value_range is not None)) if given]
    every = "BEFORE and AFTER" if len(scene.dates) == 2 else f"all {len(scene.dates)} dates"
    if stretch_options and all(source.is_eight_bit for source in scene.dates):
        raise SceneInputError(f"{' and '.join(stretch_options)} stretch data deeper than 8 bits; {every} are 8-bit "
                              "and are used as they are")
    if args.assume_aligned and all(source.dataset.crs for source in scene.dates):
        raise SceneInputError(f"--assume-aligned is for rasters without a CRS; {every} have one and are aligned by "
                              "their georeferencing")


def _add_stac_arguments(parser: argparse.ArgumentParser) -> None:
    """`rscc scene`'s STAC options: --asset, --order, --stac-item."""
    parser.add_argument("--asset", metavar="KEY",
                        help="the asset read from each STAC item input (e.g. visual); needed when an input is an item")
    parser.add_argument("--order", choices=SCENE_DATE_ORDERS, default="check",
                        help="dates out of time order (by STAC datetime or raster date tag): check refuses them "
                        "(default), time sorts them, given keeps them as given")
    parser.add_argument("--stac-item", metavar="OUT.json",
                        help="also write a STAC Item describing the run: its outputs as assets, the model, input items "
                        "and dates as properties")


def stopped_note(args: argparse.Namespace) -> str:
    """What a failed or stopped run leaves besides nothing: the part files of a data-parallel or Ray run, which a rerun
    resumes from."""
    parts = existing_parts(Path(args.out)) if args.out.strip() else []
    if not parts:
        return ""
    return f"finished tiles are kept in {', '.join(map(str, parts))}; rerun the same command to resume"


def main(args: argparse.Namespace) -> int:
    """Run `rscc scene`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..output_files import check_output_file
    from ..image_processing_rscc import HIGH_BIT_DEPTH_PERCENTILES
    from ..ray import check_engine_arguments
    from ..scene import SceneOptions, SceneSeries
    from ..scene.outputs import OUT_EXPECTED
    from ..stac import check_stac_item_output, resolve_scene_inputs, write_run_item

    check_engine_arguments(args)

    options = SceneOptions(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=batch_size_of(args),
        max_new_tokens=args.max_new_tokens, bands=args.bands, assume_aligned=args.assume_aligned,
        resampling=args.resampling,
        percentiles=HIGH_BIT_DEPTH_PERCENTILES if args.percentiles is None else tuple(args.percentiles),
        value_range=None if args.value_range is None else tuple(args.value_range),
        min_valid_fraction=args.min_valid_fraction, polygons=args.polygons, mask_out=args.mask_out,
        progress=show_progress(args),
    )
    # Check the rasters and the outputs before the model loads, so bad input fails in a second.
    inputs = resolve_scene_inputs(args.rasters, args.asset, args.order)  # STAC items -> their rasters, dated
    args.rasters = [scene_input.raster for scene_input in inputs]
    check_output_file(args.out, "--out", OUT_EXPECTED, inputs=args.rasters)
    check_stac_item_output(args.stac_item, inputs, [args.out, args.mask_out])
    options.check(has_masks=True)  # whether the model has a change head is known once it is loaded
    with SceneSeries(args.rasters, args.bands, args.assume_aligned, args.resampling) as scene:
        _check_options_take_effect(scene, args)
    summary, config = _describe(args, options)
    if summary is None:  # a process other than the main one: the main process reports the run
        return EXIT_OK
    if args.stac_item:
        write_run_item(args.stac_item, inputs, args.out, args.mask_out, config, summary)
    print(
        f"rscc scene: {summary.captioned} tile(s) captioned ({summary.changed} changed), {summary.skipped} skipped "
        f"for nodata; overlap {int(summary.window.width)} x {int(summary.window.height)} px, {summary.alignment}; "
        f"{args.out}{' (engine ray)' if args.engine == 'ray' else ''}",
        file=sys.stderr,
    )
    return EXIT_OK


def _describe(args: argparse.Namespace, options):
    """The scene captioned by the engine of --engine: its `SceneSummary` (None on a process other than the main
    one) and the model's config (with --engine ray, read only for --stac-item: the driver does not load the model)."""
    if args.engine == "ray":
        from ..ray import captioner_config, quiet_ray_data
        from ..ray_scene import describe_scene_on_ray

        quiet_ray_data(options.progress)
        summary = describe_scene_on_ray(args.rasters, args.model, args.out, options, address=args.address,
                                        num_workers=args.num_workers or 1, gpus_per_worker=args.gpus_per_worker or 0.0,
                                        dtype=args.dtype)
        return summary, captioner_config(args.model) if args.stac_item else None
    from ..loading import DTYPES, load_captioner
    from ..scene import describe_scene

    share = current_share(args.device)
    model, processor = load_captioner(args.model, device=process_device(args.device, share), dtype=DTYPES[args.dtype])
    return describe_scene(model, processor, args.rasters, args.out, options, share=share), model.config


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "scene",
        help=command_help("scene"),
        usage="rscc scene (BEFORE AFTER | DATE1 DATE2 ... DATEN) --model MODEL --out OUT [options]",
        description="Put AFTER on BEFORE's grid (every later date on the first one's, for a series of N rasters; "
        "resampled when CRS, resolution or origin differ), tile their common overlap, caption the tiles in batches "
        "(a series' tiles as series) and write a GeoJSON FeatureCollection (WGS84 longitude/latitude) with one "
        "feature per tile: caption, change_flag, changed_fraction (a change mask is first date to last). Rasters "
        "are read window by window, "
        "so memory does not grow with the scene. Bands: red/green/blue by colour interpretation, else the first "
        "three (or one, grey); --bands overrides. Data deeper than 8 bits is stretched to 8 bits per date between "
        "the 2nd and 98th percentiles of its overlap (--percentiles, --value-range). Nodata (and a later date's "
        "area outside the first) is honoured: such pixels are blanked in every date, and tiles with less than "
        "--min-valid-fraction valid pixels are skipped. Exit codes: 0 success; 2 bad input (missing or "
        "unreadable raster, no CRS without --assume-aligned, no overlap, bad option or output path, model folder "
        "missing, incomplete or unloadable); 3 out of device memory; 4 the Hugging Face Hub failed; 130 "
        "interrupted (Ctrl-C), 143 terminated (SIGTERM). Outputs are written to temporary files and renamed at the "
        "end: a failed, interrupted or terminated run leaves nothing.",
    )
    parser.add_argument("rasters", nargs="+", metavar="RASTER",
                        help="BEFORE AFTER, or DATE1 ... DATEN oldest first: GeoTIFFs (any GDAL raster; files or "
                        "HTTP(S) URLs, read by range requests) or STAC Items (.json files or URLs, with --asset); the "
                        "first one's grid is the output grid")
    parser.add_argument("--out", required=True,
                        help="output file: GeoJSON (.geojson), or GeoParquet (.parquet: streamed, with the model and "
                        "revision in every row)")
    _add_stac_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--tile-size", type=int,
                        help=f"tile side in the first raster's pixels, at least {MIN_TILE_SIZE} "
                        "(default: the model's input size)")
    parser.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tiles (default 0)")
    parser.add_argument("--bands", type=_band_list, help="1-based bands as R,G,B (or one band), e.g. 4,3,2")
    parser.add_argument("--assume-aligned", action="store_true",
                        help="accept rasters without CRS, taking their pixel grids as identical")
    parser.add_argument("--resampling", default="bilinear", choices=["nearest", "bilinear", "cubic"],
                        help="resampling of later dates onto the first one's grid (default bilinear)")
    parser.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="stretch of data deeper than 8 bits (default 2 98)")
    parser.add_argument("--value-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="fixed stretch range for data deeper than 8 bits, e.g. 0 3000 (instead of percentiles)")
    parser.add_argument("--min-valid-fraction", type=float, default=0.5,
                        help="skip tiles with a smaller fraction of valid pixels (default 0.5)")
    parser.add_argument("--polygons", action="store_true",
                        help="also write change polygons (needs a model with a change-detection head)")
    parser.add_argument("--mask-out", help="also write the change-mask mosaic as a Cloud-Optimized GeoTIFF (needs a "
                        "change-detection head)")
    add_progress_arguments(parser)
    add_engine_arguments(parser, "; the rasters and --model must be readable on every node (a shared file system, "
                         "or URLs), --out is written by this process")
    parser.set_defaults(run=locking_output(main), stopped_note=stopped_note)
    return parser

