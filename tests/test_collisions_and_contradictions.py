"""Issue 26: nothing lost when runs collide, files are corrupt or options contradict (one test per class)."""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from PIL import Image

from rscc.batch import SampleRecord, caption_records, samples_from_manifest
from rscc.cli import EXIT_BAD_INPUT, EXIT_OK, main
from rscc.data.ccexpert import ccexpert_records
from rscc.data.from_masks import parse_classes
from rscc.data.manifest import manifest_records
from rscc.data.mixture import MixtureComponent, check_shards
from rscc.data.schema import DataInputError
from rscc.imagery import SceneInputError
from rscc.launch import report_process_mismatch
from rscc.output_lock import lock_path, output_lock
from rscc.processing_rscc import RsccInputError, load_image
from rscc.processor_match import check_processor_matches
from rscc.scene import SceneSeries

REPO = Path(__file__).resolve().parents[1]


def error_of(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


def truncated_copy(source, path: Path, keep: float = 0.6) -> Path:
    data = Path(source).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---- Two runs into one output ------------------------------------------------------------------------------------


@pytest.fixture
def eval_command(shared_data, tmp_path):
    captions = json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())
    entries = [entry for entry in captions["images"] if entry["split"] == "test"][:2]
    (tmp_path / "refs.json").write_text(json.dumps({"images": entries}))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": Path(e["filename"]).stem, "caption": "a road"}) + "\n"
                                              for e in entries))
    return ["eval", "--predictions", str(tmp_path / "p.jsonl"), "--references", str(tmp_path / "refs.json"),
            "--metrics", "BLEU-4", "--output", str(tmp_path / "report.json")]


def holding_the_lock(out: Path) -> subprocess.Popen:
    """Another process that holds the lock of `out` until its stdin closes."""
    code = ("import sys\nfrom rscc.output_lock import output_lock\n"
            f"with output_lock({str(out)!r}, 'caption'):\n    print('held', flush=True)\n    sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_into_a_held_output_is_refused_naming_the_holder(eval_command, tmp_path, capsys):
    holder = holding_the_lock(tmp_path / "report.json")
    try:
        assert main(eval_command) == EXIT_BAD_INPUT
        error = error_of(capsys)
        assert "report.json is being written by another run" in error and f"pid {holder.pid}" in error
        assert not (tmp_path / "report.json").exists()
    finally:
        holder.communicate("")
    assert main(eval_command) == EXIT_OK and (tmp_path / "report.json").is_file()
    assert not lock_path(tmp_path / "report.json").exists()  # released and removed


def test_the_lock_of_a_killed_run_is_taken_over(eval_command, tmp_path, capsys):
    holder = holding_the_lock(tmp_path / "report.json")
    holder.kill()
    holder.wait()
    assert lock_path(tmp_path / "report.json").is_file()  # left behind, its holder gone
    assert main(eval_command) == EXIT_OK
    error = error_of(capsys)
    assert f"was left by a run that stopped without releasing it (pid {holder.pid}" in error
    assert "taking it over" in error and not lock_path(tmp_path / "report.json").exists()


def test_the_processes_of_one_run_share_its_lock(tmp_path):
    with output_lock(tmp_path / "o.jsonl", "caption"):
        with output_lock(tmp_path / "o.jsonl", "caption", is_main=False):  # another rank: writes under it
            pass
        with pytest.raises(RsccInputError, match="being written by another run"):
            with output_lock(tmp_path / "o.jsonl", "caption"):
                pass


# ---- Corrupt image files ------------------------------------------------------------------------------------------


def test_a_truncated_png_is_refused_not_decoded_by_gdal(example_pairs, tmp_path):
    cut = truncated_copy(example_pairs[0][1], tmp_path / "cut.png")
    with pytest.raises(RsccInputError, match=r"cut\.png is truncated or corrupt: Pillow's PNG decoder"):
        load_image(cut, name="AFTER")


def test_gdal_errors_about_a_file_are_errors_naming_it(shared_data, tmp_path):
    cut = truncated_copy(shared_data / "geotiff_xview2" / "post" / "0_post.tif", tmp_path / "cut.tif", keep=0.5)
    with pytest.raises(RsccInputError, match=r"cut\.tif.*GDAL.*TIFFReadEncodedStrip"):
        load_image(cut, name="AFTER")


def test_a_truncated_date_of_a_batch_is_exit_2_naming_it(example_pairs, tiny_checkpoint, tmp_path, capsys):
    cut = truncated_copy(example_pairs[0][1], tmp_path / "cut.png")
    assert main(["caption", example_pairs[0][0], str(cut), "--model", str(tiny_checkpoint),
                 "--max-new-tokens", "2"]) == EXIT_BAD_INPUT
    assert "cut.png is truncated or corrupt" in error_of(capsys)


# ---- Contradictions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes, both", [
    ("255=building,255=road", ("'255=building'", "'255=road'")),
    ("128=road,255=road", ("'128=road'", "'255=road'")),
    ("0/0/255=water,0/0/255=sea,255/255/255=unchanged", ("'0/0/255=water'", "'0/0/255=sea'")),
])
def test_a_class_level_or_name_given_twice_is_refused_naming_both(classes, both):
    with pytest.raises(DataInputError) as error:
        parse_classes(classes)
    assert all(side in str(error.value) for side in both)


def test_two_colours_may_both_be_unchanged():
    levels, names = parse_classes("255/255/255=unchanged,0/0/0=unchanged,0/0/255=water")
    assert levels[(255, 255, 255)] == levels[(0, 0, 0)] == 0 and names == {1: "water"}


def test_the_same_input_twice_to_a_converter_is_refused(example_pairs, tmp_path, capsys):
    manifest = tmp_path / "p.csv"
    manifest.write_text("before,after,caption\n" + "".join(f"{b},{a},houses appear\n" for b, a in example_pairs))
    code = main(["data", "manifest", "--manifest", str(manifest), "--manifest", f"test={manifest}",
                 "--out", str(tmp_path / "out")])
    assert code == EXIT_BAD_INPUT
    assert f"--manifest {manifest} and --manifest test={manifest} are the same input" in error_of(capsys)
    assert not (tmp_path / "out").exists()


def test_an_id_of_0_is_an_id(example_pairs, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": number, "before": b, "after": a, "caption": "x"}) + "\n"
                                for number, (b, a) in enumerate(example_pairs)))
    assert [record.id for record in samples_from_manifest(manifest)] == ["0", "1"]
    assert [record.id for record in manifest_records(manifest)] == ["0", "1"]


def test_image_paths_leaving_the_image_root_are_refused_unless_allowed(example_pairs, tmp_path):
    (tmp_path / "root").mkdir()
    shutil.copy(example_pairs[0][1], tmp_path / "root" / "after.png")
    records = tmp_path / "r.json"
    records.write_text(json.dumps([{"uid": 1, "img1_path": "../elsewhere.png", "img2_path": "after.png",
                                    "change_caption": ["a road"]}]))
    with pytest.raises(DataInputError, match=r"'\.\./elsewhere\.png' leads outside --image-root .*root"):
        list(ccexpert_records(records, image_root=tmp_path / "root"))
    (record,) = ccexpert_records(records, image_root=tmp_path / "root", allow_outside_root=True)
    assert record.before == tmp_path / "root" / "../elsewhere.png"


def write_raster(path: Path, values: np.ndarray, **profile) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=values.shape[2], height=values.shape[1],
                           count=values.shape[0], dtype=values.dtype, **profile) as raster:
            raster.write(values)
    return path


def test_assume_aligned_with_two_crs_among_the_rasters_is_refused_naming_both(shared_data, tmp_path):
    pre = shared_data / "geotiff_xview2" / "pre" / "0_pre.tif"
    with rasterio.open(pre) as source:
        values, transform = source.read(), source.transform
    other = write_raster(tmp_path / "other.tif", values, crs="EPSG:3857", transform=transform)
    no_crs = write_raster(tmp_path / "none.tif", values)
    with pytest.raises(SceneInputError) as error:
        SceneSeries([pre, other, no_crs], assume_aligned=True)
    message = str(error.value)
    assert "--assume-aligned" in message and "DATE1" in message and "EPSG:32615" in message
    assert "DATE2" in message and "EPSG:3857" in message


def test_a_processor_of_other_settings_is_refused_naming_the_setting():
    config = SimpleNamespace(visual_tokens="change", pair_encoding="images")
    with pytest.raises(RsccInputError, match=r"visual_tokens='pair' and the model has visual_tokens='change'.*"
                                             r"RsccProcessor\.from_pretrained"):
        check_processor_matches(config, SimpleNamespace(visual_tokens="pair", pair_encoding="images"))
    check_processor_matches(SimpleNamespace(), SimpleNamespace(visual_tokens="pair"))  # stock config: no settings


# ---- Resume notices changed inputs --------------------------------------------------------------------------------


def test_resume_captions_again_the_samples_whose_files_changed(example_pairs, tmp_path, capsys):
    dates = []
    for index, path in enumerate([*example_pairs[0], example_pairs[1][1]]):
        dates.append(tmp_path / f"d{index}.png")
        shutil.copy(path, dates[-1])
    records = [SampleRecord("s", (str(dates[0]), str(dates[1]))), SampleRecord("t", (str(dates[0]), str(dates[2])))]
    calls = []

    def caption_batch(batch):
        calls.extend(record.id for record in batch)
        return [f"caption {len(calls)}" for _ in batch]

    out = tmp_path / "o.jsonl"
    assert caption_records(records, caption_batch, out=out, record_inputs=True).captioned == 2
    future = time.time() + 60
    os.utime(dates[1], (future, future))  # touched: same content, not captioned again
    assert caption_records(records, caption_batch, out=out, record_inputs=True).captioned == 0
    shutil.copy(example_pairs[1][0], dates[2])  # replaced in place
    summary = caption_records(records, caption_batch, out=out, record_inputs=True)
    assert (summary.captioned, summary.resumed) == (1, 1) and calls == ["s", "t", "t"]
    assert f"'t' is captioned again: {dates[2]} changed since it was captioned" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["s", "t"]  # input order kept
    assert lines[1]["caption"] == "caption 3" and set(lines[1]["input_fingerprints"]) == {str(d) for d in dates[::2]}


# ---- The launcher -------------------------------------------------------------------------------------------------


def test_one_process_started_for_several_asked_is_reported(monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    report_process_mismatch(1)
    error = capsys.readouterr().err
    assert "started one" in error and "add --multi_gpu" in error
    monkeypatch.delenv("MASTER_PORT")
    report_process_mismatch(1)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_rscc_launch_exits_with_the_commands_code(eval_command, tmp_path):
    argv = [sys.executable, "-m", "rscc", "launch", "--cpu", "--num_processes", "1", "-m", "rscc",
            *eval_command[:1], "--predictions", str(tmp_path / "gone.jsonl"), *eval_command[3:]]
    child = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                           timeout=300)
    assert child.returncode == EXIT_BAD_INPUT and "gone.jsonl" in child.stderr and "Traceback" not in child.stderr


# ---- Legitimate inputs work ---------------------------------------------------------------------------------------


def test_an_rgba_date_that_needs_resampling_uses_its_alpha_as_validity(shared_data, tmp_path):
    from rasterio.warp import calculate_default_transform, reproject

    pre, post = (shared_data / "geotiff_xview2" / side for side in ("pre/0_pre.tif", "post/0_post.tif"))
    with rasterio.open(post) as source:
        transform, width, height = calculate_default_transform(source.crs, "EPSG:3857", source.width, source.height,
                                                               *source.bounds)
        values = np.zeros((4, height, width), np.uint8)
        reproject(source.read(), values[:3], src_transform=source.transform, src_crs=source.crs,
                  dst_transform=transform, dst_crs="EPSG:3857")
    values[3] = 255
    values[3, : height // 2] = 0  # the northern half is not valid
    rgba = write_raster(tmp_path / "rgba.tif", values, crs="EPSG:3857", transform=transform, photometric="RGB",
                        alpha="YES")
    with SceneSeries([pre, rgba]) as scene:
        _, valid = scene.dates[1].read(scene.window)
    assert valid[: valid.shape[0] // 3].mean() < 0.05 and valid[-valid.shape[0] // 3:].mean() > 0.9


def test_a_broken_shard_is_named_with_how_to_rebuild_it(example_pairs, tmp_path, capsys):
    manifest = tmp_path / "p.csv"
    manifest.write_text("before,after,caption\n" + "".join(f"{b},{a},houses appear\n" for b, a in example_pairs))
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(tmp_path / "built")]) == EXIT_OK
    (shard,) = (tmp_path / "built" / "data").glob("*.parquet")
    check_shards(MixtureComponent(str(tmp_path / "built")))
    truncated_copy(shard, shard, keep=0.5)
    with pytest.raises(DataInputError, match=rf"{shard.name}: a shard of .*built.*rebuild .*rscc data"):
        check_shards(MixtureComponent(str(tmp_path / "built")))


def test_binary_masks_of_0_and_1_are_stored_as_0_and_255(shared_data, tmp_path, capsys):
    samples = shared_data / "levir_cd_samples"
    root = tmp_path / "cd"
    names = (samples / "list" / "demo.txt").read_text().split()[:2]
    for side in ("A", "B", "label"):
        (root / side).mkdir(parents=True)
        for name in names:
            if side == "label":
                grey = np.asarray(Image.open(samples / side / name).convert("L"))
                Image.fromarray((grey > 0).astype(np.uint8)).save(root / side / name)
            else:
                shutil.copy(samples / side / name, root / side / name)
    assert main(["data", "from-masks", "--root", str(root), "--out", str(tmp_path / "out")]) == EXIT_OK
    from rscc.data import load_change_dataset

    for example in load_change_dataset(str(tmp_path / "out"), split="train"):
        assert set(np.unique(np.asarray(example["change_mask"])).tolist()) <= {0, 255}


def test_the_demo_shows_the_processors_warnings_about_the_inputs(example_pairs, tmp_path):
    from rscc.tiny_checkpoints import make_tiny_checkpoint
    from rscc.demo import Captioner
    from rscc.loading import load_captioner

    folder = make_tiny_checkpoint(tmp_path / "filter", change_filter="drop")
    model, processor = load_captioner(str(folder))
    mask = tmp_path / "m.png"
    Image.fromarray(np.tile(np.array([0, 255], np.uint8), (60, 50))).save(mask)
    caption, _, _, message = Captioner(model, processor, "filter", max_new_tokens=2).describe(*example_pairs[0], mask)
    assert caption and message.startswith("**Note:**") and "mask of 60x100" in message and "resized" in message


def test_rscc_launch_exits_with_the_code_of_the_process_that_failed_first():
    from rscc.launch import _exit_code

    # rank 1 refused its input at t=5; the launcher then stopped rank 0 with SIGTERM at t=6
    assert _exit_code([(-15, 6.0), (2, 5.0)]) == EXIT_BAD_INPUT
    assert _exit_code([(-15, 6.0)]) == 143 and _exit_code([(3, 2.0), (2, 1.0)]) == 2
