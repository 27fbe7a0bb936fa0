"""Reading image and raster files: the one reader behind `rscc caption`, `rscc data` and `rscc scene`.

`rscc.processing_rscc.load_image` reads image files with Pillow, which decodes 16-bit colour PNG and TIFF into their
high bytes (a black image) and cannot open band-interleaved or GDAL-written multi-band TIFFs. It hands those files to
`read_full_depth`, which reads them with GDAL (rasterio), as `rscc scene` reads its rasters; the values then take the
processor's one stretch of deep imagery to 8 bits. Importing this module installs that reader.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from . import processing_rscc
from .processing_rscc import RsccInputError


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
    interpretation = list(dataset.colorinterp)
    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(colour in interpretation for colour in rgb):
        return [interpretation.index(colour) + 1 for colour in rgb]
    not_alpha = [index + 1 for index, colour in enumerate(interpretation) if colour != ColorInterp.alpha]
    return not_alpha[:3] if len(not_alpha) >= 3 else not_alpha[:1]


def read_full_depth(path: str | os.PathLike, name: str) -> np.ndarray:
    """A whole image file as GDAL reads it: its RGB bands (or grey band) at full depth, `(H, W, 3)` or `(H, W)`.

    Args:
        path (`str` or `os.PathLike`): the image file.
        name (`str`): how errors refer to it.

    Raises:
        SceneInputError: GDAL cannot read it either, or it is larger than Pillow's decompression-bomb limit.
    """
    with open_raster(path, name) as dataset:
        if dataset.width * dataset.height > 2 * (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise SceneInputError(
                f"{name}: image file {path} of {dataset.width} x {dataset.height} pixels is too large to read whole; "
                "caption large rasters tile by tile with `rscc scene`"
            )
        try:
            values = dataset.read(rgb_bands(dataset, name))
        except RasterioIOError as error:
            raise SceneInputError(f"{name}: cannot read the pixels of {path} ({error})") from None
    return values[0] if values.shape[0] == 1 else np.moveaxis(values, 0, -1)


processing_rscc.full_depth_reader = read_full_depth

__all__ = ["SceneInputError", "open_raster", "read_full_depth", "rgb_bands"]
