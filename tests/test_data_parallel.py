"""Data-parallel `rscc caption` and `rscc scene`: 2 CPU processes (gloo, through `accelerate launch`) against one,
and resuming from the part files of processes that stopped."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rscc.batch import SampleRecord, caption_records, pairs_from_folders
from rscc.cli import main
from rscc.parallel import ProcessShare, existing_parts
from rscc.scene import SceneOptions, describe_scene

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SCENE_OPTIONS = ["--tile-size", "64", "--overlap", "16", "--max-new-tokens", "3", "--batch-size", "2"]


def launch(num_processes: int, *arguments, cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes N -m rscc ARGUMENTS` on this machine's CPU (gloo)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [Path(sys.executable).parent / "accelerate", "launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", "-m", "rscc", *arguments]
    result = subprocess.run([str(part) for part in command], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def pair_folders(shared_data, tmp_path_factory):
    """Seven real LEVIR-CC pairs (an odd count: the two processes get unequal shares)."""
    source = shared_data / "levir_cc" / "images" / "train"
    names = sorted(path.name for path in (source / "A").iterdir())
    folder = tmp_path_factory.mktemp("pairs")
    for side in ("A", "B"):
        (folder / side).mkdir()
        for copy in range(3):
            for name in names:
                shutil.copyfile(source / side / name, folder / side / f"{copy}_{name}")
        for extra in sorted((folder / side).iterdir())[7:]:
            extra.unlink()
    return folder / "A", folder / "B"


def test_two_processes_caption_exactly_what_one_does_merged_in_input_order(pair_folders, tiny_checkpoint, tmp_path):
    common = ["caption", *map(str, pair_folders), "--model", str(tiny_checkpoint), "--max-new-tokens", "6",
              "--batch-size", "2"]
    one, two = tmp_path / "one" / "captions.jsonl", tmp_path / "two" / "captions.jsonl"
    assert main([*common, "--out", str(one)]) == 0
    result = launch(2, *common, "--out", two, "--progress", cwd=tmp_path)
    assert two.read_bytes() == one.read_bytes()
    assert [json.loads(line)["id"] for line in two.read_text().splitlines()] == sorted(
        path.name for path in pair_folders[0].iterdir())
    assert sorted(path.name for path in two.parent.iterdir()) == ["captions.jsonl"]  # the parts are merged away
    # One bar, the main process's, over both processes' pairs, with its rate; one report.
    assert "7/7" in result.stderr and "sample/s" in result.stderr
    assert result.stderr.count("7 sample(s) captioned, 0 already done") == 1


def test_two_processes_describe_a_scene_exactly_as_one_does(shared_data, tmp_path):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    with_head = make_tiny_checkpoint(tmp_path / "with-head", use_change_head=True)
    crop = Window(0, 0, 200, 200)
    rasters = []
    for date in ("pre", "post"):
        with rasterio.open(shared_data / "geotiff_xview2" / date / f"0_{date}.tif") as chip:
            profile = chip.profile | {"width": 200, "height": 200, "transform": chip.window_transform(crop)}
            with rasterio.open(tmp_path / f"{date}.tif", "w", **profile) as raster:
                raster.write(chip.read(window=crop))
        rasters.append(str(tmp_path / f"{date}.tif"))
    outputs = {}
    for count in (1, 2):
        folder = tmp_path / f"run{count}"
        folder.mkdir()
        arguments = ["scene", *rasters, "--model", str(with_head), "--out", str(folder / "changes.geojson"),
                     "--mask-out", str(folder / "mask.tif"), "--polygons", *SCENE_OPTIONS]
        if count == 1:
            assert main(arguments) == 0
        else:
            launch(2, *arguments, cwd=tmp_path)
        outputs[count] = folder
        assert sorted(path.name for path in folder.iterdir()) == ["changes.geojson", "mask.tif"]
    assert (outputs[2] / "changes.geojson").read_bytes() == (outputs[1] / "changes.geojson").read_bytes()
    collection = json.loads((outputs[2] / "changes.geojson").read_text())
    window = collection["rscc"]["overlap_window"]
    with rasterio.open(outputs[1] / "mask.tif") as one, rasterio.open(outputs[2] / "mask.tif") as two:
        assert (one.transform, one.crs) == (two.transform, two.crs)
        np.testing.assert_array_equal(one.read(1), two.read(1))
        rows = slice(window["row"], window["row"] + window["height"])
        cols = slice(window["col"], window["col"] + window["width"])
        assert (two.read(1)[rows, cols] != 255).all()  # every tile's owned window was written
    assert [f["properties"]["tile"] for f in collection["features"] if f["properties"]["kind"] == "tile"] == list(
        range(collection["rscc"]["tiles"]))


def fake_captions(log: list, stop_on_call: int | None = None):
    """A caption function recording the ids it is given, and raising KeyboardInterrupt on one call (a process that is
    stopped mid-run)."""
    calls = []

    def caption_batch(batch: list[SampleRecord]) -> list[str]:
        calls.append(batch)
        if len(calls) == stop_on_call:
            raise KeyboardInterrupt
        log.extend(record.id for record in batch)
        return [f"caption of {record.id}" for record in batch]

    return caption_batch


def test_a_resumed_run_skips_what_any_process_finished_and_a_stopped_process_loses_one_batch(pair_folders, tmp_path):
    records = pairs_from_folders(*pair_folders)
    out = tmp_path / "captions.jsonl"
    captioned = []
    # Process 1 of 2 (pairs 1, 3, 5) is stopped in its second batch: its first batch is in its part file.
    with pytest.raises(KeyboardInterrupt):
        caption_records(records, fake_captions(captioned, stop_on_call=2), out, batch_size=2,
                        share=ProcessShare(1, 2))
    assert captioned == [records[1].id, records[3].id]
    assert [json.loads(line)["id"] for line in (tmp_path / "captions.jsonl.partial.1").read_text().splitlines()] == \
        captioned
    with open(tmp_path / "captions.jsonl.partial.1", "a") as part:
        part.write('{"id": "half-writ')  # the line the process was writing when it was stopped

    resumed = []
    summary = caption_records(records, fake_captions(resumed), out, batch_size=2)  # one process now
    assert sorted(resumed) == sorted(record.id for record in records if record.id not in captioned)
    assert (summary.captioned, summary.resumed) == (5, 2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        record.result_line(f"caption of {record.id}") for record in records]
    assert existing_parts(out) == []


def test_a_scene_resumes_from_the_part_of_a_process_that_finished(shared_data, tiny_model, tiny_processor, tmp_path):
    before = shared_data / "geotiff_xview2" / "pre" / "0_pre.tif"
    after = shared_data / "geotiff_xview2" / "post" / "0_post.tif"
    tiles_masked = []

    def counted_masks(befores, afters):
        tiles_masked.append(len(befores))
        return [np.abs(b.astype(int) - a.astype(int)).sum(axis=-1) > 200 for b, a in zip(befores, afters)]

    options = SceneOptions(tile_size=256, overlap=0, max_new_tokens=2, batch_size=3, change_masks=counted_masks)

    reference = tmp_path / "reference.geojson"
    describe_scene(tiny_model, tiny_processor, [before, after], reference, options)
    total = sum(tiles_masked)
    out = tmp_path / "resumed.geojson"
    # Process 1 of 2 finishes its share (every second tile) and its part stays: process 0 never came.
    tiles_masked.clear()
    assert describe_scene(tiny_model, tiny_processor, [before, after], out, options, share=ProcessShare(1, 2)) is None
    assert sum(tiles_masked) == total // 2 and not out.exists()
    tiles_masked.clear()
    summary = describe_scene(tiny_model, tiny_processor, [before, after], out, options)
    assert sum(tiles_masked) == total - total // 2 and summary.captioned == total
    assert out.read_bytes() == reference.read_bytes() and existing_parts(out) == []
    # A part made with other settings is not mixed in.
    describe_scene(tiny_model, tiny_processor, [before, after], out, options, share=ProcessShare(1, 2))
    with pytest.raises(ValueError, match="other inputs, model or options"):
        describe_scene(tiny_model, tiny_processor, [before, after], out,
                       dataclasses.replace(options, max_new_tokens=3))
