"""A scene captioned on Ray Data: `rscc scene ... --engine ray` (archives of pairs: `rscc.ray`).

This process, the driver, reads the scene's grid and stretch as `rscc scene` does and hands the tiles not done yet to
Ray Data: CPU tasks read each tile's dates from the rasters (which every node must read: a shared file system, or
HTTP(S) URLs) -> a pool of `num_workers` captioning actors (one model load each, `num_gpus`) running the package's
one tile-captioning path (`rscc.scene.describe.captions_and_masks`) -> CPU tasks that make each tile's features
(outline, change polygons, mosaic values). The results stream back to the driver, which appends them to its part file
(`OUT.partial`, see `rscc.parallel.PartFiles`) as they come, then writes the outputs in tile order once every tile
is done: the outputs of `rscc scene` in one process. A rerun resumes from the part files of either engine.

Faults: Ray restarts a killed actor and reruns its batch (a tile written twice counts once at the merge). A tile that
cannot be read or captioned is reported once with its index when the run ends; the others are kept in the part file,
and a rerun captions only what is missing.
"""

import json
import math
import os
import warnings
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from .errors import RsccInputError
from .ray import RayEngineError, as_columns, each_or_alone, ray_initialized, stage_options
from .scene.alignment import SceneSeries
from .scene.describe import (
    GDAL_CACHE_BYTES,
    SceneOptions,
    SceneSummary,
    TileCaptioner,
    caption_scene,
    captions_and_masks,
)
from .scene.outputs import Georeference, TileResult, tile_result
from .scene.tiling import Tile

# The columns a tile carries from stage to stage.
TILE_COLUMNS = ("tile", "window", "owned", "dates", "shape", "valid", "caption", "mask", "error")


def _window_list(window: Window) -> list[int]:
    return [int(window.col_off), int(window.row_off), int(window.width), int(window.height)]


def _tile_of(row: dict) -> Tile:
    return Tile(row["tile"], Window(*row["window"]), Window(*row["owned"]))


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def read_tile_batch(batch: pa.Table, rasters: list[str], options: SceneOptions, stretch: list) -> dict:
    """CPU stage: each tile's valid-pixel mask, and its dates (uint8 RGB bytes) when it has enough valid pixels to be
    captioned. A tile that cannot be read gets an `error`.

    Args:
        batch (`pyarrow.Table`): tile rows (`tile`, `window`, `owned`).
        rasters (`list[str]`): the scene's dates, oldest first (paths or URLs every node can read).
        options ([`SceneOptions`]): how the rasters are read, and which tiles are captioned.
        stretch (`list`): the stretch range of each date (`SceneSeries.stretch_ranges`, found by the driver).
    """
    rows = batch.to_pylist()
    for row in rows:
        row.update(dates=None, shape=None, valid=None, caption=None, mask=None, error=None)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        scene = None
        try:
            for row in rows:
                try:
                    if scene is None:
                        scene = SceneSeries(rasters, options.bands, options.assume_aligned, options.resampling)
                    dates, valid = scene.read_rgb(_tile_of(row).window, stretch)
                except (RsccInputError, RasterioError, ValueError, OSError) as error:
                    row["error"] = _error(error)
                    # GDAL keeps a block it failed to read in its cache and hands it back as zeros to the next read
                    # of the same raster: the next tile is read through new handles.
                    if scene is not None:
                        scene.close()
                    scene = None
                    continue
                row.update(shape=list(dates[0].shape), valid=np.packbits(valid).tobytes())
                if valid.mean() >= options.min_valid_fraction:
                    row["dates"] = [date.tobytes() for date in dates]
        finally:
            if scene is not None:
                scene.close()
    return as_columns(rows, TILE_COLUMNS)


def _unpacked(bits: bytes, shape: list[int]) -> np.ndarray:
    """A tile's boolean (H, W) mask from `np.packbits` bytes (`shape`: the tile's dates, (H, W[, bands]))."""
    height, width = shape[:2]
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=height * width).reshape(height, width) > 0


class SceneCaptioner:
    """Captioning actor: loads the model once, then captions batches of read tiles (their `caption`, and `mask` as
    packed bits when there is a change mask).

    Args:
        model (`str`): an rscc or LLaVA-OneVision checkpoint (Hub id or folder every node can read).
        options ([`SceneOptions`]): captioning options (`max_new_tokens`, `change_masks`).
        dtype (`str`): weights dtype name (`float32`, `bfloat16`, `float16`).
        device (`str`): torch device (`cuda` for an actor given a GPU: Ray makes it the actor's only one).
    """

    def __init__(self, model: str, options: SceneOptions, dtype: str = "float32", device: str = "cpu"):
        from .loading import DTYPES, load_captioner

        self.model, self.processor = load_captioner(model, device=device, dtype=DTYPES[dtype])
        self.options = options

    def _caption(self, rows: list[dict]) -> list[tuple[str, np.ndarray | None]]:
        samples = [[np.frombuffer(date, dtype=np.uint8).reshape(row["shape"]) for date in row["dates"]]
                   for row in rows]
        return list(zip(*captions_and_masks(self.model, self.processor, samples, self.options)))

    def __call__(self, batch: pa.Table) -> dict:
        rows = batch.to_pylist()
        captioned = [row for row in rows if row["dates"] and not row["error"]]
        for row, result in zip(captioned, each_or_alone(captioned, self._caption)):
            if result is not None:
                caption, mask = result
                row["caption"] = caption
                row["mask"] = None if mask is None else np.packbits(np.asarray(mask, dtype=bool)).tobytes()
            row["dates"] = None  # the pixels stay here: the next stage needs the valid mask only
        return as_columns(rows, TILE_COLUMNS)


def tile_results(batch: pa.Table, georeference: Georeference, options: SceneOptions, mosaic: bool) -> dict:
    """CPU stage: each tile's result (`rscc.scene.outputs.tile_result`: its feature, change polygons and mosaic
    values) as JSON, or its `error`; a tile with too few valid pixels has a result without features."""
    rows = batch.to_pylist()
    results = []
    for row in rows:
        if row["error"]:
            results.append(None)
        elif row["caption"] is None:
            results.append(json.dumps(TileResult(row["tile"], []).to_dict()))
        else:
            valid = _unpacked(row["valid"], row["shape"])
            mask = None if row["mask"] is None else _unpacked(row["mask"], row["shape"])
            result = tile_result(_tile_of(row), row["caption"], mask, valid, georeference, options.polygons, mosaic)
            results.append(json.dumps(result.to_dict()))
    return {"tile": [row["tile"] for row in rows], "result": results, "error": [row["error"] for row in rows]}


def ray_tile_captioner(ray, config, model: str, rasters: list[str], options: SceneOptions, num_workers: int = 1,
                       gpus_per_worker: float = 0.0, dtype: str = "float32") -> TileCaptioner:
    """A [`TileCaptioner`] that captions tiles on Ray Data: results come as batches finish, in any order.

    Args:
        ray: the `ray` module, initialized.
        config (`PretrainedConfig`): `model`'s config (read by the driver, which does not load the model).
        model (`str`): checkpoint every Ray node can load (a Hub id, or a folder on a shared file system).
        rasters (`list[str]`): the scene's dates, oldest first, readable on every node.
        options ([`SceneOptions`]): as for `rscc.scene.describe_scene`.
        num_workers (`int`): captioning actors, one model each.
        gpus_per_worker (`float`): GPUs per actor (0: CPU).
        dtype (`str`): weights dtype name.
    """
    cpu_stage, actor_stage = stage_options(ray, num_workers, gpus_per_worker)

    def caption(scene: SceneSeries, stretch, tiles: Iterable[Tile], mosaic: bool) -> Iterator[list[TileResult]]:
        rows = [{"tile": tile.index, "window": _window_list(tile.window), "owned": _window_list(tile.owned)}
                for tile in tiles]
        if not rows:
            return
        blocks = math.ceil(len(rows) / options.batch_size)
        read = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            read_tile_batch, fn_kwargs=dict(rasters=rasters, options=options, stretch=stretch),
            batch_size=options.batch_size, batch_format="pyarrow", **cpu_stage)
        captioned = read.map_batches(
            SceneCaptioner, batch_format="pyarrow", batch_size=options.batch_size,
            fn_constructor_kwargs=dict(model=model, options=options, dtype=dtype,
                                       device="cuda" if gpus_per_worker else "cpu"), **actor_stage)
        results = captioned.map_batches(
            tile_results, fn_kwargs=dict(georeference=Georeference(scene.transform, scene.crs), options=options,
                                         mosaic=mosaic),
            batch_size=options.batch_size, batch_format="pyarrow", **cpu_stage)
        errors = {}
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            done = []
            for row in batch.to_pylist():
                if row["error"]:
                    errors.setdefault(row["tile"], row["error"])
                else:
                    done.append(TileResult.from_line(json.loads(row["result"])))
            if done:
                yield done
        if errors:
            listed = "; ".join(f"tile {tile}: {error}" for tile, error in sorted(errors.items())[:5])
            more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
            raise RayEngineError(f"{len(errors)} tile(s) could not be read or captioned ({listed}{more}); the other "
                                 "tiles are kept in the part file, rerun to caption what is missing")

    return TileCaptioner(config, caption, in_order=False)


def describe_scene_on_ray(
    rasters: list[str | os.PathLike],
    model: str,
    out: str | os.PathLike,
    options: SceneOptions = SceneOptions(),
    *,
    address: str | None = None,
    num_workers: int = 1,
    gpus_per_worker: float = 0.0,
    dtype: str = "float32",
) -> SceneSummary:
    """`rscc.scene.describe_scene` with the tiles captioned on Ray Data: the same outputs, resuming from the part
    files of an earlier run of either engine.

    Args:
        rasters (`list[str | os.PathLike]`): the dates, oldest first (files every Ray node can read, or URLs).
        model (`str`): rscc or LLaVA-OneVision checkpoint every Ray node can load.
        out (`str` or `os.PathLike`): the GeoJSON or GeoParquet file, written by this process.
        options ([`SceneOptions`]): as for `describe_scene`.
        address (`str`, *optional*): a running Ray cluster (default: RAY_ADDRESS, else a local Ray instance started
            for the run); an initialized Ray is used as it is.
        num_workers (`int`): captioning actors, one model each.
        gpus_per_worker (`float`): GPUs per actor (0: CPU).
        dtype (`str`): weights dtype name.

    Returns:
        [`SceneSummary`].

    Raises:
        RayEngineError: tiles that could not be read or captioned, each named once.
    """
    from .ray import captioner_config

    if num_workers < 1 or gpus_per_worker < 0:
        raise RayEngineError(f"num_workers must be at least 1 and gpus_per_worker 0 or more, got {num_workers}, "
                             f"{gpus_per_worker}")
    config = captioner_config(model)
    rasters = [str(raster) for raster in rasters]
    ray, connected = ray_initialized(address)
    try:
        captioner = ray_tile_captioner(ray, config, model, rasters, options, num_workers, gpus_per_worker, dtype)
        return caption_scene(captioner, rasters, out, options)
    finally:
        if connected:
            ray.shutdown()


__all__ = ["SceneCaptioner", "describe_scene_on_ray", "ray_tile_captioner", "read_tile_batch", "tile_results"]
