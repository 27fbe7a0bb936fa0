"""Reading image and raster files: the one reader behind `rscc caption`, `rscc data` and `rscc scene`.

`rscc.image_processing_rscc.load_image` reads image files with Pillow, which decodes 16-bit colour PNG and TIFF into
their high bytes (a black image) and cannot open band-interleaved or GDAL-written multi-band TIFFs; it reads those files
with GDAL (rasterio, `read_full_depth` there), choosing bands as `rscc scene` does by default (`default_rgb_bands`).
"""

import os
import warnings
from pathlib import Path

import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from .errors_rscc import RsccInputError
from .image_processing_rscc import default_rgb_bands, gdal_complaints_as_errors


class SceneInputError(RsccInputError):
    """A raster or scene input (raster, band choice, option or output path) is not what rscc expects."""


def date_names(count: int) -> list[str]:
    """How errors and messages name the dates of a sample, oldest first: BEFORE and AFTER for a pair, DATE1 ...
    DATEN for a series (the names the command lines use)."""
    return ["BEFORE", "AFTER"] if count == 2 else [f"DATE{index}" for index in range(1, count + 1)]


def open_raster(path: str | os.PathLike, name: str) -> rasterio.io.DatasetReader:
    """Open a raster (a file, or an HTTP(S) URL read by range requests) with rasterio, turning a missing or unreadable
    one into a [`SceneInputError`].

    Args:
        path (`str` or `os.PathLike`): the raster file.
        name (`str`): how errors refer to it (BEFORE, AFTER, DATE3, ...).
    """
    from .remote import is_remote, open_remote_raster  # remote imports this module's error type

    if is_remote(path):
        return open_remote_raster(path, name)
    path = Path(path)
    if not path.is_file():
        raise SceneInputError(f"{name}: raster file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as error:
        raise SceneInputError(f"{name}: {path} is not a raster that GDAL can read ({error})") from None


def rgb_bands(dataset, name: str, bands: list[int] | None = None) -> list[int]:
    """The 1-based bands that make the image the model sees: three (RGB) or one (grey).

    Args:
        dataset: an open rasterio dataset.
        name (`str`): how errors refer to it.
        bands (`list[int]`, *optional*): explicit band numbers. By default the bands whose colour interpretation
            is red, green and blue, else the first three bands that are not alpha, else the first band.
    """
    if bands is not None:
        out_of_range = [band for band in bands if not 1 <= band <= dataset.count]
        if len(bands) not in (1, 3) or out_of_range:
            raise SceneInputError(
                f"{name}: --bands {','.join(map(str, bands))} is not valid for a {dataset.count}-band raster; "
                f"expected three band numbers (red, green, blue) or one (grey) between 1 and {dataset.count}"
            )
        return list(bands)
    return default_rgb_bands(dataset)


def alpha_band(dataset) -> int | None:
    """The 1-based alpha band of a raster (RGBA, or any band whose colour interpretation is alpha), else None."""
    interpretation = list(dataset.colorinterp)
    return interpretation.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in interpretation else None


def warp_validity(dataset) -> dict:
    """The `WarpedVRT` options that carry a raster's validity through a warp into the VRT's alpha band: its own alpha
    band (GDAL adds no second one), else an added alpha band of the pixels the warp covers."""
    own = alpha_band(dataset)
    return {"src_alpha": own} if own else {"add_alpha": True}


def check_assumed_alignment(names: list[str], datasets: list) -> None:
    """Refuse `--assume-aligned` (rasters read pixel for pixel) where the georeferenced rasters among them contradict
    it: two CRSs, or one CRS with different pixel grids (transforms). Names both rasters.

    Args:
        names (`list[str]`): how errors refer to the rasters (BEFORE, DATE2, ...).
        datasets (`list`): the open rasterio datasets, in the same order.
    """
    georeferenced = [(name, data) for name, data in zip(names, datasets) if data.crs]
    for name, data in georeferenced[1:]:
        first_name, first = georeferenced[0]
        if data.crs != first.crs or data.transform != first.transform:
            differ = (f"is in {first.crs} and {name} ({data.name}) in {data.crs}" if data.crs != first.crs else
                      f"and {name} ({data.name}) are on different pixel grids of {data.crs} ({tuple(first.transform)[:6]}"
                      f" and {tuple(data.transform)[:6]})")
            raise SceneInputError(
                f"--assume-aligned reads the rasters pixel for pixel, but {first_name} ({first.name}) {differ}; "
                "georeferenced rasters are placed by their georeferencing. Georeference every raster and leave "
                "--assume-aligned out, or give rasters of one pixel grid"
            )


__all__ = [
    "SceneInputError",
    "alpha_band",
    "check_assumed_alignment",
    "gdal_complaints_as_errors",
    "open_raster",
    "rgb_bands",
    "warp_validity",
]
