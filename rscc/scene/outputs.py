"""The outputs of `rscc scene`, and the unit they are written from.

A captioned tile becomes a [`TileResult`]: its GeoJSON features (the tile, then its change polygons) and its part
of the mask mosaic. Results reach every output in tile order through [`SceneOutputs`]. Each output is a
[`SceneOutput`] (`add(result)` per tile, `close(metadata)` once), written to a temporary file renamed into place
when the run succeeds; a new output format is one more class here and one line in [`open_outputs`].
"""

import base64
import contextlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Protocol

import numpy as np
from affine import Affine
from rasterio.features import shapes
from rasterio.warp import transform_geom
from rasterio.windows import Window

from ..caption_text import is_no_change_caption
from ..cog import cloud_optimized_geotiff
from ..geoparquet import geoparquet_output, is_geoparquet
from ..output_files import atomic_output
from .alignment import SceneSeries
from .tiling import Tile

COORDINATE_DECIMALS = 7  # about 1 cm
WGS84 = "EPSG:4326"
MASK_NODATA = 255  # the mask mosaic's value outside the overlap, in nodata and in skipped tiles
OUT_EXPECTED = "a .geojson or .parquet file path"  # what --out takes, for messages


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


def window_polygon(window: Window, transform: Affine, crs) -> dict | None:
    if crs is None:
        return None
    corners = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)]
    ring = [
        transform @ (window.col_off + window.width * dc, window.row_off + window.height * dr) for dc, dr in corners
    ]
    return _rfc7946_polygon(transform_geom(crs, WGS84, {"type": "Polygon", "coordinates": [ring]}))


def mask_polygons(mask: np.ndarray, valid: np.ndarray, transform: Affine, crs) -> Iterator[dict]:
    """The changed areas of a tile's mask as RFC 7946 polygons (`transform`: the mask's pixel grid)."""
    for geometry, _ in shapes(mask.astype(np.uint8), mask=mask & valid, transform=transform):
        yield _rfc7946_polygon(transform_geom(crs, WGS84, geometry))


class Georeference(NamedTuple):
    """The output grid's georeferencing (the first date's): what a tile's outline and polygons are placed with.

    Args:
        transform (`Affine`): pixel to CRS coordinates.
        crs (`rasterio.crs.CRS`, *optional*): None for rasters without one (features then have no geometry).
    """

    transform: Affine
    crs: object


@dataclass
class TileResult:
    """What one tile adds to the outputs, the unit a process writes to its part file (see `rscc.parallel.PartFiles`).

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

    def to_dict(self) -> dict:
        """The result as JSON values (the mask mosaic's values compressed), read back by [`from_line`]."""
        line = {"tile": self.index, "changed": self.changed, "features": self.features}
        if self.owned_mask is not None:
            line["owned"] = [int(self.owned.col_off), int(self.owned.row_off), *self.owned_mask.shape[::-1]]
            line["owned_mask"] = base64.b64encode(zlib.compress(self.owned_mask.tobytes())).decode("ascii")
        return line

    def to_line(self, run: str) -> str:
        """One JSON line of a part file; `run` names the settings it was made with."""
        return json.dumps({"run": run, **self.to_dict()}) + "\n"

    @classmethod
    def from_line(cls, line: dict) -> "TileResult":
        result = cls(line["tile"], line["features"], line["changed"])
        if "owned_mask" in line:
            col, row, width, height = line["owned"]
            result.owned = Window(col, row, width, height)
            values = np.frombuffer(zlib.decompress(base64.b64decode(line["owned_mask"])), dtype=np.uint8)
            result.owned_mask = values.reshape(height, width)
        return result


def tile_result(tile: Tile, caption: str, mask: np.ndarray | None, valid: np.ndarray, grid: Georeference,
                polygons: bool, mosaic: bool) -> TileResult:
    """A captioned tile's feature, and with a mask its change polygons (`polygons`) and mosaic values (`mosaic`)."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != valid.shape:
            raise ValueError(f"change mask of tile {tile.index} has shape {mask.shape}; expected {valid.shape}")
        changed_fraction = float(mask[valid].mean())
        change_flag, source = bool(mask[valid].any()), "mask"
    else:
        changed_fraction, change_flag, source = None, not is_no_change_caption(caption), "caption"
    result = TileResult(tile.index, [{
        "type": "Feature",
        "id": tile.index,
        "geometry": window_polygon(tile.window, grid.transform, grid.crs),
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
    if polygons:
        transform = grid.transform @ Affine.translation(tile.owned.col_off, tile.owned.row_off)
        result.features.extend({"type": "Feature", "geometry": geometry,
                                "properties": {"kind": "change", "tile": tile.index}}
                               for geometry in mask_polygons(mask, valid, transform, grid.crs))
    if mosaic:
        result.owned, result.owned_mask = tile.owned, np.where(valid, mask, MASK_NODATA).astype(np.uint8)
    return result


class SceneOutput(Protocol):
    """One output of a scene run: every tile's result in tile order, then the run's metadata."""

    def add(self, result: TileResult) -> None: ...

    def close(self, metadata: dict) -> None: ...


class GeoJsonOutput:
    """The GeoJSON FeatureCollection (RFC 7946), written feature by feature so the features never sit in memory
    together; the run's metadata is its `rscc` member."""

    def __init__(self, stack: contextlib.ExitStack, path: Path):
        temporary = stack.enter_context(atomic_output(path, ".geojson"))
        self._file = stack.enter_context(open(temporary, "w", encoding="utf-8"))
        self._count = 0
        self._file.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, result: TileResult) -> None:
        for feature in result.features:
            self._file.write((",\n" if self._count else "") + json.dumps(feature))
            self._count += 1

    def close(self, metadata: dict) -> None:
        # A foreign member (RFC 7946, section 6.1): readers that do not know it ignore it.
        self._file.write('\n], "rscc": ' + json.dumps(metadata) + "}\n")


class GeoParquetOutput:
    """The features as GeoParquet, streamed in row groups (see `rscc.geoparquet`); the run's metadata is its `rscc`
    key."""

    def __init__(self, stack: contextlib.ExitStack, path: Path, scene: SceneSeries, config):
        self._writer = stack.enter_context(geoparquet_output(path, scene.crs is not None, config))

    def add(self, result: TileResult) -> None:
        for feature in result.features:
            self._writer.add(feature)

    def close(self, metadata: dict) -> None:
        self._writer.close(metadata)


class MaskMosaicOutput:
    """The change-mask mosaic, a Cloud-Optimized GeoTIFF on the first date's grid (see `rscc.cog`): 1 changed,
    0 unchanged, `MASK_NODATA` outside the overlap, in nodata and in skipped tiles."""

    def __init__(self, stack: contextlib.ExitStack, path: Path, scene: SceneSeries):
        temporary = stack.enter_context(atomic_output(path, ".tif"))
        self._mosaic = stack.enter_context(
            cloud_optimized_geotiff(temporary, width=scene.width, height=scene.height, count=1, dtype="uint8",
                                    nodata=MASK_NODATA, crs=scene.crs, transform=scene.transform)
        )

    def add(self, result: TileResult) -> None:
        if result.owned_mask is not None:
            self._mosaic.write(result.owned_mask, 1, window=result.owned)

    def close(self, metadata: dict) -> None:
        """Nothing to add: the mosaic is closed (and renamed) with the run's stack."""


class SceneOutputs:
    """Every output of a run, fed tile results in tile order, counting the captioned and changed tiles."""

    def __init__(self, outputs: list[SceneOutput]):
        self._outputs = outputs
        self.captioned = 0
        self.changed = 0

    def add(self, result: TileResult) -> None:
        for output in self._outputs:
            output.add(result)
        self.captioned += bool(result.features)
        self.changed += result.changed

    def close(self, metadata: dict) -> None:
        for output in self._outputs:
            output.close(metadata)


def open_outputs(stack: contextlib.ExitStack, scene: SceneSeries, out: Path, mask_out: Path | None,
                 config) -> SceneOutputs:
    """The run's outputs, each renamed into place when `stack` closes without an error (removed otherwise): GeoJSON,
    or GeoParquet for a `.parquet` `out` (naming the model of `config` in every row), and the mask mosaic."""
    outputs: list[SceneOutput] = []
    if mask_out is not None:
        outputs.append(MaskMosaicOutput(stack, mask_out, scene))
    outputs.append(GeoParquetOutput(stack, out, scene, config) if is_geoparquet(out) else GeoJsonOutput(stack, out))
    return SceneOutputs(outputs)


__all__ = [
    "GeoJsonOutput",
    "Georeference",
    "GeoParquetOutput",
    "MASK_NODATA",
    "MaskMosaicOutput",
    "OUT_EXPECTED",
    "SceneOutput",
    "SceneOutputs",
    "TileResult",
    "mask_polygons",
    "open_outputs",
    "tile_result",
    "window_polygon",
]
