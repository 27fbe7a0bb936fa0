"""GeoParquet output of `rscc scene` (`--out changes.parquet`): the GeoJSON features as a table, streamed.

GeoJSON holds a scene's features as one text document; a country-wide run has millions of tile features, which
GeoParquet keeps columnar and compressed, readable column by column and row group by row group (geopandas, DuckDB,
GDAL, QGIS). Features are buffered `ROW_GROUP_ROWS` at a time and written as a row group, so memory stays flat on any
scene.

The file follows GeoParquet 1.1: a `geo` key in the Parquet metadata names the primary column `geometry` (WKB
polygons, in OGC:CRS84 longitude/latitude: the same coordinates as the GeoJSON output, its CRS written out as
PROJJSON; null with no CRS when no raster has one) and a `bbox` covering column (per-row xmin/ymin/xmax/ymax, for
readers that filter row groups by area). Per row: `kind` (`tile` or `change`), `tile`, the tile window (`row`,
`col`, `width`, `height`), `caption`, `change_flag`, `changed_fraction`, `change_source`, `valid_fraction`, and the
`model` and `revision` that made it. The `rscc` metadata key holds the run's settings and counts (the GeoJSON's
`rscc` member).
"""

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.crs import CRS

from .output_files import atomic_output

GEOPARQUET_SUFFIXES = (".parquet", ".geoparquet")
GEOPARQUET_VERSION = "1.1.0"
ROW_GROUP_ROWS = 16_384
WKB_LITTLE_ENDIAN, WKB_POLYGON = 1, 3

_BBOX = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])
SCHEMA = pa.schema([
    ("kind", pa.dictionary(pa.int8(), pa.string())),
    ("tile", pa.int64()),
    ("row", pa.int32()),
    ("col", pa.int32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("caption", pa.string()),
    ("change_flag", pa.bool_()),
    ("changed_fraction", pa.float64()),
    ("change_source", pa.dictionary(pa.int8(), pa.string())),
    ("valid_fraction", pa.float64()),
    ("model", pa.dictionary(pa.int8(), pa.string())),
    ("revision", pa.dictionary(pa.int8(), pa.string())),
    ("geometry", pa.binary()),
    ("bbox", _BBOX),
])
# The columns that come from a feature's properties, by the same name.
PROPERTY_COLUMNS = [name for name in SCHEMA.names if name not in ("model", "revision", "geometry", "bbox")]


def is_geoparquet(path: str | os.PathLike) -> bool:
    """Whether an output path asks for GeoParquet (`.parquet`, `.geoparquet`) rather than GeoJSON."""
    return Path(path).suffix.lower() in GEOPARQUET_SUFFIXES


def polygon_wkb(geometry: dict | None) -> bytes | None:
    """A GeoJSON Polygon as little-endian ISO WKB (None stays None)."""
    if geometry is None:
        return None
    if geometry["type"] != "Polygon":
        raise ValueError(f"GeoParquet output holds polygons; got a {geometry['type']}")
    rings = geometry["coordinates"]
    parts = [struct.pack("<BII", WKB_LITTLE_ENDIAN, WKB_POLYGON, len(rings))]
    for ring in rings:
        parts.append(struct.pack("<I", len(ring)))
        parts.append(struct.pack(f"<{2 * len(ring)}d", *(value for point in ring for value in point[:2])))
    return b"".join(parts)


def _bounds(geometry: dict | None) -> dict | None:
    if geometry is None:
        return None
    xs, ys = zip(*(point[:2] for point in geometry["coordinates"][0]))
    return {"xmin": min(xs), "ymin": min(ys), "xmax": max(xs), "ymax": max(ys)}


def geo_metadata(georeferenced: bool) -> dict:
    """The GeoParquet 1.1 `geo` metadata of the output (OGC:CRS84 polygons, or null geometries without a CRS)."""
    column = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"] if georeferenced else [],
        "crs": CRS.from_string("OGC:CRS84").to_dict(projjson=True) if georeferenced else None,
        "covering": {"bbox": {key: ["bbox", key] for key in ("xmin", "ymin", "xmax", "ymax")}},
    }
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


class GeoParquetWriter:
    """Writes GeoJSON features (as `rscc scene` makes them) to a GeoParquet file, one row group per
    `row_group_rows` features.

    Args:
        path (`str` or `os.PathLike`): the file.
        georeferenced (`bool`): whether the features have geometries (the scene has a CRS).
        model (`str`, *optional*): the model's name or path, written in every row.
        revision (`str`, *optional*): the model's revision (commit), written in every row.
        row_group_rows (`int`): features per row group.
    """

    def __init__(self, path: str | os.PathLike, georeferenced: bool, model: str | None = None,
                 revision: str | None = None, row_group_rows: int = ROW_GROUP_ROWS):
        schema = SCHEMA.with_metadata({"geo": json.dumps(geo_metadata(georeferenced))})
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        self._run = {"model": model, "revision": revision}
        self._rows: list[dict] = []
        self._row_group_rows = row_group_rows
        self.rows_written = 0

    def add(self, feature: dict) -> None:
        properties = feature["properties"]
        row = {name: properties.get(name) for name in PROPERTY_COLUMNS}
        row |= self._run
        row["geometry"], row["bbox"] = polygon_wkb(feature["geometry"]), _bounds(feature["geometry"])
        self._rows.append(row)
        if len(self._rows) >= self._row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._writer.schema))
            self.rows_written += len(self._rows)
            self._rows = []

    def close(self, metadata: dict) -> None:
        """Write the last row group and the run's `metadata` (under the `rscc` key), and close the file."""
        self._flush()
        self._writer.add_key_value_metadata({"rscc": json.dumps(metadata)})
        self._writer.close()

    def abort(self) -> None:
        """Close the file after a failure (its partial content is discarded by the caller)."""
        if self._writer.is_open:
            self._writer.close()


@contextlib.contextmanager
def geoparquet_output(out: Path, georeferenced: bool, config) -> Iterator[GeoParquetWriter]:
    """A [`GeoParquetWriter`] on a temporary file renamed to `out` when the block succeeds (after `close`), naming
    the model of `config` (its `_name_or_path` and `_commit_hash`) in every row."""
    with atomic_output(out, ".parquet") as temporary:
        writer = GeoParquetWriter(temporary, georeferenced, model=getattr(config, "_name_or_path", None),
                                  revision=getattr(config, "_commit_hash", None))
        try:
            yield writer
        finally:
            writer.abort()
