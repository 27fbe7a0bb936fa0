"""Captioning a scene: its overlap tiled, the tiles read and captioned in batches, the results written to the outputs
in tile order, straight or through resumable part files (see `rscc.parallel.PartFiles`)."""

import contextlib
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from tqdm.auto import tqdm

from ..captioning import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, describe_changes
from ..imagery import SceneInputError
from ..input_fingerprint import content_fingerprint
from ..output_files import check_output_file
from ..parallel import PARTIAL_SUFFIX, PartFiles, ProcessShare, batched, wait_for_everyone
from ..image_processing_rscc import HIGH_BIT_DEPTH_PERCENTILES
from .alignment import SceneSeries, check_raster_list
from .outputs import OUT_EXPECTED, Georeference, TileResult, open_outputs, tile_result
from .tiling import Tile, TileGrid, check_tile_size

# GDAL's default block cache is 5% of the machine's memory: on a large scene it would fill up and make the process
# grow with the scene. A few tile rows of blocks are all that the row-by-row tile order reuses. (rasterio hands an
# integer GDAL_CACHEMAX to GDAL as bytes: 64 would mean 64 bytes, and every read would decode its blocks again.)
GDAL_CACHE_BYTES = 64 * 2**20

# Per-pixel change masks of a batch of tiles: (first-date tiles, last-date tiles) as uint8 (H, W, 3) or (H, W) arrays,
# in; one boolean (H, W) array per tile (the change from the first date to the last), out.
ChangeMaskFunction = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class SceneOptions:
    """How [`describe_scene`] reads, tiles and captions a scene, and what it writes besides the GeoJSON.

    Args:
        tile_size (`int`, *optional*): tile side in the first date's pixels; defaults to the model's input size
            ([`default_tile_size`]).
        overlap (`int`): pixels shared by neighbouring tiles.
        batch_size (`int`): tiles per `generate` call.
        max_new_tokens (`int`): caption length limit.
        bands (`list[int]`, *optional*): 1-based bands (three, or one for grey) of every raster.
        assume_aligned (`bool`): accept rasters without CRS as sharing one pixel grid.
        resampling (`str`): resampling of later dates onto the first one's grid: `nearest`, `bilinear` or `cubic`.
        percentiles (`tuple[float, float]`): percentiles of a high-bit-depth date mapped to 0 and 255.
        value_range (`tuple[float, float]`, *optional*): a fixed range for high-bit-depth data instead.
        min_valid_fraction (`float`): tiles with a smaller fraction of pixels valid in every date are skipped.
        change_masks (`ChangeMaskFunction`, *optional*): per-pixel change masks of tile batches (first date to last)
            from elsewhere (an external change-detection model); by default a model with a change-detection head
            supplies them. Masks set `change_flag` (any changed valid pixel) and `changed_fraction`.
        polygons (`bool`): also write change polygons (needs change masks and a CRS).
        mask_out (`str` or `os.PathLike`, *optional*): also write the mask mosaic as a GeoTIFF on the first grid
            (1 changed, 0 unchanged, 255 nodata; needs change masks).
        progress (`bool`): show a progress bar on stderr (the main process's, over every process's tiles).
    """

    tile_size: int | None = None
    overlap: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    bands: list[int] | None = None
    assume_aligned: bool = False
    resampling: Literal["nearest", "bilinear", "cubic"] = "bilinear"
    percentiles: tuple[float, float] = HIGH_BIT_DEPTH_PERCENTILES
    value_range: tuple[float, float] | None = None
    min_valid_fraction: float = 0.5
    change_masks: ChangeMaskFunction | None = None
    polygons: bool = False
    mask_out: str | os.PathLike | None = None
    progress: bool = False

    def check(self, has_masks: bool) -> None:
        """Refuse options that cannot work, before any raster is read (`has_masks`: change masks will come)."""
        if (self.polygons or self.mask_out is not None) and not has_masks:
            raise SceneInputError(
                "change polygons and the mask mosaic need per-pixel change masks, and this model has no "
                "change-detection head"
            )
        if self.tile_size is not None:
            check_tile_size(self.tile_size)
        if self.batch_size < 1:
            raise SceneInputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise SceneInputError(f"--min-valid-fraction must lie in (0, 1], got {self.min_valid_fraction}")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise SceneInputError(f"--percentiles must satisfy 0 <= LOW < HIGH <= 100, got {self.percentiles}")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise SceneInputError(f"--value-range must satisfy MIN < MAX, got {self.value_range}")


@dataclass(frozen=True)
class SceneSummary:
    """What `describe_scene` did.

    Args:
        tiles (`int`): tiles in the grid.
        captioned (`int`): tiles captioned (written as features).
        skipped (`int`): tiles with too little valid data.
        changed (`int`): captioned tiles flagged as changed.
        window (`Window`): the overlap on the first date's grid.
        alignment (`str`): how the later dates were put on the first one's grid.
    """

    tiles: int
    captioned: int
    skipped: int
    changed: int
    window: Window
    alignment: str


# A scene's tiles captioned: (scene, stretch ranges, tiles, whether the mask mosaic is written) -> their results, a
# list per batch (see `TileCaptioner`).
CaptionTiles = Callable[[SceneSeries, list, Iterable[Tile], bool], Iterator[list[TileResult]]]


@dataclass(frozen=True)
class TileCaptioner:
    """What captions a scene's tiles: the model in this process ([`describe_scene`]), or an engine's workers
    (`rscc.ray_scene`).

    Args:
        config (`PretrainedConfig`): the model's config: its change head, input size (the default tile size), name
            and revision (written in the outputs, and naming a run's part files).
        caption ([`CaptionTiles`]): the tiles' results.
        in_order (`bool`): whether `caption` gives the results in the order of the tiles it is given; otherwise they
            are gathered in part files and merged in tile order.
    """

    config: object
    caption: CaptionTiles
    in_order: bool = True

    @property
    def has_change_head(self) -> bool:
        return getattr(self.config, "use_change_head", False)


def default_tile_size(config) -> int:
    """A scene's default tile side: the model's input size (its vision tower's), at which it sees every tile."""
    return config.vision_config.image_size


def describe_scene(
    model,
    processor,
    rasters: list[str | os.PathLike],
    out: str | os.PathLike,
    options: SceneOptions = SceneOptions(),
    share: ProcessShare | None = None,
) -> SceneSummary | None:
    """Caption the change across two (or more) georeferenced scenes tile by tile and write a GeoJSON FeatureCollection.

    Each captioned tile becomes a feature: its outline (WGS84; null without a CRS) and properties `tile` (index),
    `row`, `col`, `width`, `height` (pixels on the first date's grid), `caption`, `change_flag`, `changed_fraction`,
    `change_source` (`"mask"` or `"caption"`) and `valid_fraction`. Change polygons are features with `kind`
    `"change"` and the `tile` they come from. The collection's `rscc` member records the inputs and settings.

    Args:
        model: an rscc (or LLaVA-OneVision) captioning model.
        processor ([`RsccProcessor`]).
        rasters (`list[str | os.PathLike]`): the dates, oldest first: BEFORE and AFTER, or a series of N (each tile
            is then captioned as a series, which the model must accept); the first one's grid is the output grid.
        out (`str` or `os.PathLike`): the GeoJSON file (written to a temporary file, then renamed).
        options ([`SceneOptions`]): tiling, reading, captioning and the other outputs.
        share ([`ProcessShare`], *optional*): this process's share of a data-parallel run (see `rscc.parallel`): it
            captions every `share.count`-th tile not done yet into its own `OUT.partial.RANK`, and the main process
            merges the parts in tile order into the outputs once every process is done. Every process must call
            this function. A run of one process over the part files an earlier run left resumes from them too.

    Returns:
        [`SceneSummary`] on the main process; `None` on the others.
    """

    def caption(scene: SceneSeries, stretch, tiles: Iterable[Tile], mosaic: bool) -> Iterator[list[TileResult]]:
        for batch in batched(tiles, options.batch_size):
            yield _caption_tiles(model, processor, scene, batch, stretch, options, mosaic)

    return caption_scene(TileCaptioner(model.config, caption), rasters, out, options, share)


def caption_scene(
    captioner: TileCaptioner,
    rasters: list[str | os.PathLike],
    out: str | os.PathLike,
    options: SceneOptions = SceneOptions(),
    share: ProcessShare | None = None,
) -> SceneSummary | None:
    """[`describe_scene`] with the tiles captioned by `captioner`: read the scene, caption its tiles (resuming from
    the part files of an earlier run) and write the outputs in tile order.

    Args:
        captioner ([`TileCaptioner`]): what captions the tiles.
        rasters, out, options, share: as for [`describe_scene`].

    Returns:
        [`SceneSummary`] on the main process; `None` on the others.
    """
    check_raster_list(rasters)
    out = check_output_file(out, "--out", OUT_EXPECTED, inputs=rasters)
    mask_out = None if options.mask_out is None else check_output_file(
        options.mask_out, "--mask-out", "a .tif file path", inputs=[*rasters, out])
    has_masks = options.change_masks is not None or captioner.has_change_head
    options.check(has_masks)
    tile_size = options.tile_size or default_tile_size(captioner.config)
    check_tile_size(tile_size)
    parts = PartFiles(out, ProcessShare() if share is None else share)
    in_parts = parts.share.count > 1 or bool(parts.existing()) or not captioner.in_order
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        scene = stack.enter_context(SceneSeries(rasters, options.bands, options.assume_aligned, options.resampling))
        if options.polygons and scene.crs is None:
            raise SceneInputError("change polygons need a CRS; no raster has one")
        stretch = scene.stretch_ranges(options.percentiles, options.value_range)
        grid = TileGrid(scene.window, tile_size, options.overlap)

        def caption(tiles: Iterable[Tile]) -> Iterator[list[TileResult]]:
            return captioner.caption(scene, stretch, tiles, mask_out is not None)

        if in_parts:
            run = _run_id(captioner.config, rasters, tile_size, stretch, options)
            _caption_into_parts(parts, run, grid, caption, options)
            if not parts.share.is_main:
                wait_for_everyone(parts.share)
                return None
            results = (TileResult.from_line(json.loads(raw))
                       for raw in parts.merged(range(len(grid)), lambda line: line["tile"]))
        else:
            results = _captioned_in_order(grid, caption, options, stack)
        outputs = open_outputs(stack, scene, out, mask_out, captioner.config)
        for result in results:
            outputs.add(result)
        summary = SceneSummary(
            tiles=len(grid), captioned=outputs.captioned, skipped=len(grid) - outputs.captioned,
            changed=outputs.changed, window=scene.window, alignment=scene.alignment,
        )
        outputs.close(_run_metadata(summary, scene, rasters, tile_size, stretch, options, has_masks))
    if in_parts:
        parts.remove()  # only once the outputs are in place
        wait_for_everyone(parts.share)
    return summary


def captions_and_masks(model, processor, samples: list[list[np.ndarray]], options: SceneOptions
                       ) -> tuple[list[str], list[np.ndarray | None]]:
    """The captions of tiles (each a list of dates) and their change masks (first date to last; None without)."""
    descriptions = describe_changes(model, processor, samples, batch_size=len(samples),
                                    max_new_tokens=options.max_new_tokens)
    if options.change_masks is not None:
        masks = options.change_masks([dates[0] for dates in samples], [dates[-1] for dates in samples])
    else:
        masks = [None if description.change_mask is None else description.change_mask > 0
                 for description in descriptions]
    return [description.caption for description in descriptions], masks


def _caption_tiles(model, processor, scene: SceneSeries, batch: list[Tile], stretch, options: SceneOptions,
                   mosaic: bool) -> list[TileResult]:
    """Read and caption a batch of tiles (the ones with enough valid pixels) into one result per tile, in order."""
    read = [(tile, *scene.read_rgb(tile.window, stretch)) for tile in batch]
    kept = [(tile, dates, valid) for tile, dates, valid in read if valid.mean() >= options.min_valid_fraction]
    results = {tile.index: TileResult(tile.index, []) for tile in batch}
    if kept:
        captions, masks = captions_and_masks(model, processor, [dates for _, dates, _ in kept], options)
        georeference = Georeference(scene.transform, scene.crs)
        for (tile, _, valid), caption, mask in zip(kept, captions, masks):
            results[tile.index] = tile_result(tile, caption, mask, valid, georeference, options.polygons, mosaic)
    return [results[tile.index] for tile in batch]


def _captioned_in_order(grid: TileGrid, caption, options: SceneOptions, stack: contextlib.ExitStack
                        ) -> Iterator[TileResult]:
    """Every tile's result in tile order, captioned as they are asked for (one process, no part files)."""
    progress_bar = stack.enter_context(tqdm(total=len(grid), unit="tile", file=sys.stderr,
                                            disable=not options.progress))
    for results in caption(grid):
        yield from results
        progress_bar.update(len(results))


def _run_id(config, rasters, tile_size: int, stretch, options: SceneOptions) -> str:
    """A short name of the settings a part file's tiles were made with: a rerun resumes only its own tiles."""
    settings = {
        "min_valid_fraction": options.min_valid_fraction, "max_new_tokens": options.max_new_tokens,
        "polygons": options.polygons, "mosaic": options.mask_out is not None,
        "rasters": [Path(raster).resolve() for raster in rasters], "tile_size": tile_size,
        "raster_contents": [content_fingerprint(raster) for raster in rasters],  # a raster replaced since
        "overlap": options.overlap, "bands": options.bands, "resampling": options.resampling, "stretch": stretch,
        "model": getattr(config, "_name_or_path", None),
        "revision": getattr(config, "_commit_hash", None),
        # by name: the function object differs from process to process
        "change_masks": getattr(options.change_masks, "__qualname__", None),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _caption_into_parts(parts: PartFiles, run: str, grid: TileGrid, caption, options: SceneOptions) -> None:
    """Caption this process's share of the tiles not in any part file into its own part."""

    def tile_of_this_run(part: Path, number: int, line: dict) -> int:
        if line.get("run") != run:
            raise SceneInputError(
                f"{part}, line {number}: tiles of a run with other inputs, model or options than this one; rerun "
                f"with the earlier ones to resume, or delete {parts.out.name}{PARTIAL_SUFFIX}* to start again"
            )
        return line["tile"]

    parts.repair()
    done = parts.finished(tile_of_this_run)
    pending = parts.share.take(tile for tile in grid if tile.index not in done)
    chunks = ((len(results), "".join(result.to_line(run) for result in results)) for results in caption(pending))
    parts.write(chunks, options.progress, len(grid), len(done), "tile")


def _run_metadata(summary: SceneSummary, scene: SceneSeries, rasters, tile_size: int, stretch,
                  options: SceneOptions, has_masks: bool) -> dict:
    """The inputs and settings of a run, recorded in its outputs (the GeoJSON's `rscc` member)."""
    return {
        "rasters": [str(raster) for raster in rasters],
        "crs": scene.crs.to_string() if scene.crs else None,
        "alignment": summary.alignment,
        "overlap_window": {
            "col": int(summary.window.col_off), "row": int(summary.window.row_off),
            "width": int(summary.window.width), "height": int(summary.window.height),
        },
        "bands": scene.bands,
        "stretch": stretch,
        "tile_size": tile_size,
        "overlap": options.overlap,
        "tiles": summary.tiles,
        "captioned_tiles": summary.captioned,
        "skipped_tiles": summary.skipped,
        "changed_tiles": summary.changed,
        "change_source": "mask" if has_masks else "caption",
    }


__all__ = [
    "CaptionTiles",
    "ChangeMaskFunction",
    "SceneOptions",
    "SceneSummary",
    "TileCaptioner",
    "caption_scene",
    "captions_and_masks",
    "default_tile_size",
    "describe_scene",
]
