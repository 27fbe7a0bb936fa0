"""`rscc caption` in batch mode: folders and manifests (pairs and series of dates) in, resumable JSON lines out."""

import json
import re
import shutil

import pytest

import rscc.captioning
from rscc.batch import caption_records, samples_from_manifest
from rscc.caption_files import read_prediction_records
from rscc.cli import main
from rscc.captioning import caption_samples
from rscc.parallel import ProcessShare

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
    """Wraps the shared caption_samples to count the pairs it is given (and optionally interrupt a run)."""
    calls = {"pairs": [], "calls": 0, "interrupt_on_call": None}

    def counting(model, processor, pairs, **kwargs):
        calls["calls"] += 1
        if calls["calls"] == calls["interrupt_on_call"]:
            raise KeyboardInterrupt
        calls["pairs"].extend(pairs)
        return caption_samples(model, processor, pairs, **kwargs)

    monkeypatch.setattr(rscc.captioning, "caption_samples", counting)
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
    assert [line["caption"] for line in lines] == caption_samples(tiny_model, tiny_processor, pairs, max_new_tokens=4)
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


@pytest.fixture(scope="module")
def real_dates(shared_data):
    """Six real LEVIR-CC images of ../shared/data: the before and after dates of three pairs, by letter."""
    images = shared_data / "levir_cc" / "images" / "train"
    names = ("train_000016.png", "train_000051.png", "train_000054.png")
    paths = [str(images / side / name) for name in names for side in ("A", "B")]
    return dict(zip("abcdef", paths))


def test_mixed_manifests_caption_pairs_and_series_each_as_alone(
    real_dates, tiny_checkpoint, tiny_model, tiny_processor, tmp_path
):
    a, b, c, d, e, f = (real_dates[letter] for letter in "abcdef")
    (tmp_path / "images").mkdir()
    for letter in "abcd":
        shutil.copyfile(real_dates[letter], tmp_path / "images" / f"{letter}.png")
    # Relative paths; rows of one file give a pair as before/after or as image_1, image_2, or a 3-date series.
    csv_manifest = tmp_path / "mixed.csv"
    csv_manifest.write_text(
        "id,before,after,image_1,image_2,image_3,caption\n"
        "pair,images/a.png,images/b.png,,,,Many buildings are constructed.\n"
        "three,,,images/c.png,images/c.png,images/d.png,A road is built.\n"
        "numbered-pair,,,images/c.png,images/d.png,,\n"
    )
    jsonl_manifest = tmp_path / "mixed.jsonl"
    jsonl_manifest.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "four", "images": [c, d, e, f]},
        {"id": "pair", "before": a, "after": b},
        {"id": "three", "images": [a, a, b], "captions": ["Many buildings are constructed."]},
    ]))
    common = ["--model", str(tiny_checkpoint), "--max-new-tokens", "4", "--batch-size", "3"]
    for manifest in (csv_manifest, jsonl_manifest):
        out = tmp_path / f"{manifest.stem}-{manifest.suffix[1:]}.jsonl"
        assert main(["caption", str(manifest), "--out", str(out), *common]) == 0
        lines = read_lines(out)
        samples = [line["images"] if "images" in line else [line["before"], line["after"]] for line in lines]
        for line, sample in zip(lines, samples):
            assert set(line) & {"before", "after", "images"} == ({"images"} if len(sample) > 2 else {"before", "after"})
        # One batch of mixed N captions each sample as it is captioned alone.
        assert [line["caption"] for line in lines] == [
            caption_samples(tiny_model, tiny_processor, [sample], max_new_tokens=4)[0] for sample in samples]
        assert [record["id"] for record in read_prediction_records(out)] == [line["id"] for line in lines]
    csv_lines = read_lines(tmp_path / "mixed-csv.jsonl")
    images = tmp_path / "images"
    assert [line["id"] for line in csv_lines] == ["pair", "three", "numbered-pair"]
    assert csv_lines[1]["images"] == [str(images / "c.png"), str(images / "c.png"), str(images / "d.png")]
    assert csv_lines[2]["before"] == str(images / "c.png") and csv_lines[1]["references"] == ["A road is built."]
    assert [len(line.get("images", "ab")) for line in read_lines(tmp_path / "mixed-jsonl.jsonl")] == [4, 2, 3]


@pytest.fixture
def series_manifest(real_dates, tmp_path):
    """A JSONL manifest of three real series (3, 2 and 4 dates), and a function that rewrites one id's images."""
    a, b, c, d, e, f = (real_dates[letter] for letter in "abcdef")
    rows = {"early": [a, b, b], "pair": [c, d], "long": [a, b, e, f]}
    manifest = tmp_path / "series.jsonl"

    def write(**changed):
        manifest.write_text("".join(json.dumps({"id": name, "images": dates}) + "\n"
                                    for name, dates in {**rows, **changed}.items()))
    write()
    return manifest, write


def test_interrupted_series_run_resumes_and_refuses_other_images_for_a_finished_id(
    series_manifest, real_dates, tiny_checkpoint, counted_captioning, tmp_path, capsys
):
    manifest, rewrite = series_manifest
    out = tmp_path / "series-captions.jsonl"
    argv = ["caption", str(manifest), "--model", str(tiny_checkpoint), "--out", str(out), "--batch-size", "1",
            "--max-new-tokens", "3"]
    counted_captioning["interrupt_on_call"] = 2
    assert main(argv) == 130
    partial = tmp_path / "series-captions.jsonl.partial"
    assert [(line["id"], len(line["images"])) for line in read_lines(partial)] == [("early", 3)]

    counted_captioning.update(pairs=[], calls=0, interrupt_on_call=None)
    assert main(argv) == 0
    assert [len(sample) for sample in counted_captioning["pairs"]] == [2, 4]  # the finished series is skipped
    assert [line["id"] for line in read_lines(out)] == ["early", "pair", "long"]
    assert "2 sample(s) captioned, 1 already done" in capsys.readouterr().err

    # The same id over other dates (the change moved from the 2nd-3rd to the 1st-2nd dates) is not that result.
    a, b = real_dates["a"], real_dates["b"]
    rewrite(early=[a, a, b])
    counted_captioning["pairs"] = []
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(r"line 1: 'early' was captioned from the images .*, and this input gives it", error), error
    assert "--overwrite" in error and counted_captioning["pairs"] == []
    assert main([*argv, "--overwrite"]) == 0 and read_lines(out)[0]["images"] == [a, a, b]


def test_data_parallel_parts_of_series_merge_in_input_order(series_manifest, tmp_path):
    manifest, _ = series_manifest
    records = samples_from_manifest(manifest)
    out = tmp_path / "captions.jsonl"

    def caption_batch(batch):
        return [f"{len(record.images)} dates" for record in batch]

    # Process 1 of 2 captions its share (the 2nd sample); the main process, run later alone, the rest and merges.
    caption_records(records, caption_batch, out, batch_size=2, share=ProcessShare(1, 2))
    summary = caption_records(records, caption_batch, out, batch_size=2)
    assert (summary.captioned, summary.resumed) == (2, 1)
    assert read_lines(out) == [record.result_line(f"{len(record.images)} dates") for record in records]
    series, pair = {"id", "images", "caption"}, {"id", "before", "after", "caption"}
    assert [set(line) for line in read_lines(out)] == [series, pair, series]


@pytest.mark.parametrize(
    "rows, message",
    [
        ("id,before,after,image_1,image_2\nx,{a},{b},{a},{b}\n",
         r"mixed.csv: line 2: gives the dates as before, after and as image_1, image_2, \.\.\.; expected one of"),
        ("id,image_1,image_2,image_3\nok,{a},{b},\nx,{a},,{b}\n",
         r"mixed.csv: line 3: the series image_1, image_3 has no image_2; expected its dates as image_1, image_2"),
        ("id,image_1,image_3\nx,{a},{b}\n", r"mixed.csv: line 2: the series image_1, image_3 has no image_2"),
        ("id,image_1,image_2\nok,{a},{b}\nx,{a},\n", r"mixed.csv: line 3: a series needs at least 2 dates, got 1"),
        ('{{"id": "x", "images": ["{a}"]}}\n', r"mixed.jsonl: line 1: a series needs at least 2 dates, got 1"),
        ('{{"id": "ok", "before": "{a}", "after": "{b}"}}\n{{"id": "x", "before": "{a}", "images": ["{a}", "{b}"]}}\n',
         r"mixed.jsonl: line 2: gives the dates as before, after and as images"),
        ('{{"id": "x", "images": "{a}"}}\n', r"mixed.jsonl: line 1: images must be text \(captions, images: lists"),
        ("id,image_1,image_2,before\nx,{a},{b},\ny,,,{a}\n",
         r"mixed.csv, line 3: needs both a 'before' and an 'after' image path, or a series of 2 or more"),
    ],
    ids=["pair-and-series", "gap-in-a-row", "gap-in-the-header", "one-date-csv", "one-date-jsonl",
         "pair-and-series-jsonl", "images-not-a-list", "half-a-pair"],
)
def test_bad_series_rows_are_named_with_their_line_and_exit_2(rows, message, real_dates, tiny_checkpoint, tmp_path,
                                                              capsys):
    suffix = "jsonl" if rows.startswith("{") else "csv"
    manifest = tmp_path / f"mixed.{suffix}"
    manifest.write_text(rows.format(a=real_dates["a"], b=real_dates["b"]))
    out = tmp_path / "out" / "captions.jsonl"
    assert main(["caption", str(manifest), "--model", str(tiny_checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1].startswith("rscc caption: error: manifest ") and "Traceback" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()
