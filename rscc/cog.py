"""Cloud-Optimized GeoTIFF output (`rscc scene --mask-out mask.tif`).

GDAL's COG driver only copies a finished raster (it lays out overviews before full-resolution tiles), while a scene
writes its mask tile by tile. So the mask is written block by block to a tiled staging GeoTIFF next to the output,
then copied once into a COG: 512 px tiles, DEFLATE, overviews down to one tile, the nodata value kept. Overviews take
the most common of the valid values they cover (MODE: a mask's values are classes, not quantities to average; GDAL
3.10 has no MAX for overviews). Both steps stream through GDAL's block cache: memory does not grow with the scene.
"""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import rasterio
import rasterio.shutil

COG_BLOCK_SIZE = 512
COG_OPTIONS = {"BLOCKSIZE": COG_BLOCK_SIZE, "COMPRESS": "DEFLATE", "OVERVIEW_RESAMPLING": "MODE",
               "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}


@contextlib.contextmanager
def cloud_optimized_geotiff(path: str | os.PathLike, **profile) -> Iterator[rasterio.io.DatasetWriter]:
    """A raster to write window by window, turned into a COG at `path` when the block succeeds (nothing is written
    to `path` if it fails).

    Args:
        path (`str` or `os.PathLike`): the COG file.
        **profile: rasterio's creation profile (`width`, `height`, `count`, `dtype`, `crs`, `transform`, `nodata`).
    """
    path = Path(path)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".staging.tif", dir=path.parent)
    os.close(descriptor)
    try:
        with rasterio.open(staging, "w", driver="GTiff", tiled=True, blockxsize=COG_BLOCK_SIZE,
                           blockysize=COG_BLOCK_SIZE, compress="deflate", BIGTIFF="IF_SAFER", **profile) as dataset:
            yield dataset
        rasterio.shutil.copy(staging, path, driver="COG", **COG_OPTIONS)
    finally:
        Path(staging).unlink(missing_ok=True)
