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
polygons and a Cloud-Optimized GeoTIFF mosaic of the mask on the first date's grid can be written; without one the
flag comes from the caption (`rscc.caption_text.is_no_change_caption`) and the fraction is null.

Modules: `alignment` (the dates on the first one's grid), `tiling` (the tile grid), `outputs` (GeoJSON, GeoParquet,
mask mosaic: where an output format is added), `describe` (captioning the tiles, [`SceneOptions`], and
[`caption_scene`] with a [`TileCaptioner`]: what captions the tiles); the `rscc scene` command is
`rscc.commands.scene`. The tiles captioned on Ray Data: `rscc.ray_scene`. STAC Items in and out: `rscc.stac`; rasters
over HTTP: `rscc.remote`.
"""

from ..imagery import SceneInputError, open_raster, rgb_bands
from .alignment import SceneSeries
from .describe import ChangeMaskFunction, SceneOptions, SceneSummary, TileCaptioner, caption_scene, describe_scene
from .tiling import Tile, TileGrid

__all__ = [
    "ChangeMaskFunction",
    "SceneInputError",
    "SceneOptions",
    "SceneSeries",
    "SceneSummary",
    "Tile",
    "TileCaptioner",
    "TileGrid",
    "caption_scene",
    "describe_scene",
    "open_raster",
    "rgb_bands",
]
