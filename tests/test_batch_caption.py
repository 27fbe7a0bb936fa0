"""`rscc caption` in batch mode: folders and manifests in, resumable JSON lines out."""

import json
import re
import shutil

import pytest

import rscc.inference
from rscc.cli import main
from rscc.inference import caption_pairs

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NAMES = ("train_000016.png", "train_000051.png", "copy_000016.png")


@pytest.fixture
def folders(example_pairs, tmp_path):
    """LEVIR-CC's layout, A/ (before) and B/ (after), with three real pairs (one under a second name)."""
    for folder, position in (("A", 0), ("B", 1)):
        (tmp_path / folder).mkdir()
        for name, pair in zip(NAMES, [*example_pairs, example_pairs[0]]):
            shutil.copyfile(pair[position], tmp_path / folder / name)
    return tmp_path / "A", tmp_path / "B"


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def counted_captioning(monkeypatch):
    """Wraps the shared caption_pairs to count the pairs it is given (and optionally interrupt a run)."""
    calls = {"pairs": [], "calls": 0, "interrupt_on_call": None}

    def counting(model, processor, pairs, **kwargs):
        calls["calls"] += 1
        if calls["calls"] == calls["interrupt_on_call"]:
            raise KeyboardInterrupt
        calls["pairs"].extend(pairs)
        return caption_pairs(model, processor, pairs, **kwargs)

    monkeypatch.setattr(rscc.inference, "caption_pairs", counting)
    return calls


def test_folders_give_one_json_line_per_pair_with_the_shared_captioner(
    folders, tiny_checkpoint, tiny_model, tiny_processor, tmp_path, capsys
):
    out = tmp_path / "results" / "captions.jsonl"
    argv = ["caption", *map(str, folders), "--model", str(tiny_checkpoint), "--out", str(out),
            "--batch-size", "3", "--max-new-tokens", "4", "--progress"]
    assert main(argv) == 0
    lines = read_lines(out)
    assert [line["id"] for line in lines] == sorted(NAMES)
    pairs = [[line["before"], line["after"]] for line in lines]
    assert [line["caption"] for line in lines] == caption_pairs(tiny_model, tiny_processor, pairs, max_new_tokens=4)
    assert all(line["before"].startswith(str(folders[0])) for line in lines)
    error = capsys.readouterr().err
    assert "3/3" in error and "3 sample(s) captioned, 0 already done" in error
    assert sorted(p.name for p in out.parent.iterdir()) == ["captions.jsonl"]


def test_interrupted_run_resumes_without_redoing_finished_pairs(
    folders, tiny_checkpoint, counted_captioning, tmp_path, capsys
):
    out = tmp_path / "captions.jsonl"
    argv = ["caption", *map(str, folders), "--model", str(tiny_checkpoint), "--out", str(out),
            "--batch-size", "1", "--max-new-tokens", "4"]
    counted_captioning["interrupt_on_call"] = 2
    assert main(argv) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    partial = tmp_path / "captions.jsonl.partial"
    assert not out.exists() and [line["id"] for line in read_lines(partial)] == [NAMES[2]]
    with open(partial, "a") as file:
        file.write('{"id": "train_0000')  # a line cut short by the interruption

    counted_captioning.update(pairs=[], calls=0, interrupt_on_call=None)
    assert main(argv) == 0
    assert len(counted_captioning["pairs"]) == 2  # only the two pairs not done before
    assert sorted(line["id"] for line in read_lines(out)) == sorted(NAMES) and not partial.exists()
    assert "2 sample(s) captioned, 1 already done" in capsys.readouterr().err

    counted_captioning["pairs"] = []
    assert main(argv) == 0 and counted_captioning["pairs"] == []  # a finished run has nothing left to do
    assert len(read_lines(out)) == 3


def test_results_of_another_input_are_not_mixed_in(folders, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    out.write_text(json.dumps({"id": "elsewhere.png", "before": "x/elsewhere.png", "after": "y/elsewhere.png",
                               "caption": "A road is built."}) + "\n")
    argv = ["caption", *map(str, folders), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "elsewhere.png" in error and "--overwrite" in error
    assert main([*argv, "--overwrite", "--max-new-tokens", "2"]) == 0
    assert sorted(line["id"] for line in read_lines(out)) == sorted(NAMES)


def test_csv_and_jsonl_manifests_resolve_paths_and_carry_references(example_pairs, tiny_checkpoint, tmp_path):
    for name, pair in zip(("a.png", "b.png"), example_pairs):
        (tmp_path / "images").mkdir(exist_ok=True)
        shutil.copyfile(pair[0], tmp_path / "images" / f"before_{name}")
        shutil.copyfile(pair[1], tmp_path / "images" / f"after_{name}")
    csv_manifest = tmp_path / "pairs.csv"
    csv_manifest.write_text(
        "before,after,caption_1,caption_2,mask\n"
        "images/before_a.png,images/after_a.png,a row of houses is built,some houses appear,masks/a.png\n"
        "images/before_b.png,images/after_b.png,a road is built,,\n"
    )
    jsonl_manifest = tmp_path / "pairs.jsonl"
    jsonl_manifest.write_text(
        json.dumps({"id": "pair-a", "before": "images/before_a.png", "after": "images/after_a.png",
                    "captions": ["a row of houses is built", "some houses appear"]}) + "\n"
    )
    csv_out, jsonl_out = tmp_path / "csv.jsonl", tmp_path / "jsonl.jsonl"
    common = ["--model", str(tiny_checkpoint), "--max-new-tokens", "3"]
    assert main(["caption", str(csv_manifest), "--out", str(csv_out), *common]) == 0
    assert main(["caption", str(jsonl_manifest), "--out", str(jsonl_out), *common]) == 0
    first, second = read_lines(csv_out)
    assert first["id"] == "before_a" and first["before"] == str(tmp_path / "images" / "before_a.png")
    assert first["references"] == ["a row of houses is built", "some houses appear"]
    assert first["mask"] == str(tmp_path / "masks" / "a.png") and "mask" not in second
    assert second["references"] == ["a road is built"]
    (only,) = read_lines(jsonl_out)
    assert only["id"] == "pair-a" and only["references"] == first["references"]
    assert only["caption"] == first["caption"]  # the same pair gets the same caption whatever the manifest


def test_batch_without_out_prints_json_lines_and_one_pair_prints_json(folders, example_pairs, tiny_checkpoint, capsys):
    assert main(["caption", *map(str, folders), "--model", str(tiny_checkpoint), "--max-new-tokens", "2"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == sorted(NAMES)
    assert main(["caption", *example_pairs[0], "--model", str(tiny_checkpoint), "--max-new-tokens", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["before"] == example_pairs[0][0] and isinstance(result["caption"], str)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unmatched file name", "have no file of the same name in the AFTER folder .*extra.png"),
        ("unknown manifest column", "unknown column.*'msk'"),
        ("missing image in manifest", "1 image file.* not found: .*gone.png"),
        ("manifest without after", "needs the columns before and after"),
        ("duplicate ids", "id 'same' already used"),
        ("empty output path", "--out is an empty path"),
        ("one folder", "is one folder"),
        ("unreadable image", "cannot read image file .*broken.png"),
    ],
)
def test_bad_batch_input_is_a_clear_error_with_nothing_written(
    case, message, folders, example_pairs, tiny_checkpoint, tmp_path, capsys
):
    before_dir, after_dir = folders
    good = example_pairs[0]
    out = tmp_path / "out" / "captions.jsonl"
    inputs = [str(tmp_path / "pairs.jsonl")]

    def manifest(*rows):
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    if case == "unmatched file name":
        shutil.copyfile(good[0], before_dir / "extra.png")
        inputs = [str(before_dir), str(after_dir)]
    elif case == "unknown manifest column":
        manifest({"before": good[0], "after": good[1], "msk": "m.png"})
    elif case == "missing image in manifest":
        manifest({"id": "1", "before": good[0], "after": good[1]},
                 {"id": "2", "before": good[0], "after": str(tmp_path / "gone.png")})
    elif case == "manifest without after":
        manifest({"before": good[0]})
    elif case == "duplicate ids":
        manifest({"id": "same", "before": good[0], "after": good[1]},
                 {"id": "same", "before": good[1], "after": good[0]})
    elif case == "empty output path":
        manifest({"before": good[0], "after": good[1]})
        out = ""
    elif case == "one folder":
        inputs = [str(before_dir)]
    elif case == "unreadable image":
        (tmp_path / "broken.png").write_text("not a png")
        manifest({"before": good[0], "after": str(tmp_path / "broken.png")})
    argv = ["caption", *inputs, "--model", str(tiny_checkpoint), "--out", str(out), "--max-new-tokens", "2"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1].startswith("rscc caption: error: ") and "Traceback" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
