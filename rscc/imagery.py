"""Reading image and raster files: the one reader behind `rscc caption`, `rscc data` and `rscc scene`.

`rscc.image_processing_rscc.load_image` reads image files with Pillow, which decodes 16-bit colour PNG and TIFF into
their high bytes (a black image) and cannot open band-interleaved or GDAL-written multi-band TIFFs; it reads those files
with GDAL (rasterio, `read_full_depth` there), choosing bands as `rscc scene` does by default (`default_rgb_bands`).
"""

import os
import warnings
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from .errors_rscc import RsccInputError
from .image_processing_rscc import default_rgb_bands


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


__all__ = ["SceneInputError", "open_raster", "rgb_bands"]
