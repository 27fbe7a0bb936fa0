"""`rscc scene` on crops of the real xView2 GeoTIFF chips, whose pre and post grids differ by about half a metre."""

import json
import re
import math

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.warp import transform as transform_coordinates
from rasterio.windows import Window

from rscc.caption_text import is_no_change_caption
from rscc.cli import main
from rscc.captioning import describe_changes
from rscc.processing_rscc import stretch_to_uint8
from rscc.scene import SceneInputError, SceneOptions, SceneSeries, TileGrid, describe_scene, rgb_bands

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CROP = Window(0, 0, 160, 160)
TILE_OPTIONS = dict(tile_size=64, overlap=16, max_new_tokens=3)


def write_crop(source, destination, window=CROP, data=None, **profile_changes):
    """Copy `window` of a real chip into its own GeoTIFF, georeferenced where it lies (or as `profile_changes` say)."""
    with rasterio.open(source) as chip:
        profile = chip.profile | {"width": int(window.width), "height": int(window.height),
                                  "transform": chip.window_transform(window)}
        pixels = chip.read(window=window) if data is None else data
    profile.update(profile_changes)
    profile.update(count=pixels.shape[0], dtype=pixels.dtype.name)
    with rasterio.open(destination, "w", **profile) as raster:
        raster.write(pixels)
    return destination


@pytest.fixture(scope="module")
def chips(shared_data):
    folder = shared_data / "geotiff_xview2"
    return {"pre": folder / "pre" / "0_pre.tif", "post": folder / "post" / "0_post.tif",
            "post_below": folder / "post" / "1_post.tif"}


@pytest.fixture(scope="module")
def real_pair(chips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("real-pair")
    return write_crop(chips["pre"], folder / "pre.tif"), write_crop(chips["post"], folder / "post.tif")


def ring_area(ring):
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2.0


def load_features(path, kind):
    collection = json.loads(path.read_text())
    return collection, [f for f in collection["features"] if f["properties"]["kind"] == kind]


def test_tile_grid_covers_the_window_with_full_tiles_and_partitions_ownership():
    grid = TileGrid(Window(10, 5, 100, 30), tile_size=28, overlap=4)
    tiles = list(grid)
    assert len(tiles) == len(grid) == 4 * 2
    assert {t.window.width for t in tiles} == {28} and {t.window.height for t in tiles} == {28}
    assert min(t.window.col_off for t in tiles) == 10 and max(t.window.col_off + 28 for t in tiles) == 110
    assert max(t.window.row_off + 28 for t in tiles) == 35  # the last row moves back to end on the edge
    owned = np.zeros((30, 100), dtype=int)
    for tile in tiles:
        o = tile.owned
        assert tile.window.col_off <= o.col_off and o.col_off + o.width <= tile.window.col_off + 28
        owned[o.row_off - 5 : o.row_off - 5 + o.height, o.col_off - 10 : o.col_off - 10 + o.width] += 1
    assert (owned == 1).all()
    (small,) = TileGrid(Window(0, 0, 20, 12), tile_size=28)
    assert (small.window.width, small.window.height) == (20, 12)
    with pytest.raises(SceneInputError, match="--overlap"):
        TileGrid(Window(0, 0, 100, 100), tile_size=28, overlap=28)


def test_real_pair_is_resampled_onto_before_grid_and_written_as_rfc7946_geojson(
    real_pair, tiny_checkpoint, tmp_path, capsys
):
    before, after = real_pair
    out = tmp_path / "out" / "changes.geojson"
    argv = ["scene", str(before), str(after), "--model", str(tiny_checkpoint), "--out", str(out),
            "--tile-size", "64", "--overlap", "16", "--max-new-tokens", "3", "--batch-size", "4"]
    assert main(argv) == 0, capsys.readouterr().err
    collection, tiles = load_features(out, "tile")
    assert collection["type"] == "FeatureCollection"
    assert sorted(p.name for p in out.parent.iterdir()) == ["changes.geojson"]  # no temporary file left

    with rasterio.open(before) as pre, rasterio.open(after) as post:
        # AFTER starts 0.47 m east and 0.27 m south of BEFORE: BEFORE's first column and row are not wholly covered.
        first_col = math.ceil((post.bounds.left - pre.bounds.left) / pre.res[0])
        first_row = math.ceil((pre.bounds.top - post.bounds.top) / pre.res[1])
        crs, transform = pre.crs, pre.transform
        west, south, east, north = transform_bounds(pre.crs, "EPSG:4326", *pre.bounds)
    assert (first_col, first_row) == (1, 1)
    metadata = collection["rscc"]
    assert "resampled" in metadata["alignment"]
    assert metadata["overlap_window"] == {"col": 1, "row": 1, "width": 159, "height": 159}
    assert metadata["tiles"] == len(tiles) == 9 and metadata["skipped_tiles"] == 0
    assert min(t["properties"]["col"] for t in tiles) == 1
    assert max(t["properties"]["col"] + t["properties"]["width"] for t in tiles) == 160

    for feature in tiles:
        properties = feature["properties"]
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and ring_area(ring) > 0  # closed, counter-clockwise
        assert all(west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6 for lon, lat in ring)
        assert properties["change_flag"] == (not is_no_change_caption(properties["caption"]))
        assert properties["changed_fraction"] is None and properties["change_source"] == "caption"
    # The first tile's corners are its pixel corners on BEFORE's grid, in WGS84 longitude/latitude.
    corner = transform @ (tiles[0]["properties"]["col"], tiles[0]["properties"]["row"])
    lon, lat = transform_coordinates(crs, "EPSG:4326", [corner[0]], [corner[1]])
    assert tiles[0]["geometry"]["coordinates"][0][0] == pytest.approx([lon[0], lat[0]], abs=1e-7)


def test_after_in_another_crs_and_resolution_lands_on_before_pixels(chips, tmp_path):
    before = write_crop(chips["pre"], tmp_path / "pre.tif", Window(100, 100, 120, 120))
    with rasterio.open(before) as pre:
        transform, width, height = calculate_default_transform(
            pre.crs, "EPSG:3857", pre.width, pre.height, *pre.bounds, resolution=0.45
        )
        reprojected = np.zeros((3, height, width), dtype=np.uint8)
        reproject(pre.read(), reprojected, src_transform=pre.transform, src_crs=pre.crs, dst_transform=transform,
                  dst_crs="EPSG:3857", resampling=Resampling.bilinear)
        original = np.moveaxis(pre.read(), 0, -1).astype(int)
    after = write_crop(chips["pre"], tmp_path / "after_3857.tif", data=reprojected, crs="EPSG:3857",
                       transform=transform, width=width, height=height)
    with SceneSeries([before, after]) as pair:
        assert "resampled" in pair.alignment
        inner = Window(10, 10, 100, 100)  # away from the reprojected footprint's edges
        (before_rgb, after_rgb), valid = pair.read_rgb(inner, [None, None])
        assert valid.all()
        aligned_error = np.abs(after_rgb.astype(int) - before_rgb.astype(int)).mean()
        shifted_error = np.abs(original[12:112, 12:112] - original[10:110, 10:110]).mean()
        assert aligned_error < shifted_error / 3  # a 2-pixel misregistration is far worse than the round trip


def test_grids_differing_by_whole_pixels_are_read_without_resampling(chips, tmp_path):
    before = write_crop(chips["pre"], tmp_path / "pre.tif", Window(0, 0, 100, 100))
    after = write_crop(chips["pre"], tmp_path / "after.tif", Window(7, 3, 100, 100))
    with SceneSeries([before, after]) as pair:
        assert pair.alignment == "AFTER: same grid, shifted by (7, 3) pixels"
        assert (pair.window.col_off, pair.window.row_off, pair.window.width, pair.window.height) == (7, 3, 93, 97)
        (before_rgb, after_rgb), valid = pair.read_rgb(pair.window, [None, None])
    assert valid.all() and np.array_equal(before_rgb, after_rgb)


def test_nodata_is_blanked_in_both_dates_and_mostly_empty_tiles_are_skipped(real_pair, tiny_model, tiny_processor,
                                                                              tmp_path):
    before, after = real_pair
    with rasterio.open(after) as post:
        pixels = post.read()
    pixels[:, :, :100] = 0  # the western 100 columns are nodata
    after_nodata = write_crop(after, tmp_path / "post_nodata.tif", Window(0, 0, 160, 160), data=pixels, nodata=0)
    out = tmp_path / "changes.geojson"
    summary = describe_scene(tiny_model, tiny_processor, [before, after_nodata], out, SceneOptions(**TILE_OPTIONS))
    _, tiles = load_features(out, "tile")
    assert summary.skipped > 0 and summary.captioned == len(tiles) == summary.tiles - summary.skipped
    assert all(t["properties"]["valid_fraction"] >= 0.5 for t in tiles)
    assert all(t["properties"]["col"] + t["properties"]["width"] > 100 for t in tiles)
    assert any(t["properties"]["valid_fraction"] < 1 for t in tiles)
    with SceneSeries([before, after_nodata]) as pair:
        (before_rgb, after_rgb), valid = pair.read_rgb(Window(80, 40, 40, 40), [None, None])
    assert not valid[:, :15].any() and valid[:, 25:].all()
    assert (before_rgb[~valid] == 0).all() and before_rgb[valid].any()


def test_sixteen_bit_multiband_rasters_pick_rgb_by_colour_and_share_one_stretch(chips, tmp_path):
    with rasterio.open(chips["pre"]) as pre:
        rgb = pre.read(window=Window(0, 0, 96, 96)).astype(np.uint16) * 40 + 1000
    near_infrared = np.full((1, 96, 96), 60000, dtype=np.uint16)
    # Stored blue, green, red, near-infrared, as multispectral products often are.
    stacked = np.concatenate([rgb[::-1], near_infrared])
    paths = []
    for name in ("before.tif", "after.tif"):
        path = write_crop(chips["pre"], tmp_path / name, Window(0, 0, 96, 96), data=stacked, photometric="minisblack")
        with rasterio.open(path, "r+") as raster:
            raster.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
        paths.append(path)
    with rasterio.open(paths[0]) as raster:
        assert rgb_bands(raster, "BEFORE") == [3, 2, 1]
        with pytest.raises(SceneInputError, match="--bands 1,5"):
            rgb_bands(raster, "BEFORE", [1, 5])
    with SceneSeries(paths) as pair:
        before_range, after_range = pair.stretch_ranges()
        assert before_range == pytest.approx(tuple(np.percentile(rgb.astype(float), (2, 98))))
        tile = Window(32, 32, 32, 32)
        (before_rgb, _), _ = pair.read_rgb(tile, [before_range, after_range])
    expected = stretch_to_uint8(rgb[:, 32:64, 32:64], value_range=before_range)
    assert before_rgb.dtype == np.uint8 and np.array_equal(before_rgb, np.moveaxis(expected, 0, -1))
    with SceneSeries(paths, bands=[1, 2, 3]) as pair:
        (swapped, _), _ = pair.read_rgb(tile, pair.stretch_ranges())
    assert np.array_equal(swapped, before_rgb[..., ::-1])


def difference_mask(befores, afters):
    """A synthetic per-pixel change mask: grey level changed by more than 40."""
    return [np.abs(a.astype(int) - b.astype(int)).mean(axis=-1) > 40 for b, a in zip(befores, afters)]


@pytest.fixture(scope="module")
def three_dates(chips, tmp_path_factory):
    """DATE1 and DATE3 on the pre chip's grid (DATE3 shifted by whole pixels, its grey levels inverted, a change
    everywhere), DATE2 the post chip, about half a metre off that grid."""
    folder = tmp_path_factory.mktemp("three-dates")
    with rasterio.open(chips["pre"]) as pre:
        inverted = 255 - pre.read(window=Window(5, 2, 100, 100))
    return [write_crop(chips["pre"], folder / "d1.tif", Window(0, 0, 100, 100)),
            write_crop(chips["post"], folder / "d2.tif", Window(0, 0, 100, 100)),
            write_crop(chips["pre"], folder / "d3.tif", Window(5, 2, 100, 100), data=inverted)]


def test_a_series_is_read_on_the_first_grid_within_the_overlap_of_all_dates(three_dates):
    first, second, third = three_dates
    with SceneSeries([first, second]) as with_second, SceneSeries([first, third]) as with_third:
        pair_windows = with_second.window, with_third.window
        inner = Window(10, 10, 60, 60)
        pair_images = [*with_second.read_rgb(inner, [None, None])[0], with_third.read_rgb(inner, [None, None])[0][1]]
    with SceneSeries(three_dates) as series:
        assert series.names == ["DATE1", "DATE2", "DATE3"]
        assert series.alignment == ("DATE2: resampled onto DATE1's grid (bilinear); "
                                    "DATE3: same grid, shifted by (5, 2) pixels")
        window = series.window
        images, valid = series.read_rgb(inner, series.stretch_ranges())
    # The common overlap is the intersection of each later date's overlap with the first.
    cols = [(w.col_off, w.col_off + w.width) for w in pair_windows]
    rows = [(w.row_off, w.row_off + w.height) for w in pair_windows]
    assert pair_windows[0] != pair_windows[1]
    assert (window.col_off, window.col_off + window.width) == (max(c[0] for c in cols), min(c[1] for c in cols))
    assert (window.row_off, window.row_off + window.height) == (max(r[0] for r in rows), min(r[1] for r in rows))
    # Each date reads as it does in its own pair with the first date.
    assert valid.all() and len(images) == 3
    for image, expected in zip(images, pair_images):
        assert np.array_equal(image, expected)


def test_scene_tiles_of_a_series_are_captioned_as_series_and_masks_compare_first_with_last(
    three_dates, tiny_model, tiny_processor, tmp_path
):
    received = []

    def recorded_difference_mask(firsts, lasts):
        received.extend(zip(firsts, lasts))
        return difference_mask(firsts, lasts)

    out = tmp_path / "changes.geojson"
    summary = describe_scene(tiny_model, tiny_processor, three_dates, out,
                             SceneOptions(change_masks=recorded_difference_mask, batch_size=3, **TILE_OPTIONS))
    collection, tiles = load_features(out, "tile")
    metadata = collection["rscc"]
    assert metadata["rasters"] == [str(path) for path in three_dates]
    assert len(metadata["bands"]) == len(metadata["stretch"]) == 3 and "DATE3" in metadata["alignment"]
    assert summary.captioned == len(tiles) == len(received) > 1
    with SceneSeries(three_dates) as series:
        for feature, (first, last) in zip(tiles, received):
            p = feature["properties"]
            dates, valid = series.read_rgb(Window(p["col"], p["row"], p["width"], p["height"]), [None] * 3)
            assert np.array_equal(first, dates[0]) and np.array_equal(last, dates[2])
            (alone,) = describe_changes(tiny_model, tiny_processor, [dates], max_new_tokens=3)
            assert p["caption"] == alone.caption  # batched series tiles caption as each does alone
            assert p["change_flag"] and p["changed_fraction"] > 0.5  # DATE3 inverts DATE1's grey levels


def test_scene_command_takes_a_series_of_rasters(three_dates, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "changes.geojson"
    argv = ["scene", *map(str, three_dates), "--model", str(tiny_checkpoint), "--out", str(out),
            "--tile-size", "64", "--max-new-tokens", "2"]
    assert main(argv) == 0
    collection, tiles = load_features(out, "tile")
    assert len(collection["rscc"]["rasters"]) == 3 and tiles
    assert "DATE2: resampled onto DATE1's grid" in capsys.readouterr().err


def test_a_series_for_a_model_that_takes_pairs_only_is_a_clear_error_with_nothing_written(three_dates, tmp_path,
                                                                                         capsys):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    pairs_only = make_tiny_checkpoint(tmp_path / "pairs-only", bitemporal_filter_layers=[-1])
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    argv = ["scene", *map(str, three_dates), "--model", str(pairs_only), "--out", str(out_folder / "c.geojson"),
            "--tile-size", "64", "--max-new-tokens", "2"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and re.search("rscc scene: error: .*pairs only", error), error
    assert list(out_folder.iterdir()) == []


def test_change_masks_give_flags_fractions_polygons_and_a_mosaic_on_before_grid(
    real_pair, tiny_model, tiny_processor, tmp_path
):
    before, after = real_pair
    out, mosaic_path = tmp_path / "changes.geojson", tmp_path / "mask.tif"
    summary = describe_scene(tiny_model, tiny_processor, [before, after], out, SceneOptions(
        change_masks=difference_mask, polygons=True, mask_out=mosaic_path, **TILE_OPTIONS))
    collection, tiles = load_features(out, "tile")
    _, polygons = load_features(out, "change")
    with SceneSeries([before, after]) as pair, rasterio.open(before) as pre, rasterio.open(mosaic_path) as mosaic_file:
        assert (mosaic_file.crs, mosaic_file.transform, mosaic_file.shape) == (pre.crs, pre.transform, pre.shape)
        mosaic = mosaic_file.read(1)
        (whole_before, whole_after), whole_valid = pair.read_rgb(pair.window, [None, None])
        for feature in tiles:
            p = feature["properties"]
            (tile_before, tile_after), valid = pair.read_rgb(Window(p["col"], p["row"], p["width"], p["height"]),
                                                           [None, None])
            (expected,) = difference_mask([tile_before], [tile_after])
            assert p["change_source"] == "mask"
            assert p["changed_fraction"] == pytest.approx(expected[valid].mean())
            assert p["change_flag"] == bool(expected[valid].any())
        window = pair.window
    # The mask is a per-pixel function, so the mosaic of the tiles' owned parts equals it over the whole overlap.
    (whole_mask,) = difference_mask([whole_before], [whole_after])
    inside = mosaic[window.row_off : window.row_off + window.height, window.col_off : window.col_off + window.width]
    assert np.array_equal(inside, np.where(whole_valid, whole_mask, 255))
    assert (mosaic[0, :] == 255).all() and (mosaic[:, 0] == 255).all()  # outside the overlap
    assert summary.changed == sum(t["properties"]["change_flag"] for t in tiles)

    # The polygons cover exactly the changed pixels: their area, back on BEFORE's grid, is the count of 1s.
    assert polygons and {p["properties"]["tile"] for p in polygons} <= {t["properties"]["tile"] for t in tiles}
    with rasterio.open(before) as pre:
        area_px = 0.0
        for polygon in polygons:
            for position, ring in enumerate(polygon["geometry"]["coordinates"]):
                xs, ys = transform_coordinates("EPSG:4326", pre.crs, *zip(*ring))
                cols, rows = ~pre.transform @ (np.array(xs), np.array(ys))
                area = ring_area(list(zip(cols, -rows)))  # rows grow southwards: flip to keep orientation
                assert (area > 0) == (position == 0)  # outer ring counter-clockwise, holes clockwise
                area_px += area
    assert area_px == pytest.approx((mosaic == 1).sum(), rel=1e-3)


def test_scene_command_uses_a_models_change_head_for_polygons_and_the_mosaic(real_pair, tmp_path):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    with_head = make_tiny_checkpoint(tmp_path / "with-head", use_change_head=True)
    out, mosaic = tmp_path / "changes.geojson", tmp_path / "mask.tif"
    argv = ["scene", *map(str, real_pair), "--model", str(with_head), "--out", str(out), "--tile-size", "64",
            "--max-new-tokens", "2", "--polygons", "--mask-out", str(mosaic)]
    assert main(argv) == 0
    collection, tiles = load_features(out, "tile")
    assert collection["rscc"]["change_source"] == "mask"
    assert all(0.0 <= t["properties"]["changed_fraction"] <= 1.0 for t in tiles)
    with rasterio.open(mosaic) as written:
        values = written.read(1)
    assert set(np.unique(values)) <= {0, 1, 255} and (values != 255).any()
    changed_tiles = [t for t in tiles if t["properties"]["changed_fraction"] > 0]
    assert bool(changed_tiles) == bool(load_features(out, "change")[1])


def test_interrupted_run_leaves_no_file(real_pair, tiny_model, tiny_processor, tmp_path):
    calls, block_caches = [], []

    def interrupted_after_one_batch(befores, afters):
        calls.append(len(befores))
        block_caches.append(rasterio.env.getenv()["GDAL_CACHEMAX"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return difference_mask(befores, afters)

    with pytest.raises(KeyboardInterrupt):
        describe_scene(tiny_model, tiny_processor, real_pair, tmp_path / "changes.geojson", SceneOptions(
            change_masks=interrupted_after_one_batch, mask_out=tmp_path / "mask.tif", batch_size=4, **TILE_OPTIONS))
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    # GDAL's block cache is capped while reading, at a size that still holds a few rows of tiles (in bytes).
    assert all(16 * 2**20 <= size <= 256 * 2**20 for size in block_caches)


@pytest.fixture(scope="module")
def bad_inputs(chips, real_pair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    (folder / "notes.tif").write_text("not a raster")
    with rasterio.open(real_pair[0]) as pre:
        pixels = pre.read()
    no_crs = write_crop(real_pair[0], folder / "no_crs.tif", data=pixels, crs=None,
                        transform=rasterio.Affine.identity())
    return {"missing": folder / "gone.tif", "text": folder / "notes.tif", "no_crs": no_crs,
            "before": real_pair[0], "after": real_pair[1], "far_after": chips["post_below"]}


@pytest.mark.parametrize(
    "case, inputs, extra, message",
    [
        ("missing file", ("missing", "after"), [], "BEFORE: raster file not found: .*gone.tif"),
        ("not a raster", ("before", "text"), [], "AFTER: .*notes.tif is not a raster"),
        ("no crs", ("no_crs", "after"), [], "BEFORE .*no_crs.tif.* has no CRS.*--assume-aligned"),
        ("no overlap", ("before", "far_after"), [], "do not overlap"),
        ("one raster", ("before",), [], "a scene needs two or more rasters .* got 1"),
        ("a series without overlap", ("before", "after", "far_after"), [],
         "DATE1 .* and DATE3 .* do not overlap inside the area DATE1 and DATE2 share"),
        ("a series without crs", ("before", "no_crs", "after"), [], "DATE2 .*no_crs.tif.* has no CRS"),
        ("empty output path", ("before", "after"), ["--out", ""], "--out is an empty path"),
        ("polygons without a change head", ("before", "after"), ["--polygons"], "change-detection head"),
        ("bad bands", ("before", "after"), ["--bands", "1,2,9"], "--bands 1,2,9 is not valid for a 3-band raster"),
    ],
)
def test_bad_input_is_a_clear_error_with_nothing_written(
    case, inputs, extra, message, bad_inputs, tiny_checkpoint, tmp_path, capsys
):
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    argv = ["scene", *(str(bad_inputs[name]) for name in inputs), "--model", str(tiny_checkpoint),
            "--out", str(out_folder / "changes.geojson"), *extra]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1].startswith("rscc scene: error: ") and "Traceback" not in error
    assert re.search(message, error), error
    assert list(out_folder.iterdir()) == []


def test_rasters_without_crs_run_with_assume_aligned_and_have_no_geometry(bad_inputs, tiny_model, tiny_processor,
                                                                          tmp_path):
    out = tmp_path / "changes.geojson"
    summary = describe_scene(tiny_model, tiny_processor, [bad_inputs["no_crs"], bad_inputs["no_crs"]], out,
                             SceneOptions(assume_aligned=True, **TILE_OPTIONS))
    collection, tiles = load_features(out, "tile")
    assert summary.captioned == len(tiles) > 0 and collection["rscc"]["crs"] is None
    assert all(t["geometry"] is None for t in tiles)
