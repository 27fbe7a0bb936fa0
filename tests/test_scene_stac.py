"""`rscc scene` the way geospatial tools hold scenes: the real xView2 pair as Cloud-Optimized GeoTIFFs, described by
STAC items, served over HTTP with range requests by a local server; GeoParquet, COG and STAC item outputs."""

import json
import select
import subprocess
import sys
from datetime import datetime, timezone

import geopandas as gpd  # pystac, shapely (the `geo` extra) and geopandas come with the `test` extra
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import rasterio.shutil
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from conftest import REPO_ROOT
from rscc.cli import EXIT_BAD_INPUT, main
from rscc.geoparquet import GeoParquetWriter
from rscc.imagery import SceneInputError, open_raster
from rscc.scene import SceneSeries
from rscc.stac import resolve_scene_inputs

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PRE_DATE, POST_DATE = datetime(2011, 5, 20, tzinfo=timezone.utc), datetime(2011, 6, 2, tzinfo=timezone.utc)
SERVER_START_S = 20
SCENE_OPTIONS = ["--tile-size", "256", "--max-new-tokens", "2", "--batch-size", "8"]


def write_item(path, raster, href, date, asset="visual", media_type=pystac.MediaType.COG, **extra_assets):
    """A STAC Item of a real raster: its footprint in WGS84, `date`, and its raster as asset `asset` at `href`."""
    with rasterio.open(raster) as dataset:
        west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    geometry = {"type": "Polygon",
                "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]}
    item = pystac.Item(id=path.stem, geometry=geometry, bbox=[west, south, east, north], datetime=date, properties={})
    item.add_asset(asset, pystac.Asset(href=href, media_type=media_type, roles=["data"]))
    for key, (extra_href, extra_type) in extra_assets.items():
        item.add_asset(key, pystac.Asset(href=extra_href, media_type=extra_type, roles=["metadata"]))
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


@pytest.fixture(scope="module")
def served(shared_data, tmp_path_factory):
    """The real pre/post chips (and a far pre chip) as COGs in a folder served on 127.0.0.1 with range requests."""
    folder = tmp_path_factory.mktemp("served")
    chips = shared_data / "geotiff_xview2"
    for source, name in ((chips / "pre" / "0_pre.tif", "pre.tif"), (chips / "post" / "0_post.tif", "post.tif"),
                         (chips / "pre" / "2_pre.tif", "far_pre.tif"), (chips / "post" / "1_post.tif", "far_post.tif")):
        rasterio.shutil.copy(source, folder / name, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    (folder / "notes.json").write_text('{"not": "a raster"}')
    log = folder / "requests.log"
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "http_range_server.py"), str(folder),
                               "--log", str(log), "--lifetime", "300"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], SERVER_START_S)
        assert ready, f"the test HTTP server did not start within {SERVER_START_S} s"
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        yield folder, base, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def items(served):
    """Items of the pair: read from files with relative (file) hrefs, and over HTTP with http hrefs."""
    folder, base, _ = served
    return {
        "file": [write_item(folder / "pre_file.json", folder / "pre.tif", "./pre.tif", PRE_DATE),
                 write_item(folder / "post_file.json", folder / "post.tif", "./post.tif", POST_DATE)],
        "http": [f"{base}/{write_item(folder / f'{name}_http.json', folder / f'{name}.tif', f'{base}/{name}.tif', date).name}"
                 for name, date in (("pre", PRE_DATE), ("post", POST_DATE))],
    }


@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("with-head"), use_change_head=True)


def served_bytes(log, name):
    return sum(int(line.split()[1]) for line in log.read_text().splitlines() if line.split()[0] == f"/{name}")


def test_a_window_of_a_remote_cog_is_read_with_a_few_range_requests(served):
    folder, base, log = served
    before = served_bytes(log, "post.tif") if log.exists() else 0
    with open_raster(f"{base}/post.tif", "AFTER") as remote, rasterio.open(folder / "post.tif") as local:
        window = Window(512, 512, 256, 256)
        assert np.array_equal(remote.read(window=window), local.read(window=window))
    read = served_bytes(log, "post.tif") - before
    assert 0 < read < (folder / "post.tif").stat().st_size / 4


def test_scene_from_stac_items_over_http_to_geoparquet_cog_and_stac_item(served, items, head_checkpoint, tmp_path,
                                                                         capsys):
    folder, base, log = served
    parquet, mask, run_item = tmp_path / "out" / "changes.parquet", tmp_path / "out" / "mask.tif", tmp_path / "run.json"
    argv = ["scene", *items["http"], "--asset", "visual", "--model", str(head_checkpoint), "--out", str(parquet),
            "--mask-out", str(mask), "--stac-item", str(run_item), "--polygons", *SCENE_OPTIONS]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["changes.parquet", "mask.tif"]  # no staging left
    # The rasters were read in place by range requests, not downloaded.
    assert all(served_bytes(log, name) > 0 for name in ("pre.tif", "post.tif"))

    # The same scene from the file items, to GeoJSON: the GeoParquet holds the same features.
    geojson, file_mask = tmp_path / "changes.geojson", tmp_path / "file_mask.tif"
    argv = ["scene", *map(str, items["file"]), "--asset", "visual", "--model", str(head_checkpoint), "--out",
            str(geojson), "--mask-out", str(file_mask), "--polygons", *SCENE_OPTIONS]
    assert main(argv) == 0, capsys.readouterr().err
    collection = json.loads(geojson.read_text())
    features = collection["features"]
    table = gpd.read_parquet(parquet)
    assert table.crs.equals("OGC:CRS84") and len(table) == len(features) > 16  # 16 tiles and change polygons
    assert list(table["kind"]) == [f["properties"]["kind"] for f in features]
    tiles = table[table["kind"] == "tile"]
    assert len(tiles) == collection["rscc"]["tiles"] == 16
    tile_features = [f["properties"] for f in features if f["properties"]["kind"] == "tile"]
    assert list(tiles["caption"]) == [p["caption"] for p in tile_features]
    assert list(tiles["change_flag"]) == [p["change_flag"] for p in tile_features]
    assert list(tiles["changed_fraction"]) == [p["changed_fraction"] for p in tile_features]
    assert list(tiles["col"]) == [p["col"] for p in tile_features]
    assert list(table["tile"]) == [f["properties"]["tile"] for f in features]
    expected = gpd.GeoDataFrame.from_features(features, crs="OGC:CRS84")
    assert table.geometry.geom_equals_exact(expected.geometry, tolerance=1e-9).all()
    assert (tiles["changed_fraction"].between(0, 1)).all() and (tiles["valid_fraction"] > 0.9).all()
    assert set(table["model"]) == {str(head_checkpoint)} and table["revision"].isna().all()
    boxes = pq.read_table(parquet, columns=["bbox"]).column("bbox").to_pylist()  # geopandas hides the covering
    assert [box["xmin"] for box in boxes] == list(table.geometry.bounds["minx"])
    assert [box["ymax"] for box in boxes] == list(table.geometry.bounds["maxy"])
    metadata = pq.ParquetFile(parquet).metadata.metadata  # the file's key-value metadata, where readers look
    geo = json.loads(metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and geo["columns"]["geometry"]["crs"]["type"]
    rscc_metadata = json.loads(metadata[b"rscc"])
    assert rscc_metadata["rasters"] == [f"{base}/pre.tif", f"{base}/post.tif"]
    assert {key: value for key, value in rscc_metadata.items() if key != "rasters"} == {
        key: value for key, value in collection["rscc"].items() if key != "rasters"}

    with rasterio.open(mask) as cog, rasterio.open(file_mask) as from_files, rasterio.open(folder / "pre.tif") as pre:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.block_shapes == [(512, 512)] and cog.overviews(1) == [2]
        assert cog.compression.name == "deflate" and cog.nodata == 255
        assert (cog.crs, cog.transform, cog.shape) == (pre.crs, pre.transform, pre.shape)
        values = cog.read(1)
        assert set(np.unique(values)) <= {0, 1, 255} and np.array_equal(values, from_files.read(1))

    item = pystac.Item.from_file(str(run_item))
    assert item.properties["rscc:model"] == str(head_checkpoint)
    assert item.properties["rscc:inputs"] == items["http"]
    assert item.properties["rscc:dates"] == [PRE_DATE.isoformat(), POST_DATE.isoformat()]
    assert item.common_metadata.start_datetime == PRE_DATE and item.common_metadata.end_datetime == POST_DATE
    assert item.assets["changes"].get_absolute_href() == str(parquet)
    assert item.assets["changes"].media_type == "application/vnd.apache.parquet"
    assert item.assets["change_mask"].get_absolute_href() == str(mask)
    assert "cloud-optimized" in item.assets["change_mask"].media_type
    assert [link.href for link in item.get_links("derived_from")] == items["http"]
    west, south, east, north = item.bbox
    assert table.total_bounds == pytest.approx([west, south, east, north], abs=1e-6)


def test_a_stac_api_item_url_without_suffix_is_read_as_an_item(served):
    folder, base, _ = served
    (folder / "items").mkdir(exist_ok=True)
    write_item(folder / "items" / "pre", folder / "pre.tif", f"{base}/pre.tif", PRE_DATE)
    (before,) = resolve_scene_inputs([f"{base}/items/pre"], "visual")
    assert (before.raster, before.date, before.item.id) == (f"{base}/pre.tif", PRE_DATE, "pre")


def test_geoparquet_is_written_in_row_groups_as_features_come(tmp_path):
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    writer = GeoParquetWriter(tmp_path / "tiles.parquet", georeferenced=True, model="m", row_group_rows=4)
    for index in range(10):
        writer.add({"type": "Feature", "geometry": square, "properties": {"kind": "tile", "tile": index}})
        assert writer.rows_written == 4 * ((index + 1) // 4)  # buffered rows never exceed one row group
    writer.close({"tiles": 10})
    assert pq.ParquetFile(tmp_path / "tiles.parquet").metadata.num_row_groups == 3
    assert list(gpd.read_parquet(tmp_path / "tiles.parquet")["tile"]) == list(range(10))


def test_dates_put_a_series_in_time_order_or_refuse_it(served, items, tmp_path):
    pre, post = map(str, items["file"])
    assert [i.date for i in resolve_scene_inputs([pre, post], "visual")] == [PRE_DATE, POST_DATE]
    with pytest.raises(SceneInputError, match=r"BEFORE \(.*post_file.json, 2011-06-02.*\) is older|older than BEFORE"):
        resolve_scene_inputs([post, pre], "visual")
    assert [i.source for i in resolve_scene_inputs([post, pre], "visual", order="time")] == [pre, post]
    assert [i.source for i in resolve_scene_inputs([post, pre], "visual", order="given")] == [post, pre]
    # A raster's own date tag dates it too.
    folder = served[0]
    tagged = tmp_path / "tagged_pre.tif"
    rasterio.shutil.copy(folder / "pre.tif", tagged, driver="GTiff")
    with rasterio.open(tagged, "r+") as raster:
        raster.update_tags(TIFFTAG_DATETIME="2011:07:01 10:00:00")
    with pytest.raises(SceneInputError, match="older than BEFORE"):
        resolve_scene_inputs([str(tagged), post], "visual")
    assert resolve_scene_inputs([post, str(tagged)], "visual")[1].date == datetime(2011, 7, 1, 10, tzinfo=timezone.utc)


def test_bad_stac_inputs_are_refused_clearly(served, items, tmp_path, capsys):
    folder, base, _ = served
    pre, post = map(str, items["file"])
    with pytest.raises(SceneInputError,
                       match=r"BEFORE: STAC item .*pre_file.json has no asset 'nir'; its raster assets: visual$"):
        resolve_scene_inputs([pre, post], "nir")
    with pytest.raises(SceneInputError, match=r"is a STAC item; choose the asset to read with --asset"):
        resolve_scene_inputs([pre, post])
    not_raster = write_item(folder / "not_raster.json", folder / "post.tif", "./post.tif", POST_DATE,
                            metadata=("./notes.json", "application/json"))
    with pytest.raises(SceneInputError, match=r"BEFORE: asset 'metadata' of STAC item .* is application/json, not a "
                       r"raster .*; its raster assets: visual"):
        resolve_scene_inputs([str(not_raster), post], "metadata")
    untyped = write_item(folder / "untyped.json", folder / "post.tif", "./notes.json", POST_DATE, media_type=None)
    untyped_inputs = resolve_scene_inputs([pre, str(untyped)], "visual")  # untyped: GDAL decides when it opens it
    with pytest.raises(SceneInputError, match=r"AFTER: .*notes.json is not a raster that GDAL can read"):
        SceneSeries([i.raster for i in untyped_inputs])
    with pytest.raises(SceneInputError, match=r"AFTER: STAC item .*missing.json could not be read: HTTP 404"):
        resolve_scene_inputs([items["http"][0], f"{base}/missing.json"], "visual")
    gone = write_item(folder / "gone_http.json", folder / "post.tif", f"{base}/gone.tif", POST_DATE)
    with pytest.raises(SceneInputError, match=r"AFTER: .*/gone.tif could not be read as a raster over HTTP .*404"):
        SceneSeries([i.raster for i in resolve_scene_inputs([items["http"][0], f"{base}/{gone.name}"], "visual")])
    far = [write_item(folder / f"{name}.json", folder / f"{name}.tif", f"./{name}.tif", date)
           for name, date in (("far_pre", PRE_DATE), ("far_post", POST_DATE))]
    with pytest.raises(SceneInputError, match=r"footprints do not overlap: AFTER \(.*far_post.json"):
        resolve_scene_inputs(list(map(str, far)), "visual")

    # On the command line: exit code 2, the message, nothing written.
    out = tmp_path / "out"
    argv = ["scene", *map(str, far), "--asset", "visual", "--model", str(tmp_path / "no-model"), "--out",
            str(out / "changes.parquet"), "--stac-item", str(out / "run.json")]
    assert main(argv) == EXIT_BAD_INPUT
    assert "footprints do not overlap" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
