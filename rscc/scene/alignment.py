"""Raster alignment: the dates of a scene read on the first date's pixel grid, restricted to their common overlap.

Every later date is put on the first one's grid: with shifted windows when the grids differ by whole pixels only,
else through a GDAL warped VRT (CRS, resolution or origin differ). Reads go window by window; each date's
high-bit-depth values get one 8-bit stretch, measured on a decimated read of the overlap.
"""

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_coordinates
from rasterio.windows import Window

from ..imagery import (
    SceneInputError,
    alpha_band,
    check_assumed_alignment,
    date_names,
    gdal_complaints_as_errors,
    open_raster,
    rgb_bands,
    warp_validity,
)
from ..image_processing_rscc import HIGH_BIT_DEPTH_PERCENTILES, stretch_to_uint8

# Longest side of the decimated read that measures a high-bit-depth image's stretch percentiles.
STRETCH_SAMPLE_SIZE = 1024
# Densification of a later date's outline: reprojected straight edges bend.
OUTLINE_POINTS_PER_EDGE = 33
# Below this, a fractional pixel offset between the grids is rounding noise, not misregistration.
GRID_TOLERANCE_PX = 1e-3


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


def check_raster_list(rasters) -> None:
    """Refuse a single path or fewer than two rasters, before any is opened."""
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
        check_raster_list(rasters)
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


__all__ = ["SceneSeries", "check_raster_list"]
