"""Tests of rscc.data on the real data in ../shared/data: converters, validation, builds, views and the CLI."""

import csv
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard
from PIL import Image
from torch.utils.data import DataLoader

from rscc.caption_text import is_no_change_caption
from rscc.cli import main
from rscc.data import (
    FEATURES,
    InvalidRecordsError,
    build_dataset,
    caption_view,
    ccexpert_records,
    dubai_cc_records,
    levir_cc_records,
    load_change_dataset,
    manifest_records,
    normalize_caption,
)

REAL_PAIRS = ("train_000016.png", "train_000051.png", "train_000054.png")


def _levir_entries(shared_data: Path, filenames) -> list:
    captions = json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())
    return [entry for entry in captions["images"] if entry["filename"] in filenames]


def make_levir_root(shared_data: Path, root: Path, masks: dict = None) -> Path:
    """A LEVIR-CC folder with the 3 real pairs and their caption entries; `masks` maps filename -> mask file."""
    for side in ("A", "B"):
        (root / "images" / "train" / side).mkdir(parents=True)
        for filename in REAL_PAIRS:
            shutil.copy(shared_data / "levir_cc" / "images" / "train" / side / filename,
                        root / "images" / "train" / side / filename)
    if masks is not None:
        (root / "images" / "train" / "label").mkdir()
        for filename, mask in masks.items():
            shutil.copy(mask, root / "images" / "train" / "label" / filename)
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": _levir_entries(shared_data, REAL_PAIRS)}))
    return root


def image_bytes(out: Path, split: str, column: str) -> dict:
    """{id: stored encoded bytes} of one image column, read from the Parquet shards without `datasets`."""
    stored = {}
    for shard in sorted((out / "data").glob(f"{split}-*.parquet")):
        table = pq.read_table(shard, columns=["id", column]).to_pylist()
        stored.update({row["id"]: row[column]["bytes"] if row[column] else None for row in table})
    return stored


@pytest.fixture(scope="module")
def levir_build(shared_data, tmp_path_factory):
    """LEVIR-CC built from the 3 real pairs, and its loaded train split."""
    temp = tmp_path_factory.mktemp("levir")
    root = make_levir_root(shared_data, temp / "root")
    summary = build_dataset(levir_cc_records(root), temp / "out")
    dataset = load_change_dataset(temp / "out", split="train", cache_dir=temp / "cache")
    return root, summary, dataset


def test_levir_cc_caption_file_statistics(shared_data):
    records = list(levir_cc_records(shared_data / "levir_cc"))
    assert Counter(record.split for record in records) == {"train": 6815, "validation": 1333, "test": 1929}
    assert sum(record.change_flag == 0 for record in records) == 5039
    assert len({record.id for record in records}) == len(records) == 10077
    assert all(len(record.captions) == 5 for record in records)
    # The stored flag is what the derivation used for files without one would give.
    assert all((record.change_flag == 0) == all(map(is_no_change_caption, record.captions)) for record in records)
    # Records are joined on filename; only the 3 real pairs have images here.
    assert sorted(record.id for record in records if Path(record.before).exists()) == [
        Path(name).stem for name in REAL_PAIRS]


def test_levir_cc_build_loads_with_datasets(levir_build, shared_data):
    root, summary, dataset = levir_build
    assert summary.split_sizes == {"train": 3} and not summary.skipped
    assert dataset.features == FEATURES
    assert sorted(dataset["id"]) == sorted(Path(name).stem for name in REAL_PAIRS)
    entries = {Path(entry["filename"]).stem: entry for entry in _levir_entries(shared_data, REAL_PAIRS)}
    for example in dataset:
        source_file = root / "images" / "train" / "A" / f"{example['id']}.png"
        assert isinstance(example["before"], Image.Image) and example["before"].size == (256, 256)
        assert np.array_equal(np.asarray(example["before"]), np.asarray(Image.open(source_file)))
        assert example["change_mask"] is None
        assert example["captions"] == [" ".join(s["raw"].split()) for s in entries[example["id"]]["sentences"]]
        assert example["change_flag"] == entries[example["id"]]["changeflag"]
        assert example["source"] == "levir_cc"
    # Stored without re-encoding: the Parquet cells hold the files' bytes.
    out = summary.out_dir
    for column, side in (("before", "A"), ("after", "B")):
        assert image_bytes(out, "train", column) == {
            Path(name).stem: (root / "images" / "train" / side / name).read_bytes() for name in REAL_PAIRS}


def test_levir_cc_card_yaml_is_what_the_hub_reads(levir_build):
    _, summary, _ = levir_build
    card = DatasetCard.load(summary.out_dir / "README.md")
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert configs == {"default": {"data_files": [{"split": "train", "path": "data/train-*"}]}}
    info = DatasetInfosDict.from_dataset_card_data(card.data)["default"]
    assert info.features == FEATURES
    assert {name: split.num_examples for name, split in info.splits.items()} == {"train": 3}
    assert info.download_size == sum(p.stat().st_size for p in (summary.out_dir / "data").iterdir())
    assert card.data.license == "other" and card.data.license_link == "README"
    assert "image-to-text" in card.data.task_categories
    assert re.search(r"\| train \| levir_cc \| 3 \| 15 \| 0 \| 0 \|", card.text)


def test_full_caption_file_fails_listing_every_missing_pair_then_skips_them(shared_data, tmp_path):
    root = make_levir_root(shared_data, tmp_path / "root")
    records = list(levir_cc_records(root, shared_data / "levir_cc" / "LevirCCcaptions.json"))
    with pytest.raises(InvalidRecordsError) as failure:
        build_dataset(records, tmp_path / "out")
    problems = failure.value.problems
    missing = Counter(problem.id for problem in problems if problem.kind == "missing image")
    assert len(missing) == 10077 - 3 and set(missing.values()) == {2}  # before and after of each
    assert len(problems) == 2 * (10077 - 3)
    assert any(p.file == str(root / "images" / "test" / "B" / "test_002135.png") for p in problems)
    message = str(failure.value)
    assert f"{len(problems)} problem(s) in {10077 - 3} record(s)" in message
    assert len(message.splitlines()) < 40  # a count summary, not 20k lines
    assert not (tmp_path / "out").exists()

    summary = build_dataset(records, tmp_path / "out", skip_invalid=True)
    assert summary.split_sizes == {"train": 3}
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{10077 - 3} invalid record(s) were left out" in card
    listed = set(re.findall(r"^- `([^`]+)`:", card, flags=re.M))
    assert listed == set(missing)


def test_levir_cc_change_flag_is_derived_when_absent(shared_data, tmp_path):
    root = make_levir_root(shared_data, tmp_path / "root")
    entries = _levir_entries(shared_data, REAL_PAIRS)
    # A no-change entry of the real file, given the images of a real pair so that it builds.
    no_change = next(e for e in json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())["images"]
                     if e["split"] == "train" and e["changeflag"] == 0)
    for side in ("A", "B"):
        folder = root / "images" / "train" / side
        shutil.copy(folder / REAL_PAIRS[0], folder / no_change["filename"])
    for entry in entries + [no_change]:
        del entry["changeflag"]
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": entries + [no_change]}))
    assert {record.change_flag for record in levir_cc_records(root)} == {None}
    build_dataset(levir_cc_records(root), tmp_path / "out")
    flags = dict(zip(*pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet",
                                    columns=["id", "change_flag"]).to_pydict().values()))
    assert flags == {**{Path(name).stem: 1 for name in REAL_PAIRS}, Path(no_change["filename"]).stem: 0}


def test_levir_mci_label_masks_are_kept_and_checked(shared_data, tmp_path):
    # LEVIR-CD's 0/255 masks (256x256) stand in for LEVIR-MCI labels of the 3 pairs.
    masks = sorted((shared_data / "levir_cd_samples" / "label").glob("*.png"))[:3]
    root = make_levir_root(shared_data, tmp_path / "root", dict(zip(REAL_PAIRS, masks)))
    summary = build_dataset(levir_cc_records(root), tmp_path / "out")
    assert image_bytes(summary.out_dir, "train", "change_mask") == {
        Path(name).stem: mask.read_bytes() for name, mask in zip(REAL_PAIRS, masks)}
    dataset = load_change_dataset(summary.out_dir, split="train", cache_dir=tmp_path / "cache")
    assert {example["change_mask"].size for example in dataset} == {(256, 256)}

    (root / "images" / "train" / "label" / REAL_PAIRS[1]).unlink()
    with pytest.raises(InvalidRecordsError) as failure:
        build_dataset(levir_cc_records(root), tmp_path / "out2")
    [problem] = failure.value.problems
    assert (problem.kind, problem.id) == ("missing mask", Path(REAL_PAIRS[1]).stem)
    assert problem.file.endswith(f"label/{REAL_PAIRS[1]}")


def test_every_kind_of_bad_record_is_reported_with_file_and_id(shared_data, tmp_path):
    levir, levir_cd = shared_data / "levir_cc" / "images" / "train", shared_data / "levir_cd_samples"
    pair = {"before": str(levir / "A" / REAL_PAIRS[0]), "after": str(levir / "B" / REAL_PAIRS[0])}
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((levir / "B" / REAL_PAIRS[1]).read_bytes()[:5000])
    rows = [
        {"id": "good", **pair, "caption": "a road is built"},
        {"id": "missing", **pair, "before": str(tmp_path / "nope.png"), "caption": "a road is built"},
        {"id": "unreadable", **pair, "after": str(truncated), "caption": "a road is built"},
        # The stray 768x384 RGBA file of LEVIR-CD against a 256x256 image.
        {"id": "mismatch", **pair, "after": str(levir_cd / "B" / "test_113_0256.png"), "caption": "houses appear"},
        {"id": "empty", **pair, "caption": "   "},
        {"id": "bad_mask", **pair, "mask": str(levir_cd / "A" / "test_113_0256.png"), "caption": "houses appear"},
        {"id": "good", **pair, "caption": "the same id again"},
        {"id": "bad_flag", **pair, "caption": "houses appear", "change_flag": "2"},
    ]
    manifest = tmp_path / "pairs.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "before", "after", "caption", "mask", "change_flag"])
        writer.writeheader()
        writer.writerows(rows)

    with pytest.raises(InvalidRecordsError) as failure:
        build_dataset(manifest_records(manifest), tmp_path / "out")
    by_kind = defaultdict(set)
    for problem in failure.value.problems:
        by_kind[problem.kind].add((problem.id, Path(problem.file.split(" (")[0]).name))
    assert by_kind == {
        "missing image": {("missing", "nope.png")},
        "unreadable image": {("unreadable", "truncated.png")},
        "pair size mismatch": {("mismatch", "test_113_0256.png")},
        "empty caption": {("empty", "pairs.csv")},
        "mask size mismatch": {("bad_mask", "test_113_0256.png")},
        "duplicate id": {("good", "pairs.csv")},
        "bad change_flag": {("bad_flag", "pairs.csv")},
    }
    duplicate = next(p for p in failure.value.problems if p.kind == "duplicate id")
    assert "line 8" in duplicate.file and "line 2" in duplicate.detail  # which row, and which row it repeats

    summary = build_dataset(manifest_records(manifest), tmp_path / "out", skip_invalid=True)
    assert summary.split_sizes == {"train": 1}
    card = (tmp_path / "out" / "README.md").read_text()
    assert set(re.findall(r"^- `([^`]+)`:", card, flags=re.M)) == {
        "missing", "unreadable", "mismatch", "empty", "bad_mask", "good", "bad_flag"}


def test_manifest_csv_and_jsonl(shared_data, tmp_path):
    levir_cd = shared_data / "levir_cd_samples"
    names = [line for line in (levir_cd / "list" / "demo.txt").read_text().split() if line][:2]
    pairs = [{"before": f"{levir_cd}/A/{name}", "after": f"{levir_cd}/B/{name}"} for name in names]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {**pairs[0], "mask": f"{levir_cd}/label/{names[0]}", "captions": ["Buildings appear.", "New houses are built."],
         "split": "test"},
        {**pairs[1], "caption": "No change has occurred."},
    ]))
    records = list(manifest_records(tmp_path / "pairs.jsonl", split="validation"))
    assert [(r.id, r.split, r.captions) for r in records] == [
        (Path(names[0]).stem, "test", ["Buildings appear.", "New houses are built."]),
        (Path(names[1]).stem, "validation", ["No change has occurred."])]
    summary = build_dataset(records, tmp_path / "out")
    assert summary.split_sizes == {"validation": 1, "test": 1}
    dataset = load_change_dataset(tmp_path / "out", cache_dir=tmp_path / "cache")
    assert dataset["validation"][0]["change_flag"] == 0  # derived: a canonical no-change sentence
    assert dataset["test"][0]["change_flag"] == 1 and dataset["test"][0]["change_mask"].size == (256, 256)

    # CSV: paths relative to the manifest, numbered caption columns, trailing empty ones ignored.
    (tmp_path / "A").mkdir()
    shutil.copy(levir_cd / "A" / names[0], tmp_path / "A" / names[0])
    (tmp_path / "pairs.csv").write_text(
        "before,after,caption_1,caption_2,caption_3\n"
        f"A/{names[0]},{levir_cd}/B/{names[0]},roads appear,a road is built,\n")
    [record] = manifest_records(tmp_path / "pairs.csv")
    assert record.captions == ["roads appear", "a road is built"]
    assert Path(record.before) == tmp_path / "A" / names[0]

    (tmp_path / "typo.csv").write_text("before,after,caption,msk\na.png,b.png,x,m.png\n")
    with pytest.raises(ValueError, match="unknown column.*'msk'"):
        list(manifest_records(tmp_path / "typo.csv"))
    (tmp_path / "comma.csv").write_text("before,after,caption\na.png,b.png,a road, and houses\n")
    with pytest.raises(ValueError, match="line 2 has more cells"):
        list(manifest_records(tmp_path / "comma.csv"))


def test_ccexpert_records(shared_data, tmp_path):
    images = shared_data / "levir_cc" / "images" / "train"
    (tmp_path / "A").mkdir()
    shutil.copy(images / "A" / REAL_PAIRS[0], tmp_path / "A" / REAL_PAIRS[0])
    records_file = tmp_path / "levir_train_universal.json"
    records_file.write_text(json.dumps([
        {"uid": 16, "change_flag": 1, "img1_path": f"A/{REAL_PAIRS[0]}", "img2_path": str(images / "B" / REAL_PAIRS[0]),
         "change_caption": ["Several houses appear.", "A row of houses is built."]},
        {"uid": 51, "change_flag": -1, "img1_path": str(images / "A" / REAL_PAIRS[1]),
         "img2_path": str(images / "A" / REAL_PAIRS[1]), "change_caption": ["There is no difference."]},
    ]))
    records = list(ccexpert_records(records_file, split="train"))
    assert [(r.id, r.change_flag, r.source) for r in records] == [
        ("16", 1, "levir_train_universal"), ("51", None, "levir_train_universal")]
    summary = build_dataset(records, tmp_path / "out")
    dataset = load_change_dataset(tmp_path / "out", split="train", cache_dir=tmp_path / "cache")
    assert summary.num_pairs == 2 and dict(zip(dataset["id"], dataset["change_flag"])) == {"16": 1, "51": 0}


def test_dubai_cc_caption_files(shared_data):
    records = list(dubai_cc_records(shared_data / "dubai_cc_captions", "unused"))
    assert Counter(record.split for record in records) == {"train": 300, "validation": 50, "test": 150}
    assert all(len(record.captions) == 5 for record in records)
    assert len({record.id for record in records}) == 500
    no_change_words = re.compile(r"\b(no|nothing|same)\b", re.I)
    for record in records:
        if record.change_flag == 0:
            assert all(no_change_words.search(caption) for caption in record.captions), record.captions
        else:
            assert not all(no_change_words.search(caption) for caption in record.captions), record.captions
    assert {r.id: r.change_flag for r in records}["1x4"] == 0
    assert any(r.change_flag == 0 and "No changed to mention." in r.captions for r in records)  # a typo, still 0


def test_dubai_cc_build_keeps_tiff_bytes(shared_data, tmp_path):
    # Dubai-CC's images are not here: a real LEVIR-CC pair saved as TIFF under a Dubai-CC name stands in.
    for folder, side in (("500_2000", "A"), ("500_2010", "B")):
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.open(shared_data / "levir_cc" / "images" / "train" / side / REAL_PAIRS[0]).save(
            tmp_path / "images" / folder / "1x4.tif")
    summary = build_dataset(dubai_cc_records(shared_data / "dubai_cc_captions", tmp_path / "images"),
                            tmp_path / "out", skip_invalid=True)
    assert summary.split_sizes == {"train": 1} and len({p.id for p in summary.skipped}) == 499
    after_file = tmp_path / "images" / "500_2010" / "1x4.tif"
    assert image_bytes(summary.out_dir, "train", "after") == {"1x4": after_file.read_bytes()}
    example = load_change_dataset(summary.out_dir, split="train", cache_dir=tmp_path / "cache")[0]
    assert example["after"].format == "TIFF" and example["change_flag"] == 0


def test_mixture_repeats_each_source_by_its_factor(levir_build, shared_data, tmp_path):
    levir_cd = shared_data / "levir_cd_samples"
    names = [line for line in (levir_cd / "list" / "demo.txt").read_text().split() if line][:2]
    (tmp_path / "cd.jsonl").write_text("\n".join(json.dumps(
        {"before": f"{levir_cd}/A/{n}", "after": f"{levir_cd}/B/{n}", "caption": "buildings appear"}) for n in names))
    assert main(["data", "manifest", "--manifest", f"train={tmp_path / 'cd.jsonl'}", "--source-name", "levir_cd",
                 "--out", str(tmp_path / "cd")]) == 0
    levir_out = levir_build[1].out_dir
    assert main(["data", "mix", "--source", f"{levir_out}:train:3", "--source", f"{tmp_path / 'cd'}:train:1",
                 "--out", str(tmp_path / "mix")]) == 0
    mix = load_change_dataset(tmp_path / "mix", split="train", cache_dir=tmp_path / "cache")
    ids = Counter(zip(mix["source"], mix["id"]))
    assert set(ids.values()) == {1} and Counter(source for source, _ in ids) == {"levir_cc": 9, "levir_cd": 2}
    assert {f"train_000016#{k}" for k in (1, 2)} <= {i for _, i in ids}
    stored = image_bytes(tmp_path / "mix", "train", "before")
    original = image_bytes(levir_out, "train", "before")["train_000016"]
    assert stored["train_000016#2"] == stored["train_000016"] == original
    card = (tmp_path / "mix" / "README.md").read_text()
    assert f"| `{levir_out}` | train | 3 |" in card and f"| `{tmp_path / 'cd'}` | train | 1 |" in card


def test_caption_views(levir_build):
    dataset = levir_build[2]
    references = dict(zip(dataset["id"], dataset["captions"]))

    flat = caption_view(dataset, "flatten")
    assert len(flat) == sum(map(len, references.values()))
    flattened = defaultdict(list)
    for example in flat:
        flattened[example["id"]].append(example["caption"])
        assert example["before"].size == (256, 256)
    assert flattened == references

    def draw(seed, epoch):
        return [example["caption"] for example in caption_view(dataset, "random_choice", seed=seed, epoch=epoch)]

    first = draw(0, 0)
    assert len(first) == len(dataset) and first == draw(0, 0)
    assert all(caption in references[i] for i, caption in zip(dataset["id"], first))
    assert len({tuple(draw(0, epoch)) for epoch in range(10)}) > 1  # another epoch, other captions
    assert [draw(seed, 3) for seed in (0, 1, 2)] != [draw(0, 3)] * 3

    # DataLoader workers get the same draw as the main process.
    view = caption_view(dataset, "random_choice", seed=5, epoch=2)
    loaded = [e["caption"] for batch in DataLoader(view, batch_size=2, num_workers=2, collate_fn=list) for e in batch]
    assert loaded == draw(5, 2)

    targets = [example["caption"] for example in caption_view(dataset, "flatten", sentence_case=True)]
    assert all(t[0].isupper() and t.endswith(".") and not t.endswith(" .") for t in targets)


def test_normalize_caption():
    assert normalize_caption(" the road is built . ", 1, sentence_case=True) == "The road is built."
    assert normalize_caption("there is no difference .", 0, no_change_caption="the scene is the same as before",
                             sentence_case=True) == "The scene is the same as before."
    assert normalize_caption("a  road is built", 1, no_change_caption="no change") == "a road is built"


def test_cli_levir_cc(shared_data, tmp_path, capsys):
    root = make_levir_root(shared_data, tmp_path / "root")
    out = str(tmp_path / "out")
    assert main(["data", "levir-cc", "--root", str(root), "--out", out]) == 0
    assert "Wrote 3 pairs (train: 3)" in capsys.readouterr().out

    assert main(["data", "levir-cc", "--root", str(root), "--out", out]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "levir-cc", "--root", str(root), "--out", out, "--overwrite"]) == 0
    capsys.readouterr()

    assert main(["data", "levir-cc", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "LevirCCcaptions.json: file not found" in err and "Traceback" not in err

    full_captions = shared_data / "levir_cc" / "LevirCCcaptions.json"
    assert main(["data", "levir-cc", "--root", str(root), "--captions", str(full_captions),
                 "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err.splitlines()
    problem_lines = [line for line in err if not line.startswith(" ")]  # the summary quotes some, indented
    assert sum(line.endswith("missing image: before: file not found") for line in problem_lines) == 10077 - 3
    assert any(f"{2 * (10077 - 3)} problem(s)" in line for line in err[-30:])  # the summary comes last


def _real_pair_rows(shared_data, count):
    images = shared_data / "levir_cd_samples"
    names = [line for line in (images / "list" / "demo.txt").read_text().split() if line][:count]
    return [(str(images / "A" / name), str(images / "B" / name)) for name in names]


def test_unclosed_quote_in_a_csv_manifest_fails_naming_its_line(shared_data, tmp_path, capsys):
    # 5 real pairs; row 2's caption opens a quote it never closes, which used to swallow rows 3-5 into its caption.
    rows = _real_pair_rows(shared_data, 5)
    lines = ["before,after,caption"] + [f"{b},{a},houses appear" for b, a in rows]
    lines[2] = f'{rows[1][0]},{rows[1][1]},"a road is built'
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"pairs.csv: the row after line 2 is not valid CSV.*quote"):
        list(manifest_records(manifest))
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert "row after line 2" in capsys.readouterr().err and not (tmp_path / "out").exists()

    # A later quoted caption closes the open quote: csv then reads on, but a cell spanning lines is refused.
    lines[4] = f'{rows[3][0]},{rows[3][1]},"roads, and houses"'
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"pairs.csv: the row after line 2 is not valid CSV"):
        list(manifest_records(manifest))
    manifest.write_text('before,after,caption\nx.png,y.png,"one\nsentence"\n')
    with pytest.raises(ValueError, match=r"line 2: a cell runs over lines 2-3"):
        list(manifest_records(manifest))


def test_manifest_and_caption_files_that_are_not_utf8_or_of_another_shape_are_named(tmp_path):
    from rscc.data import DataInputError
    from rscc.errors import RsccInputError

    latin = tmp_path / "latin.csv"
    latin.write_bytes("before,after,caption\na.png,b.png,un caf\u00e9 est construit\n".encode("latin-1"))
    with pytest.raises(RsccInputError, match=r"latin.csv: line 2 is not UTF-8 text \(byte 0xe9\)"):
        list(manifest_records(latin))
    shapes = {
        "strings.json": {"images": ["train_000016.png"]},
        "sentences.json": {"images": [{"filename": "a.png", "split": "train", "sentences": [3]}]},
        "filename.json": {"images": [{"filename": 7, "split": "train", "sentences": []}]},
    }
    for name, content in shapes.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(DataInputError, match=f"{name}: images\\[0\\]"):
            list(levir_cc_records(tmp_path, tmp_path / name))
    (tmp_path / "records.json").write_text(json.dumps([{"uid": 1, "img1_path": 3, "img2_path": "b.png",
                                                          "change_caption": "x"}]))
    with pytest.raises(DataInputError, match=r"records.json: \[0\]: img1_path must be a path"):
        list(ccexpert_records(tmp_path / "records.json"))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"before": ["a.png"], "after": "b.png", "caption": "x"}))
    with pytest.raises(DataInputError, match=r"pairs.jsonl: line 1: before must be text"):
        list(manifest_records(tmp_path / "pairs.jsonl"))


def test_overwrite_never_deletes_a_folder_holding_inputs(shared_data, tmp_path, capsys):
    root = make_levir_root(shared_data, tmp_path / "root")
    before = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    for out in (root, root / "images"):
        assert main(["data", "levir-cc", "--root", str(root), "--out", str(out), "--overwrite"]) == 2
        assert "--overwrite" in capsys.readouterr().err
    assert sorted(str(path.relative_to(root)) for path in root.rglob("*")) == before

    rows = _real_pair_rows(shared_data, 2)
    folder = tmp_path / "mine"
    folder.mkdir()
    manifest = folder / "pairs.csv"
    manifest.write_text("before,after,caption\n" + "".join(f"{b},{a},houses appear\n" for b, a in rows))
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(folder), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err and manifest.is_file()

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(notes), "--overwrite"]) == 2
    assert "did not write (thesis.tex)" in capsys.readouterr().err and (notes / "thesis.tex").is_file()

    built = tmp_path / "built"
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(built)]) == 0
    assert main(["data", "mix", "--source", f"{built}:train:2", "--out", str(built), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(built), "--overwrite"]) == 0


def test_build_refuses_what_training_cannot_read(shared_data, tmp_path):
    rows = _real_pair_rows(shared_data, 1)
    label = shared_data / "levir_cd_samples" / "label" / Path(rows[0][0]).name
    grey = np.asarray(Image.open(label).convert("L"))
    Image.fromarray(np.where(grey > 0, 7, 0).astype(np.uint8)).save(tmp_path / "sevens.png")
    Image.fromarray(grey).save(tmp_path / "jpeg_damaged.jpg", quality=50)  # edges become 1, 254, ...
    deep = np.asarray(Image.open(rows[0][1])).astype(np.uint16) * 40  # 16-bit colour, as a GeoTIFF export is
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "deep.png", "w", driver="PNG", width=256, height=256, count=3,
                           dtype="uint16") as raster:
            raster.write(np.moveaxis(deep[..., :3], -1, 0))
    before, after = rows[0]
    records = [
        {"id": "sevens", "before": before, "after": after, "caption": "houses appear", "mask": "sevens.png"},
        {"id": "jpeg", "before": before, "after": after, "caption": "houses appear", "mask": "jpeg_damaged.jpg"},
        {"id": "dot", "before": before, "after": after, "caption": " . "},
        {"id": "deep", "before": before, "after": "deep.png", "caption": "houses appear"},
        {"id": "good", "before": before, "after": after, "caption": "houses appear", "mask": str(label)},
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    with pytest.raises(InvalidRecordsError) as failure:
        build_dataset(manifest_records(tmp_path / "pairs.jsonl"), tmp_path / "out")
    assert {(problem.id, problem.kind) for problem in failure.value.problems} == {
        ("sevens", "bad mask values"), ("jpeg", "bad mask values"), ("dot", "empty caption"),
        ("deep", "16-bit colour image")}
    assert "[0, 7]" in next(str(p) for p in failure.value.problems if p.id == "sevens")


def test_mix_names_a_source_folder_that_does_not_exist(tmp_path, capsys):
    typo = tmp_path / "levir_ccc"
    assert main(["data", "mix", "--source", f"{typo}:train:2", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{typo}" in error and "no such local folder" in error and "Traceback" not in error


def test_a_csv_column_named_twice_and_a_shard_size_below_one_are_refused(tmp_path, capsys):
    (tmp_path / "twice.csv").write_text("before,after,caption,caption\na.png,b.png,a road,houses appear\n")
    with pytest.raises(ValueError, match=r"twice.csv: line 1 names the column\(s\) 'caption' more than once"):
        list(manifest_records(tmp_path / "twice.csv"))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "manifest", "--manifest", str(tmp_path / "twice.csv"), "--out", str(tmp_path / "out"),
              "--max-shard-size", "0"])
    assert exit_info.value.code == 2 and "--max-shard-size: must be at least 1" in capsys.readouterr().err
