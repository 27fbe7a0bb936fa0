"""Bad input to every command ends in a clear error and a documented exit code, and loses or mixes nothing."""

import json
import shutil
import signal
from pathlib import Path

import pytest

import rscc.captioning
from rscc.cli import EXIT_BAD_INPUT, EXIT_TERMINATED, main
from rscc.captioning import caption_samples

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def error_of(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


@pytest.fixture
def folders(example_pairs, tmp_path):
    for folder, position in (("A", 0), ("B", 1)):
        (tmp_path / folder).mkdir()
        for pair in example_pairs:
            shutil.copyfile(pair[position], tmp_path / folder / Path(pair[0]).name)
    return [str(tmp_path / "A"), str(tmp_path / "B")]


def test_resume_refuses_captions_of_another_model_or_options(folders, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    argv = ["caption", *folders, "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {json.dumps(line["made_by"]) for line in lines} == {json.dumps({
        "model": str(Path(tiny_checkpoint).resolve()), "revision": None, "max_new_tokens": 2, "dtype": "float32"})}
    capsys.readouterr()

    other_model = shutil.copytree(tiny_checkpoint, tmp_path / "other-model")
    for changed in (["--max-new-tokens", "3"], ["--max-new-tokens", "2", "--model", str(other_model)]):
        assert main([*argv, *changed]) == EXIT_BAD_INPUT
        assert "captions of different models or options are not mixed" in error_of(capsys)
        assert [json.loads(line) for line in out.read_text().splitlines()] == lines  # kept as they were
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    assert "0 sample(s) captioned, 2 already done" in error_of(capsys)
    assert main([*argv, "--max-new-tokens", "3", "--overwrite"]) == 0
    assert {json.loads(line)["made_by"]["max_new_tokens"] for line in out.read_text().splitlines()} == {3}


def test_mask_options_that_would_do_nothing_are_refused(folders, example_pairs, tiny_checkpoint, shared_data,
                                                        tmp_path, capsys):
    label = str(shared_data / "levir_cd_samples" / "label" / "test_2_0000_0000.png")
    model = ["--model", str(tiny_checkpoint), "--max-new-tokens", "2"]
    assert main(["caption", *example_pairs[0], *model, "--mask", label]) == EXIT_BAD_INPUT
    assert "does not use an input change mask" in error_of(capsys)
    for option in (["--mask", label], ["--mask-out", str(tmp_path / "m.png")], ["--json"]):
        assert main(["caption", *folders, *model, *option]) == EXIT_BAD_INPUT
        assert f"{option[0]} is for one pair" in error_of(capsys)
    assert main(["caption", *example_pairs[0], *model, "--out", str(tmp_path / "x.jsonl")]) == EXIT_BAD_INPUT
    assert "--out is for batch mode" in error_of(capsys)


def test_a_manifests_masks_reach_a_filter_model_and_are_noted_otherwise(example_pairs, shared_data, tmp_path,
                                                                       capsys, monkeypatch):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    label = str(shared_data / "levir_cd_samples" / "label" / "test_2_0000_0000.png")
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(index), "before": pair[0], "after": pair[1],
                                            **({"mask": label} if index == 0 else {})}) + "\n"
                                for index, pair in enumerate(example_pairs)))
    given = []

    def recording(model, processor, pairs, **kwargs):
        given.append(kwargs.get("change_masks"))
        return caption_samples(model, processor, pairs, **kwargs)

    monkeypatch.setattr(rscc.captioning, "caption_samples", recording)
    filter_model = make_tiny_checkpoint(tmp_path / "filter", change_filter="drop")
    argv = ["caption", str(manifest), "--max-new-tokens", "2", "--out"]
    assert main([*argv, str(tmp_path / "a.jsonl"), "--model", str(filter_model)]) == 0
    assert given == [[label, None]]
    plain = make_tiny_checkpoint(tmp_path / "plain")
    assert main([*argv, str(tmp_path / "b.jsonl"), "--model", str(plain)]) == 0
    assert given[-1] is None and "mask column is copied to the output, not used" in error_of(capsys)


def test_outputs_never_replace_inputs_and_are_checked_before_the_model_runs(example_pairs, tiny_checkpoint,
                                                                            tmp_path, capsys):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"before": example_pairs[0][0], "after": example_pairs[0][1]}) + "\n")
    text = manifest.read_text()
    model = ["--model", str(tiny_checkpoint), "--max-new-tokens", "2"]
    assert main(["caption", str(manifest), *model, "--out", str(manifest)]) == EXIT_BAD_INPUT
    assert "is an input of this command" in error_of(capsys) and manifest.read_text() == text

    head = shutil.copytree(tiny_checkpoint, tmp_path / "head")  # the check comes before the model is read
    pair = [str(shutil.copy(path, tmp_path / f"{side}.png")) for side, path in zip("ab", example_pairs[0])]
    for mask_out, message in ((pair[1], "is an input of this command"), (str(tmp_path), "is a folder")):
        assert main(["caption", *pair, "--model", str(head), "--mask-out", mask_out]) == EXIT_BAD_INPUT
        assert message in error_of(capsys)
    assert Path(pair[1]).read_bytes() == Path(example_pairs[0][1]).read_bytes()


def test_mask_out_into_a_new_folder_keeps_the_caption(example_pairs, tmp_path, capsys):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    head = make_tiny_checkpoint(tmp_path / "head", use_change_head=True)
    mask_out = tmp_path / "new" / "folder" / "mask.png"
    argv = ["caption", *example_pairs[0], "--model", str(head), "--mask-out", str(mask_out), "--max-new-tokens", "2"]
    assert main(argv) == 0 and mask_out.is_file() and capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--device", "cuda"], "no such device"),
        (["--device", "tpu:0"], "not a torch device|cpu, cuda or mps"),
        (["--batch-size", "0"], "must be at least 1"),
        (["--max-new-tokens", "-3"], "must be at least 1"),
    ],
)
def test_bad_device_and_counts_are_usage_errors(option, message, example_pairs, tiny_checkpoint, capsys,
                                                monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU build, on any machine
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", *example_pairs[0], "--model", str(tiny_checkpoint), *option])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert option[0] in capsys.readouterr().err


def _break_config(folder):
    (folder / "config.json").write_text("{not json")


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 100)


def _change_shape(folder):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = config["text_config"]["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(config))


def _drop_a_weight(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights[sorted(weights)[0]]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "damage, message",
    [
        (_break_config, "cannot be loaded"),
        (_remove("config.json"), "lacks its config"),
        (_remove("model.safetensors"), "lacks its weights"),
        (_truncate_weights, "cannot be loaded"),
        (_garbage_weights, "cannot be loaded"),
        (_remove("tokenizer.json"), "lacks its tokenizer"),
        (_remove("processor_config.json"), "lacks its image processor settings"),
        (_change_shape, "cannot be loaded|of another shape"),
        (_drop_a_weight, "missing from its weights"),
    ],
)
def test_every_broken_model_folder_is_exit_2_naming_the_folder(damage, message, example_pairs, tiny_checkpoint,
                                                               tmp_path, capsys):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    damage(folder)
    assert main(["caption", *example_pairs[0], "--model", str(folder)]) == EXIT_BAD_INPUT
    error = error_of(capsys)
    assert str(folder) in error and __import__("re").search(message, error), error


@pytest.mark.parametrize("model", ["./runs/stage3", "/nowhere/at/all", "runs/stage3/checkpoint-100"])
def test_a_missing_local_model_folder_is_named_as_a_folder(model, example_pairs, capsys):
    assert main(["caption", *example_pairs[0], "--model", model]) == EXIT_BAD_INPUT
    assert f"model folder {model} does not exist" in error_of(capsys)


def test_scene_terminated_by_sigterm_leaves_nothing(shared_data, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from rscc.scene import describe as scene_captioning

    chips = shared_data / "geotiff_xview2"
    calls = []

    def terminated_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return rscc.captioning.describe_changes(*args, **kwargs)

    monkeypatch.setattr(scene_captioning, "describe_changes", terminated_on_second_batch)
    out = tmp_path / "out" / "changes.geojson"
    argv = ["scene", str(chips / "pre" / "0_pre.tif"), str(chips / "post" / "0_post.tif"), "--out", str(out),
            "--model", str(tiny_checkpoint), "--tile-size", "256", "--batch-size", "1", "--max-new-tokens", "1"]
    handler = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's when an earlier test started Ray
    assert main(argv) == EXIT_TERMINATED
    assert "interrupted" in error_of(capsys) and list(out.parent.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's handler is gone afterwards


@pytest.mark.parametrize("tile_size", ["0", "1", "31"])
def test_scene_tile_sizes_below_the_minimum_are_refused(tile_size, shared_data, tiny_checkpoint, tmp_path, capsys):
    chips = shared_data / "geotiff_xview2"
    argv = ["scene", str(chips / "pre" / "0_pre.tif"), str(chips / "post" / "0_post.tif"), "--out",
            str(tmp_path / "c.geojson"), "--model", str(tiny_checkpoint), "--tile-size", tile_size]
    assert main(argv) == EXIT_BAD_INPUT
    assert f"--tile-size must be at least 32 pixels, got {tile_size}" in error_of(capsys)
    assert not (tmp_path / "c.geojson").exists()


def test_scene_out_onto_its_own_input_is_refused(shared_data, tiny_checkpoint, tmp_path, capsys):
    before = shutil.copy(shared_data / "geotiff_xview2" / "pre" / "0_pre.tif", tmp_path / "before.tif")
    content = Path(before).read_bytes()
    argv = ["scene", str(before), str(shared_data / "geotiff_xview2" / "post" / "0_post.tif"), "--out", str(before),
            "--model", str(tiny_checkpoint)]
    assert main(argv) == EXIT_BAD_INPUT
    assert "is an input of this command" in error_of(capsys) and Path(before).read_bytes() == content


@pytest.fixture
def eval_files(shared_data, tmp_path):
    """Three real LEVIR-CC test entries as references, and predictions for them."""
    captions = json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())
    entries = [entry for entry in captions["images"] if entry["split"] == "test"][:3]
    references = tmp_path / "refs.json"
    references.write_text(json.dumps({"images": entries}))
    ids = [Path(entry["filename"]).stem for entry in entries]
    return references, ids


def _eval(references, predictions, tmp_path, rows):
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return main(["eval", "--predictions", str(predictions), "--references", str(references), "--metrics", "BLEU-4"])


@pytest.mark.parametrize(
    "caption, message",
    [(None, "line 2: caption must be text, got null"), (["a", "road"], 'line 2: caption must be text, got \\["a"')],
)
def test_eval_refuses_captions_that_are_not_text(caption, message, eval_files, tmp_path, capsys):
    references, ids = eval_files
    rows = [{"id": ids[0], "caption": "a road is built"}, {"id": ids[1], "caption": caption},
            {"id": ids[2], "caption": "houses appear"}]
    assert _eval(references, tmp_path / "preds.jsonl", tmp_path, rows) == EXIT_BAD_INPUT
    assert __import__("re").search(message, error_of(capsys))


def test_eval_refuses_empty_references_and_names_bad_entries(eval_files, tmp_path, capsys):
    references, ids = eval_files
    content = json.loads(references.read_text())
    for sentence in content["images"][1]["sentences"]:
        sentence["raw"] = "  "
    references.write_text(json.dumps(content))
    rows = [{"id": pair_id, "caption": "a road is built"} for pair_id in ids]
    assert _eval(references, tmp_path / "preds.jsonl", tmp_path, rows) == EXIT_BAD_INPUT
    assert "1 reference pairs have no reference caption, or an empty one" in error_of(capsys)
    content["images"][1]["sentences"] = [{"raw": None}]
    references.write_text(json.dumps(content))
    assert _eval(references, tmp_path / "preds.jsonl", tmp_path, rows) == EXIT_BAD_INPUT
    assert "images[1] is not an entry of the form" in error_of(capsys)


def test_eval_names_a_predictions_file_that_is_not_utf8(eval_files, tmp_path, capsys):
    references, ids = eval_files
    predictions = tmp_path / "preds.jsonl"
    predictions.write_bytes(f'{{"id": "{ids[0]}", "caption": "caf\u00e9"}}\n'.encode("latin-1"))
    assert main(["eval", "--predictions", str(predictions), "--references", str(references)]) == EXIT_BAD_INPUT
    assert "preds.jsonl: line 1 is not UTF-8" in error_of(capsys)


@pytest.mark.parametrize("damage", [_break_config, _garbage_weights, _remove("tokenizer.json")])
def test_publish_of_a_broken_folder_is_bad_input_not_a_hub_failure(damage, tiny_checkpoint, tmp_path, capsys):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    damage(folder)
    argv = ["publish", str(folder), "--repo-id", "user/name", "--dry-run", "--out", str(tmp_path / "hub")]
    assert main(argv) == EXIT_BAD_INPUT
    assert str(folder) in error_of(capsys) and not (tmp_path / "hub").exists()


def test_tiny_checkpoint_never_writes_over_an_existing_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"precious": true}')
    assert main(["tiny-checkpoint", str(tmp_path / "mine")]) == EXIT_BAD_INPUT
    assert "not an empty folder" in error_of(capsys)
    assert (tmp_path / "mine" / "config.json").read_text() == '{"precious": true}'


def test_caption_of_a_manifest_with_an_unclosed_quote_captions_nothing(example_pairs, tiny_checkpoint, tmp_path,
                                                                       capsys):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("before,after,caption\n" + "".join(
        f'{before},{after},{caption}\n' for (before, after), caption in
        zip(example_pairs * 2, ["a road", '"houses appear', "trees", "more trees"])))
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(manifest), "--model", str(tiny_checkpoint), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "row after line 2 is not valid CSV" in error_of(capsys) and not out.exists()


def test_describe_changes_refuses_masks_that_a_model_would_ignore(tiny_model, tiny_processor, example_pairs,
                                                                 shared_data):
    from rscc.errors import RsccInputError
    from rscc.captioning import describe_changes

    label = shared_data / "levir_cd_samples" / "label" / "test_2_0000_0000.png"
    with pytest.raises(RsccInputError, match="change_masks: this model's token filter does not take input masks"):
        describe_changes(tiny_model, tiny_processor, example_pairs[:1], change_masks=[label])


def test_a_dataset_folder_that_does_not_exist_is_named_as_such(tmp_path):
    from rscc.data import load_change_dataset
    from rscc.errors import RsccInputError

    with pytest.raises(RsccInputError, match=f"{tmp_path / 'levir_ccc'}.*no such local folder"):
        load_change_dataset(tmp_path / "levir_ccc", split="train")


@pytest.mark.parametrize("prediction", [[[0.2, 0.9]], [[float("nan"), 1.0]]])
def test_change_detection_metrics_refuse_probabilities_and_nan(prediction):
    import numpy as np

    from rscc.metrics import ChangeDetectionMetrics

    with pytest.raises(ValueError, match="not whole class indices|outside 0..1"):
        ChangeDetectionMetrics().update(np.array(prediction), np.array([[0, 1]]))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--value-range", "0", "3000"], "--value-range stretch data deeper than 8 bits"),
        (["--percentiles", "1", "99"], "--percentiles stretch data deeper than 8 bits"),
        (["--assume-aligned"], "--assume-aligned is for rasters without a CRS"),
    ],
)
def test_scene_options_these_rasters_would_ignore_are_refused(options, message, shared_data, tiny_checkpoint,
                                                              tmp_path, capsys):
    chips = shared_data / "geotiff_xview2"  # 8-bit and georeferenced
    argv = ["scene", str(chips / "pre" / "0_pre.tif"), str(chips / "post" / "0_post.tif"), "--out",
            str(tmp_path / "c.geojson"), "--model", str(tiny_checkpoint), *options]
    assert main(argv) == EXIT_BAD_INPUT
    assert message in error_of(capsys) and not (tmp_path / "c.geojson").exists()


@pytest.mark.parametrize(
    "options, message",
    [(["--vocab", "v.json"], "--vocab is used by --convention vocab-ids only"),
     (["--human-agreement", "--keep-duplicates"], "--keep-duplicates applies to --predictions")],
)
def test_eval_options_that_would_be_ignored_are_refused(options, message, eval_files, tmp_path, capsys):
    references, ids = eval_files
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps({"id": pair_id, "caption": "a road"}) + "\n" for pair_id in ids))
    source = [] if "--human-agreement" in options else ["--predictions", str(predictions)]
    assert main(["eval", *source, "--references", str(references), *options]) == EXIT_BAD_INPUT
    assert message in error_of(capsys)


@pytest.mark.parametrize("option", [["--batch-size", "4"], ["--progress"], ["--overwrite"]])
def test_batch_options_on_one_pair_are_refused(option, example_pairs, tiny_checkpoint, capsys):
    assert main(["caption", *example_pairs[0], "--model", str(tiny_checkpoint), *option]) == EXIT_BAD_INPUT
    assert f"{option[0]} is for batch mode" in error_of(capsys)
