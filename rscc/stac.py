"""STAC Items in and out of `rscc scene`: the inputs as catalogues hold them, the run as a catalogue entry.

    rscc scene BEFORE.json AFTER.json --asset visual --model MODEL --out changes.parquet --stac-item run.json

In: each scene input is a raster (a file or an HTTP(S) URL) or a STAC Item (a `.json` file or URL, or an item URL
of a STAC API) whose asset `--asset KEY` is read where it lies (remote rasters by GDAL range requests, see
`rscc.remote`). A date comes from an item's `datetime` (or `start_datetime`), or from a raster's TIFF date tag; the
dates must run oldest first, unless `--order time` sorts them or `--order given` keeps them as given. Items whose
footprints do not overlap are refused before any raster is opened.

Out: a STAC Item whose assets are the run's outputs (the GeoJSON or GeoParquet tiles, the mask COG), whose geometry
is the captioned overlap, and whose properties name the model, its revision, the inputs and their dates; it links
to the input items as `derived_from`.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rasterio.warp import transform_geom
from rasterio.windows import Window

from .defaults import SCENE_DATE_ORDERS
from .output_files import atomic_output, check_output_file
from .errors import read_text_file
from .geoparquet import is_geoparquet
from .imagery import SceneInputError, date_names, open_raster
from .remote import is_remote

ITEM_SUFFIXES = (".json",)
HTTP_TIMEOUT_S = 30
# Media types GDAL reads as rasters besides image/*.
RASTER_APPLICATION_TYPES = ("application/x-hdf", "application/x-hdf5", "application/x-netcdf", "application/netcdf")
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOPARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
GEOJSON_MEDIA_TYPE = "application/geo+json"
# TIFF date tags, as GDAL names them: the file's date, and the acquisition date of GDAL's IMAGERY domain.
RASTER_DATE_TAGS = (("IMAGERY", "ACQUISITIONDATETIME"), (None, "TIFFTAG_DATETIME"))


@dataclass
class SceneInput:
    """One date of a scene as the user gave it and as it is read.

    Args:
        source (`str`): the command-line argument (a raster, or a STAC Item file or URL).
        raster (`str`): what is read: a file path or an HTTP(S) URL (the item's asset for an item).
        date (`datetime`, *optional*): the acquisition date (the item's, or the raster's date tag), UTC.
        item (`pystac.Item`, *optional*): the STAC Item, when `source` is one.
    """

    source: str
    raster: str
    date: datetime | None = None
    item: object = None


def is_item_source(source: str | os.PathLike) -> bool:
    """Whether a scene input names a STAC Item rather than a raster: a `.json` file or URL, or a URL whose last part
    has no file suffix (STAC APIs serve items at `.../collections/C/items/ID`)."""
    if not is_remote(source):
        return str(source).lower().endswith(ITEM_SUFFIXES)
    last = urllib.parse.urlparse(source).path.rstrip("/").rsplit("/", 1)[-1].lower()
    return last.endswith(ITEM_SUFFIXES) or "." not in last


def _geo_package(module: str):
    """pystac or shapely, which STAC inputs and outputs need (the `geo` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SceneInputError(f"STAC items need the {module} package: pip install 'rscc[geo]'") from None


def _local_path(href: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(href).path) if href.startswith("file://") else href


def read_item(source: str, name: str):
    """A STAC Item from a file or an HTTP(S) URL, its relative asset hrefs resolved against where it was read.

    Args:
        source (`str`): the file path or URL.
        name (`str`): how errors refer to it (BEFORE, AFTER, DATE3, ...).

    Raises:
        SceneInputError: the file or URL cannot be read, is not JSON, or is not a STAC Item.
    """
    pystac = _geo_package("pystac")
    if is_remote(source):
        try:
            with urllib.request.urlopen(source, timeout=HTTP_TIMEOUT_S) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            raise SceneInputError(f"{name}: STAC item {source} could not be read: HTTP {error.code} {error.reason}"
                                  ) from None
        except (urllib.error.URLError, OSError, UnicodeDecodeError) as error:
            raise SceneInputError(f"{name}: STAC item {source} could not be read ({error})") from None
        self_href = source
    else:
        path = Path(_local_path(source))
        text, self_href = read_text_file(path), str(path.resolve())
    try:
        item = pystac.Item.from_dict(json.loads(text), href=self_href, migrate=True, preserve_dict=False)
    except (json.JSONDecodeError, pystac.STACError, KeyError, TypeError, ValueError) as error:
        raise SceneInputError(f"{name}: {source} is not a STAC Item ({type(error).__name__}: {error})") from None
    item.set_self_href(self_href)
    return item


def _is_raster_media_type(media_type: str | None) -> bool:
    if media_type is None:
        return True  # untyped: GDAL decides when it opens the asset
    media_type = media_type.lower()
    return media_type.startswith("image/") or media_type.startswith(RASTER_APPLICATION_TYPES)


def _raster_asset_keys(item) -> list[str]:
    return [key for key, asset in item.assets.items() if _is_raster_media_type(asset.media_type)]


def asset_raster(item, asset: str | None, source: str, name: str) -> str:
    """The file path or URL of an item's raster asset.

    Args:
        item (`pystac.Item`): the item.
        asset (`str`, *optional*): the asset key (`--asset`).
        source (`str`): where the item was read, for messages.
        name (`str`): how errors refer to it.

    Raises:
        SceneInputError: no `asset` key given, the item has no such asset, or the asset is not a raster.
    """
    rasters = ", ".join(_raster_asset_keys(item)) or "none"
    if asset is None:
        raise SceneInputError(f"{name}: {source} is a STAC item; choose the asset to read with --asset KEY (its "
                              f"raster assets: {rasters})")
    if asset not in item.assets:
        raise SceneInputError(f"{name}: STAC item {source} has no asset {asset!r}; its raster assets: {rasters}")
    media_type = item.assets[asset].media_type
    if not _is_raster_media_type(media_type):
        raise SceneInputError(f"{name}: asset {asset!r} of STAC item {source} is {media_type}, not a raster (expected "
                              f"image/tiff or another image/* type); its raster assets: {rasters}")
    return _local_path(item.assets[asset].get_absolute_href())


def _item_date(item) -> datetime | None:
    date = item.datetime or item.common_metadata.start_datetime
    return None if date is None else _utc(date)


def _utc(date: datetime) -> datetime:
    return date.replace(tzinfo=timezone.utc) if date.tzinfo is None else date.astimezone(timezone.utc)


def raster_date(raster: str, name: str) -> datetime | None:
    """A raster's acquisition date from its tags (GDAL's IMAGERY domain, else the TIFF DateTime tag), UTC; None when
    it has neither."""
    with open_raster(raster, name) as dataset:
        for namespace, tag in RASTER_DATE_TAGS:
            text = dataset.tags(ns=namespace).get(tag) if namespace else dataset.tags().get(tag)
            if text:
                break
        else:
            return None
    for layout in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return _utc(datetime.strptime(text.strip().rstrip("Z"), layout))
        except ValueError:
            continue
    raise SceneInputError(f"{name}: {raster} has the date tag {tag}={text!r}, which is not a date like "
                          "2021:06:30 10:00:00")


def _check_footprints_overlap(inputs: list[SceneInput], names: list[str]) -> None:
    """Refuse items whose footprints share no area, before any of their rasters is opened (plain rasters need no
    `geo` extra: their overlap is checked on their grids)."""
    items = [(scene_input, name) for scene_input, name in zip(inputs, names)
             if scene_input.item is not None and scene_input.item.geometry is not None]
    if not items:
        return
    shape = _geo_package("shapely.geometry").shape
    shared, sharing = None, []
    for scene_input, name in items:
        footprint = shape(scene_input.item.geometry)
        if shared is not None and shared.intersection(footprint).area == 0:
            raise SceneInputError(
                f"the STAC items' footprints do not overlap: {name} ({scene_input.source}, bbox "
                f"{tuple(round(v, 6) for v in footprint.bounds)}) shares no area with {' and '.join(sharing)} (bbox "
                f"{tuple(round(v, 6) for v in shared.bounds)}); a scene needs one place seen at several dates"
            )
        shared = footprint if shared is None else shared.intersection(footprint)
        sharing.append(name)


def _ordered(inputs: list[SceneInput], names: list[str], order: str) -> list[SceneInput]:
    """The inputs oldest first: checked (`check`), sorted (`time`) or as given (`given`)."""
    if order == "given":
        return inputs
    if order == "time":
        undated = [f"{name} ({scene_input.source})" for scene_input, name in zip(inputs, names)
                   if scene_input.date is None]
        if undated:
            raise SceneInputError(f"--order time sorts by date, and {', '.join(undated)} "
                                  f"{'has' if len(undated) == 1 else 'have'} none (no STAC datetime, no date tag)")
        return sorted(inputs, key=lambda scene_input: scene_input.date)
    dated = [(name, scene_input) for name, scene_input in zip(names, inputs) if scene_input.date is not None]
    for (earlier_name, earlier), (name, later) in zip(dated, dated[1:]):
        if later.date < earlier.date:
            in_time_order = " ".join(i.source for i in sorted(inputs, key=lambda i: i.date or datetime.min.replace(
                tzinfo=timezone.utc)))
            raise SceneInputError(
                f"{name} ({later.source}, {later.date.isoformat()}) is older than {earlier_name} ({earlier.source}, "
                f"{earlier.date.isoformat()}): give the dates oldest first (here: {in_time_order}), pass --order time "
                "to sort them, or --order given to keep this order"
            )
    return inputs


def resolve_scene_inputs(sources: list[str], asset: str | None = None, order: str = "check") -> list[SceneInput]:
    """The scene's dates from rasters and STAC Items, oldest first.

    Args:
        sources (`list[str]`): raster paths or URLs, and STAC Item files or URLs (`.json`).
        asset (`str`, *optional*): the asset key read from every item (`--asset`).
        order (`str`): `check` (refuse dates out of time order), `time` (sort by date) or `given` (keep the order).

    Raises:
        SceneInputError: an item cannot be read or lacks a raster `asset`, items' footprints do not overlap, a raster
            date tag is not a date, or the dates are out of order under `check`.
    """
    if order not in SCENE_DATE_ORDERS:
        raise SceneInputError(f"--order {order!r}: expected one of {', '.join(SCENE_DATE_ORDERS)}")
    sources = [str(source) for source in sources]
    names = date_names(len(sources))
    if asset is not None and not any(is_item_source(source) for source in sources):
        raise SceneInputError(f"--asset {asset} reads an asset of STAC items, and no input is one (a .json file or URL, "
                              "or a STAC API's item URL)")
    inputs = []
    for source, name in zip(sources, names):
        if is_item_source(source):
            item = read_item(source, name)
            inputs.append(SceneInput(source, asset_raster(item, asset, source, name), _item_date(item), item))
        else:
            inputs.append(SceneInput(source, source))
    _check_footprints_overlap(inputs, names)
    for scene_input, name in zip(inputs, names):
        if scene_input.item is None:
            scene_input.date = raster_date(scene_input.raster, name)
    return _ordered(inputs, names, order)


def check_stac_item_output(path: str | None, inputs: list[SceneInput], outputs: list) -> Path | None:
    """Validate --stac-item's path before any work (see `check_output_file`)."""
    if path is None:
        return None
    return check_output_file(path, "--stac-item", "a .json file path",
                             inputs=[*(i.raster for i in inputs if not is_remote(i.raster)),
                                     *(i.source for i in inputs if not is_remote(i.source)), *outputs])


def _overlap_footprint(raster: str, window: Window) -> dict | None:
    """The outline of `window` of `raster`'s grid in WGS84, as a GeoJSON Polygon; None without a CRS."""
    with open_raster(raster, "BEFORE") as dataset:
        if dataset.crs is None:
            return None
        corners = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
        ring = [dataset.transform @ (window.col_off + window.width * dc, window.row_off + window.height * dr)
                for dc, dr in corners]
        return transform_geom(dataset.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def _relative_href(target: str | os.PathLike, item_path: Path) -> str:
    return os.path.relpath(Path(target).resolve(), item_path.resolve().parent)


def write_run_item(path: str | os.PathLike, inputs: list[SceneInput], out: str | os.PathLike,
                   mask_out: str | os.PathLike | None, config, summary, created: datetime | None = None) -> None:
    """Write a STAC Item describing a finished `rscc scene` run.

    Args:
        path (`str` or `os.PathLike`): the item file (written to a temporary file, then renamed).
        inputs (`list[SceneInput]`): the scene's dates, oldest first.
        out (`str` or `os.PathLike`): the tiles' GeoJSON or GeoParquet file (asset `changes`).
        mask_out (`str` or `os.PathLike`, *optional*): the change-mask COG (asset `change_mask`).
        config (`PretrainedConfig`): the captioning model's config (its `_name_or_path` and `_commit_hash` name it).
        summary ([`SceneSummary`]): what the run did (its overlap window gives the item's geometry).
        created (`datetime`, *optional*): when the run finished (default: now).
    """
    pystac, shape = _geo_package("pystac"), _geo_package("shapely.geometry").shape
    path = Path(path)
    created = created or datetime.now(timezone.utc)
    geometry = _overlap_footprint(inputs[0].raster, summary.window)
    dates = [scene_input.date for scene_input in inputs]
    properties = {
        "created": created.isoformat(),
        "rscc:model": getattr(config, "_name_or_path", None),
        "rscc:revision": getattr(config, "_commit_hash", None),
        "rscc:inputs": [scene_input.source for scene_input in inputs],
        "rscc:input_items": [scene_input.item.id if scene_input.item is not None else None for scene_input in inputs],
        "rscc:rasters": [scene_input.raster for scene_input in inputs],
        "rscc:dates": [None if date is None else date.isoformat() for date in dates],
        "rscc:tiles": summary.tiles,
        "rscc:captioned_tiles": summary.captioned,
        "rscc:changed_tiles": summary.changed,
    }
    known = [date for date in dates if date is not None]
    if known:
        properties |= {"start_datetime": min(known).isoformat(), "end_datetime": max(known).isoformat()}
    item = pystac.Item(id=path.stem, geometry=geometry, bbox=None if geometry is None else list(shape(geometry).bounds),
                       datetime=None if known else created, properties=properties)
    item.add_asset("changes", pystac.Asset(
        href=_relative_href(out, path), title="captioned tiles (and change polygons)", roles=["data"],
        media_type=GEOPARQUET_MEDIA_TYPE if is_geoparquet(out) else GEOJSON_MEDIA_TYPE))
    if mask_out is not None:
        item.add_asset("change_mask", pystac.Asset(
            href=_relative_href(mask_out, path), title="change mask (1 changed, 0 unchanged, 255 nodata)",
            media_type=COG_MEDIA_TYPE, roles=["data"]))
    for scene_input in inputs:
        if scene_input.item is not None:
            item.add_link(pystac.Link("derived_from", scene_input.item.get_self_href(), pystac.MediaType.JSON))
    with atomic_output(path, ".json") as temporary:
        temporary.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n", encoding="utf-8")
