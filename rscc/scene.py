"""Change captioning of georeferenced scenes: two GeoTIFFs (or a series of N) in, a GeoJSON FeatureCollection of
captioned tiles out.

    rscc scene BEFORE.tif AFTER.tif --model MODEL --out changes.geojson [--tile-size N] [--overlap N]
    rscc scene DATE1.tif DATE2.tif DATE3.tif --model MODEL --out changes.geojson

Every later date is put on the first one's pixel grid (read through a GDAL warped VRT when CRS, resolution or origin
differ; with shifted windows when the grids differ by whole pixels only), and only the overlap of all the rasters is
tiled; each tile is captioned as a pair, or as a series of N dates.
Everything is read window by window and written feature by feature, and GDAL's block cache is capped, so memory
depends on the tile and batch size, not on the scene size.

Per tile the GeoJSON (RFC 7946: WGS84 longitude/latitude, counter-clockwise outer rings) holds the caption, a
change flag and the changed fraction. With a per-pixel change mask (a function from tiles of the first and last
dates to boolean masks: a model's change-detection head) the flag and fraction come from the mask, and change
polygons and a GeoTIFF mosaic of the mask on the first date's grid can be written; without one the flag comes from
the caption (`rscc.captions.is_no_change_caption`) and the fraction is null.

STAC Items as inputs and a STAC Item of the run (`rscc.stac`), rasters over HTTP (`rscc.remote`), GeoParquet instead
of GeoJSON (`rscc.geoparquet`) and the mask mosaic as a Cloud-Optimized GeoTIFF (`rscc.cog`) live in their modules.
"""

import argparse
import base64
import contextlib
import hashlib
import itertools
import json
import math
import os
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_coordinates
from rasterio.warp import transform_geom
from rasterio.windows import Window
from tqdm.auto import tqdm

from .captions import is_no_change_caption
from .cog import cloud_optimized_geotiff
from .geoparquet import geoparquet_output, is_geoparquet
from .imagery import (
    SceneInputError,
    alpha_band,
    check_assumed_alignment,
    date_names,
    gdal_complaints_as_errors,
    open_raster,
    rgb_bands,
    warp_validity,
)
from .batch import atomic_output, check_output_file
from .cli import EXIT_BAD_INPUT, EXIT_HUB, EXIT_OK, EXIT_OUT_OF_MEMORY, interrupted_exit_code
from .inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DTYPES,
    HubUnreachableError,
    add_device_arguments,
    add_progress_arguments,
    batch_size_of,
    describe_changes,
    load_captioner,
    show_progress,
)
from .parallel import (
    PARTIAL_SUFFIX,
    PartsProgress,
    ProcessShare,
    appending_to_part,
    current_share,
    existing_parts,
    part_path,
    process_device,
    read_part,
    repair_part,
    wait_for_everyone,
)
from .processing_rscc import HIGH_BIT_DEPTH_PERCENTILES, stretch_to_uint8
from .input_fingerprint import content_fingerprint
from .output_lock import locking_output
from .stac import add_stac_arguments, check_stac_item_output, resolve_scene_inputs, write_run_item

# GDAL's default block cache is 5% of the machine's memory: on a large scene it would fill up and make the process
# grow with the scene. A few tile rows of blocks are all that the row-by-row tile order reuses. (rasterio hands an
# integer GDAL_CACHEMAX to GDAL as bytes: 64 would mean 64 bytes, and every read would decode its blocks again.)
GDAL_CACHE_BYTES = 64 * 2**20
# Longest side of the decimated read that measures a high-bit-depth image's stretch percentiles.
STRETCH_SAMPLE_SIZE = 1024
COORDINATE_DECIMALS = 7  # about 1 cm
WGS84 = "EPSG:4326"
MASK_NODATA = 255  # the mask mosaic's value outside the overlap, in nodata and in skipped tiles
# Densification of a later date's outline: reprojected straight edges bend.
OUTLINE_POINTS_PER_EDGE = 33
# Below this, a fractional pixel offset between the grids is rounding noise, not misregistration.
GRID_TOLERANCE_PX = 1e-3
# Smallest tile side: LEVIR-CC's pairs are 256 px; a tile of a few pixels says nothing and a scene has millions.
MIN_TILE_SIZE = 32
OUT_EXPECTED = "a .geojson or .parquet file path"

# Per-pixel change masks of a batch of tiles: (first-date tiles, last-date tiles) as uint8 (H, W, 3) or (H, W) arrays,
# in; one boolean (H, W) array per tile (the change from the first date to the last), out.
ChangeMaskFunction = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def _overlap_on_first_grid(before, after) -> Window:
    """The pixels of the first date's grid (BEFORE) lying wholly inside a later date's (AFTER's) footprint and inside
    BEFORE."""
    steps = np.linspace(0.0, 1.0, OUTLINE_POINTS_PER_EDGE)
    cols = np.concatenate([steps, np.ones_like(steps), steps[::-1], np.zeros_like(steps)]) * after.width
    rows = np.concatenate([np.zeros_like(steps), steps, np.ones_like(steps), steps[::-1]]) * after.height
    xs, ys = after.transform @ (cols, rows)
    if after.crs != before.crs:
        xs, ys = transform_coordinates(after.crs, before.crs, xs, ys)
    before_cols, before_rows = ~before.transform @ (np.asarray(xs), np.asarray(ys))
    col_start = max(0, math.ceil(before_cols.min() - GRID_TOLERANCE_PX))
    row_start = max(0, math.ceil(before_rows.min() - GRID_TOLERANCE_PX))
    col_end = min(before.width, math.floor(before_cols.max() + GRID_TOLERANCE_PX))
    row_end = min(before.height, math.floor(before_rows.max() + GRID_TOLERANCE_PX))
    return Window(col_start, row_start, max(0, col_end - col_start), max(0, row_end - row_start))


def _common_window(first: Window, second: Window) -> Window:
    """Where two windows of one grid overlap (empty when they do not)."""
    col_start, row_start = max(first.col_off, second.col_off), max(first.row_off, second.row_off)
    col_end = min(first.col_off + first.width, second.col_off + second.width)
    row_end = min(first.row_off + first.height, second.row_off + second.height)
    return Window(col_start, row_start, max(0, col_end - col_start), max(0, row_end - row_start))


def _whole_pixel_offset(before, after) -> tuple[int, int] | None:
    """(columns, rows) to add to an AFTER pixel to get the BEFORE pixel over the same ground, when the two grids
    share CRS, resolution and orientation and differ by whole pixels; otherwise None (resampling is needed)."""
    if before.crs != after.crs:
        return None
    relative = ~before.transform @ after.transform
    if max(abs(relative.a - 1), abs(relative.b), abs(relative.d), abs(relative.e - 1)) > 1e-9:
        return None
    offset = (round(relative.c), round(relative.f))
    if max(abs(relative.c - offset[0]), abs(relative.f - offset[1])) > GRID_TOLERANCE_PX:
        return None
    return offset


@dataclass
class _DateSource:
    """Where one date's pixels on the first date's grid are read: a dataset (or warped VRT), its bands, and the shift
    from that grid to the dataset's."""

    dataset: object
    bands: list[int]
    col_shift: int = 0
    row_shift: int = 0
    alpha_band: int | None = None  # a warped VRT's alpha band: validity comes with the same warp

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bands, H, W) values and the (H, W) validity of `window` on the first date's grid."""
        with gdal_complaints_as_errors(getattr(self.dataset, "src_dataset", self.dataset).name, "raster"):
            return self._read(window, out_shape)

    def _read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        window = Window(window.col_off - self.col_shift, window.row_off - self.row_shift, window.width, window.height)
        shape = None if out_shape is None else (len(self.bands), *out_shape)
        decimation = Resampling.nearest
        if self.alpha_band is not None:
            stacked_shape = None if shape is None else (len(self.bands) + 1, *out_shape)
            stacked = self.dataset.read([*self.bands, self.alpha_band], window=window, out_shape=stacked_shape,
                                        resampling=decimation)
            values, valid = stacked[:-1], stacked[-1] > 0
        else:
            values = self.dataset.read(self.bands, window=window, out_shape=shape, resampling=decimation)
            valid = self.dataset.dataset_mask(window=window, out_shape=out_shape, resampling=decimation) > 0
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values).all(axis=0)
        return values, valid

    @property
    def is_eight_bit(self) -> bool:
        """Whether the date's values are bytes already (used as they are, not stretched)."""
        return self.dataset.dtypes[self.bands[0] - 1] == "uint8"


def _check_raster_list(rasters) -> None:
    if isinstance(rasters, (str, os.PathLike)):
        raise SceneInputError(f"rasters: expected a list of two or more raster paths, oldest first; got one path, "
                              f"{rasters}")
    if len(rasters) < 2:
        raise SceneInputError(f"a scene needs two or more rasters (BEFORE AFTER, or DATE1 ... DATEN oldest first); "
                              f"got {len(rasters)}")


class SceneSeries:
    """The dates of a scene, oldest first, read on the first date's pixel grid and restricted to their common overlap.

    Use as a context manager (it holds open datasets). Attributes: `names` (how messages name the dates: BEFORE and
    AFTER for a pair, DATE1 ... DATEN for a series), `dates` (where each date is read), `window` (the overlap on the
    first date's grid), `height` and `width` (that grid), `crs` and `transform` (the georeferencing of the output
    grid; `crs` is None when no raster has one), `alignment` (how the later dates were put on the first one's grid,
    in words) and `bands` (each date's band numbers).

    Args:
        rasters (`list[str | os.PathLike]`): two or more rasters, oldest first; the first one's grid is the output
            grid.
        bands (`list[int]`, *optional*): band numbers used for every raster (see [`rgb_bands`]).
        assume_aligned (`bool`): accept rasters without CRS, taking their pixel grids as identical from the
            top-left corner.
        resampling (`str`): how later dates are resampled onto the first one's grid (a `rasterio.enums.Resampling`
            name).
    """

    def __init__(
        self,
        rasters: list[str | os.PathLike],
        bands: list[int] | None = None,
        assume_aligned: bool = False,
        resampling: str = "bilinear",
    ):
        _check_raster_list(rasters)
        self.names = date_names(len(rasters))
        self._stack = contextlib.ExitStack()
        try:
            self._open(rasters, bands, assume_aligned, resampling)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, paths, bands, assume_aligned, resampling) -> None:
        datasets = [self._stack.enter_context(open_raster(path, name)) for path, name in zip(paths, self.names)]
        self.bands = [rgb_bands(dataset, name, bands) for dataset, name in zip(datasets, self.names)]
        first = datasets[0]
        self.height, self.width = first.height, first.width
        missing_crs = [f"{name} ({data.name})" for name, data in zip(self.names, datasets) if not data.crs]
        if missing_crs and not assume_aligned:
            raise SceneInputError(
                f"{' and '.join(missing_crs)} {'has' if len(missing_crs) == 1 else 'have'} no CRS, so "
                f"{', '.join(self.names[1:])} cannot be placed on {self.names[0]}'s grid nor the result on a map; "
                "georeference the raster(s), or pass --assume-aligned if all share one pixel grid from the "
                "top-left corner"
            )
        if missing_crs:
            check_assumed_alignment(self.names, datasets)
            # Pixel (r, c) of one is pixel (r, c) of the others; the first raster with a CRS places the result.
            georeferenced = next((data for data in datasets if data.crs), first)
            self.crs, self.transform = georeferenced.crs, georeferenced.transform
            self.window = Window(0, 0, min(data.width for data in datasets), min(data.height for data in datasets))
            self.dates = [_DateSource(data, date_bands) for data, date_bands in zip(datasets, self.bands)]
            self.alignment = "pixel grids assumed aligned (--assume-aligned)"
            return
        self.crs, self.transform = first.crs, first.transform
        self.window = Window(0, 0, first.width, first.height)
        self.dates, alignments = [_DateSource(first, self.bands[0])], []
        for name, data, date_bands in zip(self.names[1:], datasets[1:], self.bands[1:]):
            self.window = _common_window(self.window, _overlap_on_first_grid(first, data))
            if self.window.width == 0 or self.window.height == 0:
                shared = " and ".join(self.names[: len(alignments) + 1])
                earlier = f" inside the area {shared} share" if alignments else ""
                raise SceneInputError(
                    f"{self.names[0]} ({first.name}) and {name} ({data.name}) do not overlap{earlier}: "
                    f"{self.names[0]} covers {tuple(first.bounds)} in {first.crs}, {name} covers "
                    f"{tuple(data.bounds)} in {data.crs}"
                )
            source, alignment = self._on_first_grid(first, data, date_bands, resampling)
            self.dates.append(source)
            alignments.append(f"{name}: {alignment}")
        self.alignment = "; ".join(alignments)

    def _on_first_grid(self, first, data, bands, resampling) -> tuple["_DateSource", str]:
        """Where a later date is read on the first date's grid (shifted windows or a warped VRT), and how, in words."""
        offset = _whole_pixel_offset(first, data)
        if offset is not None:
            source = _DateSource(data, bands, col_shift=offset[0], row_shift=offset[1])
            return source, "same grid" if offset == (0, 0) else f"same grid, shifted by {offset} pixels"
        try:
            resampling_method = Resampling[resampling]
        except KeyError:
            raise SceneInputError(f"--resampling {resampling!r}: expected one of nearest, bilinear, cubic") from None
        vrt = self._stack.enter_context(
            WarpedVRT(
                data, crs=first.crs, transform=first.transform, width=first.width, height=first.height,
                resampling=resampling_method, **warp_validity(data),
            )
        )
        return (_DateSource(vrt, bands, alpha_band=alpha_band(vrt)),
                f"resampled onto {self.names[0]}'s grid ({resampling})")

    def __enter__(self) -> "SceneSeries":
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def close(self) -> None:
        """Close the datasets."""
        self._stack.close()

    def stretch_ranges(
        self,
        percentiles: tuple[float, float] = HIGH_BIT_DEPTH_PERCENTILES,
        value_range: tuple[float, float] | None = None,
    ) -> list[tuple[float, float] | None]:
        """The value range each date is stretched from to 8 bits, oldest first; None for 8-bit data (used as it is).

        Each date gets its own range, measured on a decimated read of the overlap (valid pixels, all bands
        together), so a radiometric offset between the dates does not read as change, and every tile of a date
        shares one stretch.

        Args:
            percentiles (`tuple[float, float]`): the percentiles mapped to 0 and 255.
            value_range (`tuple[float, float]`, *optional*): a fixed range for every date instead.
        """
        scale = min(1.0, STRETCH_SAMPLE_SIZE / max(self.window.width, self.window.height))
        sample_shape = (max(1, round(self.window.height * scale)), max(1, round(self.window.width * scale)))
        ranges = []
        for name, source in zip(self.names, self.dates):
            if source.is_eight_bit:
                ranges.append(None)
            elif value_range is not None:
                ranges.append(tuple(value_range))
            else:
                values, valid = source.read(self.window, out_shape=sample_shape)
                if not valid.any():
                    raise SceneInputError(f"{name} ({source.dataset.name}) has no valid pixels in the overlap")
                low, high = np.percentile(values[:, valid].astype(np.float64), percentiles)
                ranges.append((float(low), float(high)))
        return ranges

    def read_rgb(
        self, window: Window, stretch: list[tuple[float, float] | None]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """One window of every date as the model sees it.

        Args:
            window (`Window`): on the first date's grid.
            stretch: the dates' value ranges from [`stretch_ranges`].

        Returns:
            `(images, valid)`: one uint8 image per date, oldest first, (H, W, 3) or (H, W), with pixels that are
            nodata in any date set to 0 in all (so they look unchanged); and the (H, W) boolean validity.
        """
        images, valid = [], None
        for source, value_range in zip(self.dates, stretch, strict=True):
            values, source_valid = source.read(window)
            valid = source_valid if valid is None else valid & source_valid
            images.append(values if value_range is None else stretch_to_uint8(values, value_range=value_range))
        images = [np.where(valid, image, 0).astype(np.uint8) for image in images]
        return [image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1) for image in images], valid


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Args:
        index (`int`): position in row-major order.
        window (`Window`): the pixels captioned, on the first date's grid.
        owned (`Window`): the part of `window` this tile answers for in the mask mosaic and polygons: where tiles
            overlap, each pixel belongs to the tile whose centre is nearer.
    """

    index: int
    window: Window
    owned: Window


def _axis_starts(start: int, length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [start]
    starts = list(range(start, start + length - tile + 1, stride))
    if starts[-1] + tile < start + length:
        starts.append(start + length - tile)  # the last tile moves back to end on the edge instead of padding
    return starts


def _ownership_bounds(starts: list[int], tile: int) -> list[int]:
    ends = [start + tile for start in starts]
    return [starts[0]] + [(start + end) // 2 for start, end in zip(starts[1:], ends[:-1])] + [ends[-1]]


class TileGrid:
    """Tiles of `tile_size` pixels covering `window`, `overlap` pixels shared between neighbours.

    Tiles are generated on demand (memory does not grow with the scene). A window narrower than a tile gives one
    tile of the window's size along that side.

    Args:
        window (`Window`): the area to tile (integer offsets and sizes).
        tile_size (`int`): tile side in pixels.
        overlap (`int`): pixels shared by neighbouring tiles, `0 <= overlap < tile_size`.
    """

    def __init__(self, window: Window, tile_size: int, overlap: int = 0):
        if tile_size < 1:
            raise SceneInputError(f"--tile-size must be a positive number of pixels, got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise SceneInputError(
                f"--overlap must be at least 0 and less than --tile-size ({tile_size}), got {overlap}"
            )
        stride = tile_size - overlap
        self.tile_height = min(tile_size, int(window.height))
        self.tile_width = min(tile_size, int(window.width))
        self.row_starts = _axis_starts(int(window.row_off), int(window.height), tile_size, stride)
        self.col_starts = _axis_starts(int(window.col_off), int(window.width), tile_size, stride)
        self.row_bounds = _ownership_bounds(self.row_starts, self.tile_height)
        self.col_bounds = _ownership_bounds(self.col_starts, self.tile_width)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Tile]:
        for row_index, row in enumerate(self.row_starts):
            for col_index, col in enumerate(self.col_starts):
                row_lo, row_hi = self.row_bounds[row_index : row_index + 2]
                col_lo, col_hi = self.col_bounds[col_index : col_index + 2]
                yield Tile(
                    index=row_index * len(self.col_starts) + col_index,
                    window=Window(col, row, self.tile_width, self.tile_height),
                    owned=Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo),
                )


def _ring_area(ring: list) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2.0


def _rfc7946_polygon(geometry: dict) -> dict:
    """Round a WGS84 polygon's coordinates and orient its rings as RFC 7946 asks (outer counter-clockwise, holes
    clockwise)."""
    rings = []
    for position, ring in enumerate(geometry["coordinates"]):
        ring = [[round(x, COORDINATE_DECIMALS), round(y, COORDINATE_DECIMALS)] for x, y in ring]
        counter_clockwise = _ring_area(ring) > 0
        if counter_clockwise != (position == 0):
            ring.reverse()
        rings.append(ring)
    return {"type": "Polygon", "coordinates": rings}


def _window_polygon(window: Window, transform: Affine, crs) -> dict | None:
    if crs is None:
        return None
    corners = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)]
    ring = [
        transform @ (window.col_off + window.width * dc, window.row_off + window.height * dr) for dc, dr in corners
    ]
    return _rfc7946_polygon(transform_geom(crs, WGS84, {"type": "Polygon", "coordinates": [ring]}))


class _GeoJsonWriter:
    """Writes a FeatureCollection feature by feature, so the features never sit in memory together."""

    def __init__(self, file):
        self._file = file
        self._count = 0
        file.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, feature: dict) -> None:
        self._file.write((",\n" if self._count else "") + json.dumps(feature))
        self._count += 1

    def close(self, metadata: dict) -> None:
        # A foreign member (RFC 7946, section 6.1): readers that do not know it ignore it.
        self._file.write('\n], "rscc": ' + json.dumps(metadata) + "}\n")


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


def _mask_polygons(mask: np.ndarray, valid: np.ndarray, transform: Affine, crs) -> Iterator[dict]:
    for geometry, _ in shapes(mask.astype(np.uint8), mask=mask & valid, transform=transform):
        yield _rfc7946_polygon(transform_geom(crs, WGS84, geometry))


def _check_tile_size(tile_size: int) -> None:
    if tile_size < MIN_TILE_SIZE:
        raise SceneInputError(
            f"--tile-size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}: the model sees every tile resized "
            "to its input size, and smaller tiles show it nothing to describe (and a scene millions of them)"
        )


def describe_scene(
    model,
    processor,
    rasters: list[str | os.PathLike],
    out: str | os.PathLike,
    tile_size: int | None = None,
    overlap: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    bands: list[int] | None = None,
    assume_aligned: bool = False,
    resampling: str = "bilinear",
    percentiles: tuple[float, float] = HIGH_BIT_DEPTH_PERCENTILES,
    value_range: tuple[float, float] | None = None,
    min_valid_fraction: float = 0.5,
    change_masks: ChangeMaskFunction | None = None,
    polygons: bool = False,
    mask_out: str | os.PathLike | None = None,
    progress: bool = False,
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
        tile_size (`int`, *optional*): tile side in the first date's pixels; defaults to the model's input size.
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
        polygons (`bool`): also write change polygons (needs `change_masks` and a CRS).
        mask_out (`str` or `os.PathLike`, *optional*): also write the mask mosaic as a GeoTIFF on the first grid
            (1 changed, 0 unchanged, 255 nodata; needs `change_masks`).
        progress (`bool`): show a progress bar on stderr (the main process's, over every process's tiles).
        share ([`ProcessShare`], *optional*): this process's share of a data-parallel run (see `rscc.parallel`): it
            captions every `share.count`-th tile not done yet into its own `OUT.partial.RANK`, and the main process
            merges the parts in tile order into the outputs once every process is done. Every process must call
            this function. A run of one process over the part files an earlier run left resumes from them too.

    Returns:
        [`SceneSummary`] on the main process; `None` on the others.
    """
    _check_raster_list(rasters)
    out = check_output_file(out, "--out", OUT_EXPECTED, inputs=rasters)
    mask_out = None if mask_out is None else check_output_file(
        mask_out, "--mask-out", "a .tif file path", inputs=[*rasters, out])
    has_masks = change_masks is not None or getattr(model.config, "use_change_head", False)
    _check_scene_options(has_masks, polygons, mask_out, batch_size, min_valid_fraction, percentiles, value_range)
    if tile_size is None:
        tile_size = processor.image_processor.size["height"]
    _check_tile_size(tile_size)

    share = ProcessShare() if share is None else share
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        scene = stack.enter_context(SceneSeries(rasters, bands, assume_aligned, resampling))
        if polygons and scene.crs is None:
            raise SceneInputError("change polygons need a CRS; no raster has one")
        stretch = scene.stretch_ranges(percentiles, value_range)
        grid = TileGrid(scene.window, tile_size, overlap)
        options = {"min_valid_fraction": min_valid_fraction, "max_new_tokens": max_new_tokens,
                   "change_masks": change_masks, "polygons": polygons, "mosaic": mask_out is not None}

        def caption_batch(batch: list[Tile]) -> list[_TileResult]:
            return _caption_tiles(model, processor, scene, batch, stretch, options)

        in_parts = share.count > 1 or bool(existing_parts(out))
        if in_parts:
            settings = {
                **options, "rasters": [Path(raster).resolve() for raster in rasters], "tile_size": tile_size,
                "raster_contents": [content_fingerprint(raster) for raster in rasters],  # a raster replaced since
                "overlap": overlap, "bands": bands, "resampling": resampling, "stretch": stretch,
                "model": getattr(model.config, "_name_or_path", None),
                "revision": getattr(model.config, "_commit_hash", None),
                # by name: the function object differs from process to process
                "change_masks": getattr(change_masks, "__qualname__", None),
            }
            _caption_into_parts(out, share, _run_id(settings), grid, caption_batch, batch_size, progress)
            if not share.is_main:
                wait_for_everyone(share)
                return None
        mosaic = None if mask_out is None else _open_mask_mosaic(stack, mask_out, scene)
        if is_geoparquet(out):
            features = stack.enter_context(geoparquet_output(out, scene.crs is not None, model))
        else:
            temporary_geojson = stack.enter_context(atomic_output(out, ".geojson"))
            features = _GeoJsonWriter(stack.enter_context(open(temporary_geojson, "w", encoding="utf-8")))
        writer = _SceneWriter(features, mosaic)
        if in_parts:
            merged = _merge_parts(out, grid, writer)
        else:
            progress_bar = stack.enter_context(tqdm(total=len(grid), unit="tile", file=sys.stderr,
                                                    disable=not progress))
            for batch in _tile_batches(grid, batch_size):
                for result in caption_batch(batch):
                    writer.add(result)
                progress_bar.update(len(batch))
        summary = SceneSummary(
            tiles=len(grid), captioned=writer.captioned, skipped=len(grid) - writer.captioned,
            changed=writer.changed, window=scene.window, alignment=scene.alignment,
        )
        writer.close(_collection_metadata(summary, scene, rasters, tile_size, overlap, stretch, has_masks))
    if in_parts:
        for part in merged:  # only once the outputs are in place
            part.unlink()
        wait_for_everyone(share)
    return summary


def _check_scene_options(has_masks, polygons, mask_out, batch_size, min_valid_fraction, percentiles, value_range):
    """Refuse `describe_scene` options that cannot work, before any raster is read."""
    if (polygons or mask_out is not None) and not has_masks:
        raise SceneInputError(
            "change polygons and the mask mosaic need per-pixel change masks, and this model has no "
            "change-detection head"
        )
    if batch_size < 1:
        raise SceneInputError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 < min_valid_fraction <= 1.0:
        raise SceneInputError(f"--min-valid-fraction must lie in (0, 1], got {min_valid_fraction}")
    if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise SceneInputError(f"--percentiles must satisfy 0 <= LOW < HIGH <= 100, got {percentiles}")
    if value_range is not None and not value_range[0] < value_range[1]:
        raise SceneInputError(f"--value-range must satisfy MIN < MAX, got {value_range}")


def _open_mask_mosaic(stack: contextlib.ExitStack, mask_out: Path, scene: SceneSeries):
    """The mask mosaic GeoTIFF on the first date's grid, written to a temporary file renamed when `stack` closes
    cleanly."""
    temporary_mask = stack.enter_context(atomic_output(mask_out, ".tif"))
    return stack.enter_context(
        cloud_optimized_geotiff(temporary_mask, width=scene.width, height=scene.height, count=1, dtype="uint8",
                                nodata=MASK_NODATA, crs=scene.crs, transform=scene.transform)
    )


@dataclass
class _TileResult:
    """What one tile adds to the outputs, the unit a process writes to its part file in a data-parallel run.

    Args:
        index (`int`): the tile's index in the grid.
        features (`list[dict]`): its GeoJSON tile feature, then its change polygons; empty for a tile skipped for
            nodata.
        changed (`bool`): its change flag.
        owned (`Window`, *optional*): the window it owns in the mask mosaic.
        owned_mask (`np.ndarray`, *optional*): the mosaic's uint8 values over `owned` (when a mosaic is written).
    """

    index: int
    features: list
    changed: bool = False
    owned: Window | None = None
    owned_mask: np.ndarray | None = None

    def to_line(self, run: str) -> str:
        """One JSON line of a part file; `run` names the settings it was made with."""
        line = {"run": run, "tile": self.index, "changed": self.changed, "features": self.features}
        if self.owned_mask is not None:
            line["owned"] = [int(self.owned.col_off), int(self.owned.row_off), *self.owned_mask.shape[::-1]]
            line["owned_mask"] = base64.b64encode(zlib.compress(self.owned_mask.tobytes())).decode("ascii")
        return json.dumps(line) + "\n"

    @classmethod
    def from_line(cls, line: dict) -> "_TileResult":
        result = cls(line["tile"], line["features"], line["changed"])
        if "owned_mask" in line:
            col, row, width, height = line["owned"]
            result.owned = Window(col, row, width, height)
            values = np.frombuffer(zlib.decompress(base64.b64decode(line["owned_mask"])), dtype=np.uint8)
            result.owned_mask = values.reshape(height, width)
        return result


def _caption_tiles(model, processor, scene: SceneSeries, batch: list[Tile], stretch, options: dict
                   ) -> list[_TileResult]:
    """Read and caption a batch of tiles (the ones with enough valid pixels) into one result per tile, in order.

    `options`: `min_valid_fraction`, `max_new_tokens`, `change_masks`, `polygons`, `mosaic` (see `describe_scene`).
    """
    read = [(tile, *scene.read_rgb(tile.window, stretch)) for tile in batch]
    kept = [(tile, dates, valid) for tile, dates, valid in read if valid.mean() >= options["min_valid_fraction"]]
    results = {tile.index: _TileResult(tile.index, []) for tile in batch}
    if kept:
        samples = [dates for _, dates, _ in kept]
        descriptions = describe_changes(model, processor, samples, batch_size=len(kept),
                                        max_new_tokens=options["max_new_tokens"])
        if options["change_masks"] is not None:
            masks = options["change_masks"]([dates[0] for dates in samples], [dates[-1] for dates in samples])
        else:
            masks = [None if d.change_mask is None else d.change_mask > 0 for d in descriptions]
        for (tile, _, valid), description, mask in zip(kept, descriptions, masks):
            results[tile.index] = _tile_result(tile, description.caption, mask, valid, scene, options)
    return [results[tile.index] for tile in batch]


def _tile_result(tile: Tile, caption: str, mask: np.ndarray | None, valid: np.ndarray, scene: SceneSeries,
                 options: dict) -> _TileResult:
    """A captioned tile's feature, and with a mask its change polygons and mosaic values."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != valid.shape:
            raise ValueError(f"change mask of tile {tile.index} has shape {mask.shape}; expected {valid.shape}")
        changed_fraction = float(mask[valid].mean())
        change_flag, source = bool(mask[valid].any()), "mask"
    else:
        changed_fraction, change_flag, source = None, not is_no_change_caption(caption), "caption"
    result = _TileResult(tile.index, [{
        "type": "Feature",
        "id": tile.index,
        "geometry": _window_polygon(tile.window, scene.transform, scene.crs),
        "properties": {
            "kind": "tile",
            "tile": tile.index,
            "row": int(tile.window.row_off),
            "col": int(tile.window.col_off),
            "width": int(tile.window.width),
            "height": int(tile.window.height),
            "caption": caption,
            "change_flag": change_flag,
            "changed_fraction": changed_fraction,
            "change_source": source,
            "valid_fraction": round(float(valid.mean()), 6),
        },
    }], change_flag)
    if mask is None:
        return result
    # Only the part the tile owns, so that overlapping tiles neither draw a polygon twice nor overwrite each other in
    # the mosaic.
    row_start, col_start = tile.owned.row_off - tile.window.row_off, tile.owned.col_off - tile.window.col_off
    owned = (slice(row_start, row_start + tile.owned.height), slice(col_start, col_start + tile.owned.width))
    mask, valid = mask[owned], valid[owned]
    if options["polygons"]:
        transform = scene.transform @ Affine.translation(tile.owned.col_off, tile.owned.row_off)
        result.features.extend({"type": "Feature", "geometry": geometry,
                                "properties": {"kind": "change", "tile": tile.index}}
                               for geometry in _mask_polygons(mask, valid, transform, scene.crs))
    if options["mosaic"]:
        result.owned, result.owned_mask = tile.owned, np.where(valid, mask, MASK_NODATA).astype(np.uint8)
    return result


class _SceneWriter:
    """Writes tile results, in tile order, to the features file (a `_GeoJsonWriter` or a `GeoParquetWriter`) and the
    mask mosaic."""

    def __init__(self, features, mosaic):
        self._features = features
        self._mosaic = mosaic
        self.captioned = 0
        self.changed = 0

    def add(self, result: _TileResult) -> None:
        for feature in result.features:
            self._features.add(feature)
        self.captioned += bool(result.features)
        self.changed += result.changed
        if self._mosaic is not None and result.owned_mask is not None:
            self._mosaic.write(result.owned_mask, 1, window=result.owned)

    def close(self, metadata: dict) -> None:
        self._features.close(metadata)


def _tile_batches(tiles: Iterable[Tile], batch_size: int) -> Iterator[list[Tile]]:
    tiles = iter(tiles)
    while batch := list(itertools.islice(tiles, batch_size)):
        yield batch


def _run_id(settings: dict) -> str:
    """A short name of the settings a part file's tiles were made with: a rerun resumes only its own tiles."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _caption_into_parts(out: Path, share: ProcessShare, run: str, grid: TileGrid, caption_batch, batch_size: int,
                        progress: bool) -> None:
    """Caption this process's share of the tiles not in any part file into its own part (see `rscc.parallel`)."""
    if share.is_main:
        for part in existing_parts(out):
            repair_part(part)
    wait_for_everyone(share)
    done = set()
    for part in existing_parts(out):
        for number, line in read_part(part):
            if line.get("run") != run:
                raise SceneInputError(
                    f"{part}, line {number}: tiles of a run with other inputs, model or options than this one; rerun "
                    f"with the earlier ones to resume, or delete {out.name}{PARTIAL_SUFFIX}* to start again"
                )
            done.add(line["tile"])
    own, others = part_path(out, share), PartsProgress(out, share)  # the others' parts end here before any append
    wait_for_everyone(share)  # every process has read the parts before any appends to its own
    mine = share.take(tile for tile in grid if tile.index not in done)
    with appending_to_part(own, share, others, progress, len(grid), len(done), "tile") as (sink, progress_bar):
        for batch in _tile_batches(mine, batch_size):
            sink.write("".join(result.to_line(run) for result in caption_batch(batch)))
            sink.flush()
            progress_bar.update(len(batch) + others.new_lines())


def _merge_parts(out: Path, grid: TileGrid, writer: _SceneWriter) -> list[Path]:
    """Hand every part file's results to `writer` in tile order; returns the parts, to remove once written."""
    parts = existing_parts(out)
    with contextlib.ExitStack() as stack:
        # Only where each tile's line starts is kept in memory, not the lines: a scene has millions of tiles.
        where = {}
        for part in parts:
            file, offset = stack.enter_context(open(part, "rb")), 0
            for raw in file:
                where.setdefault(json.loads(raw)["tile"], (file, offset))
                offset += len(raw)
        missing = len(grid) - len(where)
        if missing:
            raise SceneInputError(f"the part files of {out} lack {missing} tile(s) at the merge; rerun the same "
                                  "command to caption them")
        for index in range(len(grid)):
            file, offset = where[index]
            file.seek(offset)
            writer.add(_TileResult.from_line(json.loads(file.readline())))
    return parts


def _collection_metadata(summary, scene, rasters, tile_size, overlap, stretch, has_masks) -> dict:
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
        "overlap": overlap,
        "tiles": summary.tiles,
        "captioned_tiles": summary.captioned,
        "skipped_tiles": summary.skipped,
        "changed_tiles": summary.changed,
        "change_source": "mask" if has_masks else "caption",
    }


def _band_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 4,3,2, got {text!r}") from None


def _check_options_take_effect(scene: SceneSeries, args) -> None:
    """Refuse options that these rasters would ignore, rather than run as if they had been applied."""
    stretch_options = [option for option, given in (("--percentiles", args.percentiles is not None),
                                                    ("--value-range", args.value_range is not None)) if given]
    every = "BEFORE and AFTER" if len(scene.dates) == 2 else f"all {len(scene.dates)} dates"
    if stretch_options and all(source.is_eight_bit for source in scene.dates):
        raise SceneInputError(f"{' and '.join(stretch_options)} stretch data deeper than 8 bits; {every} are 8-bit "
                              "and are used as they are")
    if args.assume_aligned and all(source.dataset.crs for source in scene.dates):
        raise SceneInputError(f"--assume-aligned is for rasters without a CRS; {every} have one and are aligned by "
                              "their georeferencing")


def _kept(out: str) -> str:
    """What a stopped run leaves: nothing, or the part files of a data-parallel run, which a rerun resumes from."""
    if existing_parts(Path(out)):
        return f"finished tiles are kept in {out}{PARTIAL_SUFFIX}.*; rerun the same command to resume"
    return "nothing was written"


def _run_scene(args) -> int:
    try:
        # Check the rasters and the outputs before the model loads, so bad input fails in a second.
        inputs = resolve_scene_inputs(args.rasters, args.asset, args.order)  # STAC items -> their rasters, dated
        args.rasters = [scene_input.raster for scene_input in inputs]
        check_output_file(args.out, "--out", OUT_EXPECTED, inputs=args.rasters)
        check_stac_item_output(args.stac_item, inputs, [args.out, args.mask_out])
        if args.tile_size is not None:
            _check_tile_size(args.tile_size)
        with SceneSeries(args.rasters, args.bands, args.assume_aligned, args.resampling) as scene:
            _check_options_take_effect(scene, args)
        share = current_share(args.device)
        model, processor = load_captioner(args.model, device=process_device(args.device, share),
                                          dtype=DTYPES[args.dtype])
        summary = describe_scene(
            model, processor, args.rasters, args.out, tile_size=args.tile_size, overlap=args.overlap,
            batch_size=batch_size_of(args), max_new_tokens=args.max_new_tokens, bands=args.bands,
            assume_aligned=args.assume_aligned, resampling=args.resampling,
            percentiles=HIGH_BIT_DEPTH_PERCENTILES if args.percentiles is None else tuple(args.percentiles),
            value_range=None if args.value_range is None else tuple(args.value_range),
            min_valid_fraction=args.min_valid_fraction,
            polygons=args.polygons, mask_out=args.mask_out, progress=show_progress(args), share=share,
        )
        if summary is not None and args.stac_item:
            write_run_item(args.stac_item, inputs, args.out, args.mask_out, model, summary)
    except (ValueError, OSError) as error:  # OSError: unreadable raster blocks
        print(f"rscc scene: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HubUnreachableError as error:
        print(f"rscc scene: error: {error}", file=sys.stderr)
        return EXIT_HUB
    except torch.OutOfMemoryError:
        print(f"rscc scene: error: out of memory on {args.device}; lower --batch-size ({_kept(args.out)})",
              file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt as interrupt:
        print(f"rscc scene: interrupted ({_kept(args.out)})", file=sys.stderr)
        return interrupted_exit_code(interrupt)
    if summary is None:  # a process other than the main one: the main process reports the run
        return EXIT_OK
    print(
        f"rscc scene: {summary.captioned} tile(s) captioned ({summary.changed} changed), {summary.skipped} skipped "
        f"for nodata; overlap {int(summary.window.width)} x {int(summary.window.height)} px, {summary.alignment}; "
        f"{args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "scene",
        help="caption the change between two GeoTIFF scenes (or a series), tile by tile, into GeoJSON",
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
    add_stac_arguments(parser)
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
    parser.set_defaults(run=locking_output(_run_scene))


__all__ = [
    "ChangeMaskFunction",
    "SceneInputError",
    "SceneSeries",
    "SceneSummary",
    "Tile",
    "TileGrid",
    "describe_scene",
    "open_raster",
    "rgb_bands",
]
