"""Rasters read where they lie: local files, or HTTP(S) URLs read through GDAL's range reads (`/vsicurl/`), so a
window of a Cloud-Optimized GeoTIFF costs a few requests, never a download of the file."""

import os
import warnings

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from .imagery import SceneInputError

REMOTE_SCHEMES = ("http://", "https://")
# Without it GDAL lists the URL's "folder" and probes for sidecar files (.aux.xml, .ovr, .msk) on every open: a dozen
# requests, each a 404 on object stores and static servers.
REMOTE_OPEN_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def is_remote(source: str | os.PathLike) -> bool:
    """Whether `source` is an HTTP(S) URL (kept a string: `Path` would fold its `//`)."""
    return isinstance(source, str) and source.lower().startswith(REMOTE_SCHEMES)


def open_remote_raster(url: str, name: str) -> rasterio.io.DatasetReader:
    """Open a raster over HTTP(S) with range reads; an unreachable URL or a non-raster is a [`SceneInputError`] naming
    `name` and the URL.

    Args:
        url (`str`): an `http://` or `https://` URL.
        name (`str`): how errors refer to it (BEFORE, AFTER, DATE3, ...).
    """
    try:
        with rasterio.Env(**REMOTE_OPEN_OPTIONS), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(f"/vsicurl/{url}")
    except RasterioIOError as error:
        raise SceneInputError(f"{name}: {url} could not be read as a raster over HTTP ({error})") from None
