"""`rscc scene --engine ray` (`rscc.ray_scene`) on a local Ray instance of 2 CPUs, a crop of the real xView2 chips and
a tiny checkpoint with a change head: the outputs of the one-process run, resuming across engines, and unreadable
tiles named once."""

import dataclasses
import json
import re
import signal

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rscc.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, main
from rscc.ray import RayEngineError, captioner_config
from rscc.ray_scene import ray_tile_captioner
from rscc.scene import SceneOptions
from rscc.scene.describe import caption_scene

CROP = Window(0, 0, 200, 200)
OPTIONS = dict(tile_size=64, overlap=16, max_new_tokens=3, batch_size=2, polygons=True)
FLAGS = ["--tile-size", "64", "--overlap", "16", "--max-new-tokens", "3", "--batch-size", "2", "--polygons"]


@pytest.fixture(scope="module")
def rasters(shared_data, tmp_path_factory) -> list[str]:
    """A 200 x 200 crop of the xView2 pre and post chips (their grids differ: the post date is resampled)."""
    folder = tmp_path_factory.mktemp("scene")
    paths = []
    for date in ("pre", "post"):
        with rasterio.open(shared_data / "geotiff_xview2" / date / f"0_{date}.tif") as chip:
            profile = chip.profile | {"width": CROP.width, "height": CROP.height,
                                      "transform": chip.window_transform(CROP)}
            with rasterio.open(folder / f"{date}.tif", "w", **profile) as raster:
                raster.write(chip.read(window=CROP))
        paths.append(str(folder / f"{date}.tif"))
    return paths


@pytest.fixture(scope="module")
def with_head(tmp_path_factory) -> str:
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("with-head"), use_change_head=True))


def _scene_args(rasters, model, folder, *options) -> list[str]:
    return ["scene", *rasters, "--model", model, "--out", str(folder / "changes.geojson"), "--mask-out",
            str(folder / "mask.tif"), *FLAGS, *options]


@pytest.fixture(scope="module")
def one_process(rasters, with_head, tmp_path_factory):
    """`rscc scene` in this process (the accelerate engine, one process): the expected outputs."""
    folder = tmp_path_factory.mktemp("one-process")
    assert main(_scene_args(rasters, with_head, folder)) == EXIT_OK
    with rasterio.open(folder / "mask.tif") as mosaic:
        return (folder / "changes.geojson").read_bytes(), mosaic.read(1)


def _assert_outputs_are(expected, folder):
    geojson, mosaic = expected
    assert (folder / "changes.geojson").read_bytes() == geojson  # byte for byte: captions, polygons, metadata
    with rasterio.open(folder / "mask.tif") as written:
        np.testing.assert_array_equal(written.read(1), mosaic)
    assert sorted(path.name for path in folder.iterdir()) == ["changes.geojson", "mask.tif"]  # no part file left


def test_ray_engine_writes_the_one_process_outputs(local_ray, rasters, with_head, one_process, tmp_path, capsys):
    assert main(_scene_args(rasters, with_head, tmp_path, "--engine", "ray", "--num-workers", "2")) == EXIT_OK
    assert "16 tile(s) captioned" in capsys.readouterr().err
    _assert_outputs_are(one_process, tmp_path)


def test_a_stopped_run_resumes_on_either_engine(local_ray, rasters, with_head, one_process, tmp_path, monkeypatch,
                                                capsys):
    import rscc.captioning
    import rscc.ray_scene
    from rscc.scene import describe as scene_captioning

    options = SceneOptions(**OPTIONS, mask_out=tmp_path / "mask.tif")
    out = tmp_path / "changes.geojson"
    on_ray = ray_tile_captioner(local_ray, captioner_config(with_head), with_head, rasters, options)

    # `rscc scene --engine ray` terminated once its first batch is in: exit 143, the batch kept in the part file.
    def stopped_after_first_batch(*arguments, **keywords):
        captioner = ray_tile_captioner(*arguments, **keywords)

        def caption(*tiles_of):
            yield next(captioner.caption(*tiles_of))
            signal.raise_signal(signal.SIGTERM)

        return dataclasses.replace(captioner, caption=caption)

    monkeypatch.setattr(rscc.ray_scene, "ray_tile_captioner", stopped_after_first_batch)
    assert main(_scene_args(rasters, with_head, tmp_path, "--engine", "ray")) == EXIT_TERMINATED
    part = tmp_path / "changes.geojson.partial"
    assert f"finished tiles are kept in {part}" in capsys.readouterr().err
    done_on_ray = len(part.read_text().splitlines())
    assert done_on_ray >= 1 and not out.exists()
    monkeypatch.undo()

    # The accelerate engine resumes from the Ray run's part file, and is stopped in its second batch.
    calls = []

    def stopped_on_second_batch(*arguments, **options):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rscc.captioning.describe_changes(*arguments, **options)

    monkeypatch.setattr(scene_captioning, "describe_changes", stopped_on_second_batch)
    assert main(_scene_args(rasters, with_head, tmp_path)) == EXIT_INTERRUPTED
    assert "finished tiles are kept in" in capsys.readouterr().err
    assert len(part.read_text().splitlines()) == done_on_ray + 2
    monkeypatch.undo()

    # The Ray engine captions only what neither run finished, and writes the one-process outputs.
    given = []

    def counted(scene, stretch, tiles, mosaic):
        tiles = list(tiles)
        given.extend(tile.index for tile in tiles)
        return on_ray.caption(scene, stretch, tiles, mosaic)

    summary = caption_scene(dataclasses.replace(on_ray, caption=counted), rasters, out, options)
    assert summary.tiles == 16 and len(given) == 16 - done_on_ray - 2
    _assert_outputs_are(one_process, tmp_path)


def _south_missing(raster: str, folder) -> str:
    """A VRT of `raster` whose rows from 128 on (its second row of 128-pixel blocks) come from a file that does not
    exist: the VRT opens, and the tiles that touch those rows cannot be read."""
    with rasterio.open(raster) as source:
        width, height, crs, transform, count = source.width, source.height, source.crs, source.transform, source.count
    half = 128
    sources = ""
    for band in range(1, count + 1):
        rectangles = [("0", 0, half, raster), ("1", half, height - half, str(folder / "missing.tif"))]
        simple = "".join(
            f'<SimpleSource><SourceFilename>{path}</SourceFilename><SourceBand>{band}</SourceBand>'
            f'<SrcRect xOff="0" yOff="{top}" xSize="{width}" ySize="{rows}"/>'
            f'<DstRect xOff="0" yOff="{top}" xSize="{width}" ySize="{rows}"/></SimpleSource>'
            for _, top, rows, path in rectangles)
        sources += f'<VRTRasterBand dataType="Byte" band="{band}">{simple}</VRTRasterBand>'
    geotransform = ", ".join(str(value) for value in transform.to_gdal())
    vrt = folder / "post_south_missing.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs.to_wkt()}</SRS>'
                   f"<GeoTransform>{geotransform}</GeoTransform>{sources}</VRTDataset>")
    return str(vrt)


def test_unreadable_tiles_are_named_once_and_the_others_kept(local_ray, rasters, with_head, tmp_path, capsys):
    broken = [rasters[0], _south_missing(rasters[0], tmp_path)]  # on the first grid: read without warping
    out = tmp_path / "changes.geojson"
    with pytest.raises(RayEngineError) as failure:
        caption_scene(ray_tile_captioner(local_ray, captioner_config(with_head), with_head, broken,
                                         SceneOptions(**OPTIONS)), broken, out, SceneOptions(**OPTIONS))
    message = str(failure.value)
    assert message.startswith("8 tile(s) could not be read or captioned (tile 8: RsccInputError: raster: cannot read "
                              "the pixels of")  # tiles 8 to 15 touch rows 128 and on, each named once
    assert [int(number) for number in re.findall(r"tile (\d+): ", message)] == [8, 9, 10, 11, 12]
    assert message.count("and 3 more")
    # Tiles read after a failed one in the same batch are not handed GDAL's cached failed block (zeros) as pixels.
    kept = [json.loads(line)["tile"] for line in (tmp_path / "changes.geojson.partial").read_text().splitlines()]
    assert sorted(kept) == list(range(8)) and not out.exists()


def test_scene_engine_options_are_checked(rasters, with_head, tmp_path, capsys):
    arguments = ["scene", *rasters, "--model", with_head, "--out", str(tmp_path / "changes.geojson")]
    assert main([*arguments, "--gpus-per-worker", "1"]) == EXIT_BAD_INPUT
    assert "--gpus-per-worker is an option of --engine ray" in capsys.readouterr().err
    assert main([*arguments, "--engine", "ray", "--num-workers", "0"]) == EXIT_BAD_INPUT
    assert "--num-workers must be at least 1" in capsys.readouterr().err
    assert main([*arguments, "--engine", "ray", "--model", str(tmp_path / "no-such-model")]) == EXIT_BAD_INPUT
    assert "no-such-model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
