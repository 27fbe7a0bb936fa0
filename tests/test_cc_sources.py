"""Converters of CC-Foundation's public sources, each on the real annotation excerpt in ../shared/data/cc_sources.

The datasets publish no images in reachable repositories, so the tests make small stand-in PNGs (a flat colour per
image) under the file names the annotations give; the annotation files are the real excerpts, copied under the
file names of the published layout.
"""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rscc.cli import main
from rscc.data import DataInputError, load_change_dataset
from rscc.data.image_editing_request import image_editing_request_records
from rscc.data.parquet_source import parquet_records, parse_column_mapping
from rscc.data.spot_the_diff import spot_the_diff_records


def stand_in_image(path: Path, shade: int) -> None:
    """A 32x32 flat-colour PNG or JPEG standing in for a source image the test environment does not have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), shade, dtype=np.uint8)).save(path)


def copy_excerpts(excerpts: dict, folder: Path) -> Path:
    """Copy real excerpt files to the file names of the published layout (`{published name: excerpt file}`)."""
    folder.mkdir(parents=True)
    for name, excerpt in excerpts.items():
        shutil.copy(excerpt, folder / name)
    return folder


def test_spot_the_diff_excerpt(shared_data, tmp_path, capsys):
    source = shared_data / "cc_sources" / "spot_the_diff"
    annotations = copy_excerpts({f"{split}.json": source / f"{split}.first20.json"
                                 for split in ("train", "val", "test")}, tmp_path / "annotations")
    items = {split: json.loads((source / f"{split}.first20.json").read_text()) for split in ("train", "val", "test")}
    records = list(spot_the_diff_records(annotations, tmp_path / "images"))
    assert [r.split for r in records] == ["train"] * 20 + ["validation"] * 20 + ["test"] * 20
    assert sum(len(r.captions) for r in records) == sum(len(i["sentences"]) for s in items.values() for i in s)
    assert records[0].id == "76" and records[0].captions == ["there are no differences"]
    assert records[0].before.name == "76.png" and records[0].after.name == "76_2.png"

    for record in records[1:]:  # the first pair's images are left missing: the build must name both
        stand_in_image(record.before, 40)
        stand_in_image(record.after, 200)
    out = tmp_path / "out"
    command = ["data", "spot-the-diff", "--annotations", str(annotations), "--images", str(tmp_path / "images"),
               "--out", str(out)]
    assert main(command) == 1
    errors = capsys.readouterr().err
    assert "76.png: [76] missing image: before: file not found" in errors
    assert "76_2.png: [76] missing image: after: file not found" in errors
    assert main(command + ["--skip-invalid"]) == 0
    sizes = {split: len(load_change_dataset(str(out), split=split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 19, "validation": 20, "test": 20}


def test_spot_the_diff_malformed_item_names_file_and_position(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"img_id": "1", "sentences": ["a car is gone"]},
                                                     {"img_id": 2, "sentences": ["a man appears"]}]))
    with pytest.raises(DataInputError, match=r"train\.json: \[1\]: img_id must be text, got 2"):
        list(spot_the_diff_records(tmp_path, tmp_path))
    with pytest.raises(DataInputError, match="none of train.json, val.json, test.json"):
        list(spot_the_diff_records(tmp_path / "elsewhere", tmp_path))


def test_image_editing_request_excerpt(shared_data, tmp_path):
    source = shared_data / "cc_sources" / "image_editing_request"
    annotations = copy_excerpts({f"{split}.json": source / f"{split}.first15.json"
                                 for split in ("train", "valid", "test")}, tmp_path / "annotations")
    records = list(image_editing_request_records(annotations, tmp_path / "images"))
    by_split = {split: [r for r in records if r.split == split] for split in ("train", "validation", "test")}
    assert {split: len(rs) for split, rs in by_split.items()} == {"train": 15, "validation": 15, "test": 15}
    # The published counts: exactly one request per train pair, three per valid and test pair.
    assert {len(r.captions) for r in by_split["train"]} == {1}
    assert {len(r.captions) for r in by_split["validation"] + by_split["test"]} == {3}
    assert records[0].id == "Zhopped_2" and records[0].captions == ["change the back ground"]
    for record in records:
        stand_in_image(record.before, 40)
        stand_in_image(record.after, 200)
    out = tmp_path / "out"
    assert main(["data", "image-editing-request", "--annotations", str(annotations), "--images",
                 str(tmp_path / "images"), "--out", str(out)]) == 0
    train = load_change_dataset(str(out), split="train")
    assert len(train) == 15 and set(train["source"]) == {"image_editing_request"}
    assert train[1]["captions"] == ["Making dark color"]  # kept as written, trailing space collapsed
    assert set(train["change_flag"]) == {1}


def test_image_editing_request_item_without_sentences(tmp_path):
    (tmp_path / "valid.json").write_text(json.dumps([{"img0": "a.jpg", "img1": "b.jpg", "uid": "Reddit_1"}]))
    with pytest.raises(DataInputError, match=r"valid\.json: \[0\] has no sents"):
        list(image_editing_request_records(tmp_path, tmp_path))


def test_stvchrono_excerpt(shared_data, tmp_path, capsys):
    from rscc.data.stvchrono import STVCHRONO_CAPTION_KEYS, stvchrono_records

    files = [shared_data / "cc_sources" / "stvchrono" / f"PJ{k}_annotations.excerpt12.json" for k in (1, 2)]
    records = list(stvchrono_records(files, tmp_path / "images"))
    assert len(records) == 12  # PJ1 and PJ2 annotate the same 12 sequences
    pairs = [r for r in records if not r.problems]
    assert [r.id for r in pairs] == ["2images/amman_place_1", "2images/amman_place_10", "2images/amman_place_11"]
    expected_captions = {}
    for path in files:
        for item in json.loads(path.read_text()):
            values = {a["key"]: a["value"] for a in item["attributes"]}
            expected_captions.setdefault(item["name"], []).extend(
                values[key] for key in STVCHRONO_CAPTION_KEYS if values.get(key, "").strip())
    assert {r.id: r.captions for r in records} == expected_captions
    assert sum(len(r.captions) for r in pairs) == 36
    assert "The sky in A is clear, and B is cloudy." in pairs[0].captions
    assert pairs[0].before.name == "2018-09-27_LlY70YKk5onM1fsNga0KrA.jpg"
    assert pairs[0].after.name == "2018-12-28_tpsBxjm7qB7kF1aYcQP7LA.jpg"
    for record in records:
        stand_in_image(record.before, 40)
        stand_in_image(record.after, 200)

    out = tmp_path / "out"
    command = ["data", "stvchrono", "--annotations", str(files[0]), "--annotations", str(files[1]),
               "--images", str(tmp_path / "images"), "--out", str(out)]
    assert main(command) == 1
    errors = capsys.readouterr().err
    assert re.search(r"^ +9  not a pair$", errors, re.MULTILINE)  # the summary's count by kind
    assert "PJ1_annotations.excerpt12.json ([11]): [5images/amsterdam_place_11] not a pair" in errors
    assert main(command + ["--skip-invalid"]) == 0
    train = load_change_dataset(str(out), split="train")
    assert len(train) == 3 and sum(map(len, train["captions"])) == 36
    assert (out / "README.md").read_text().count("not a pair") == 10  # the count line and the 9 skipped ids


def test_stvchrono_projects_disagreeing_on_a_sequence(shared_data, tmp_path):
    from rscc.data.stvchrono import stvchrono_records

    items = json.loads((shared_data / "cc_sources" / "stvchrono" / "PJ2_annotations.excerpt12.json").read_text())
    items[1]["contents"] = items[1]["contents"][::-1]
    (tmp_path / "PJ2.json").write_text(json.dumps(items))
    first = shared_data / "cc_sources" / "stvchrono" / "PJ1_annotations.excerpt12.json"
    with pytest.raises(DataInputError, match=r"PJ2\.json: \[1\]: sequence '2images/amman_place_10' lists images"):
        list(stvchrono_records([first, tmp_path / "PJ2.json"], tmp_path))


def test_clevr_change_real_splits_with_documented_caption_files(shared_data, tmp_path, capsys):
    """splits.json is the real excerpt; the caption files were not reachable, so the test writes them in their
    documented format ({"CLEVR_default_XXXXXX.png": [captions]}), leaving one scene without captions."""
    from rscc.data.clevr_change import clevr_change_records

    data = copy_excerpts({"splits.json": shared_data / "cc_sources" / "clevr_change" / "splits.first20.json"},
                         tmp_path / "data")
    splits = json.loads((data / "splits.json").read_text())
    indices = [index for split in ("train", "val", "test") for index in splits[split]]
    assert len(indices) == 60
    names = [f"CLEVR_default_{index:06d}.png" for index in indices]
    (data / "change_captions.json").write_text(json.dumps(
        {name: ["the small cube changed its color", "the cube became red"] for name in names[1:]}))
    (data / "no_change_captions.json").write_text(json.dumps(
        {name: ["no change was made", "the scene remains the same"] for name in names}))
    for index in indices:
        stand_in_image(data / "images" / f"CLEVR_default_{index:06d}.png", 40)
        stand_in_image(data / "sc_images" / f"CLEVR_semantic_{index:06d}.png", 200)
        stand_in_image(data / "nsc_images" / f"CLEVR_nonsemantic_{index:06d}.png", 120)

    records = list(clevr_change_records(data))
    assert len(records) == 120 and {r.change_flag for r in records} == {0, 1}
    assert records[0].id == f"{indices[0]:06d}_change" and records[0].captions == []
    assert records[1].after.name == f"CLEVR_nonsemantic_{indices[0]:06d}.png"
    out = tmp_path / "out"
    assert main(["data", "clevr-change", "--data-dir", str(data), "--out", str(out)]) == 1
    assert f"[{indices[0]:06d}_change] empty caption" in capsys.readouterr().err
    assert main(["data", "clevr-change", "--data-dir", str(data), "--out", str(out), "--skip-invalid"]) == 0
    train = load_change_dataset(str(out), split="train")
    assert len(train) == 39 and sorted(train["change_flag"]) == [0] * 20 + [1] * 19
    assert len(load_change_dataset(str(out), split="validation")) == 40
    card = (out / "README.md").read_text()
    assert "pretty_name: CLEVR-Change" in card and "- CLEVR-Change (Park, Darrell and Rohrbach" in card


def _png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), shade, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parquet_with_a_column_mapping(tmp_path, capsys):
    """A small Parquet written here in the shape of a Hub change-captioning set (FOTBCD-CC-like: image structs,
    one caption column per sentence), with one row whose after image is null."""
    folder = tmp_path / "fotbcd"
    folder.mkdir()
    (folder / "b.png").write_bytes(_png_bytes(200))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "pair": ["p0", "p1", "p2"],
        "image_a": pa.array([{"bytes": _png_bytes(30), "path": "a0.png"}] * 3, type=image_type),
        "image_b": pa.array([{"bytes": _png_bytes(90), "path": "b0.png"}, {"bytes": None, "path": "b.png"}, None],
                            type=image_type),
        "sentence_1": ["a road appears", "houses are built", "a pond dries up"],
        "sentence_2": ["a new road is built", None, "the pond is gone"],
    })
    pq.write_table(table, folder / "train-00000.parquet")
    records = list(parquet_records([folder / "train-*.parquet"], "id=pair,before=image_a,after=image_b,"
                                   "captions=sentence_1+sentence_2"))
    assert [r.id for r in records] == ["p0", "p1", "p2"]
    assert [len(r.captions) for r in records] == [2, 1, 2]
    assert records[1].after == folder / "b.png" and records[2].after == ""
    out = tmp_path / "out"
    command = ["data", "parquet", "--files", f"test={folder / 'train-*.parquet'}", "--columns",
               "id=pair,before=image_a,after=image_b,captions=sentence_1+sentence_2", "--out", str(out)]
    assert main(command) == 1
    assert "(row 2): [p2] missing image: after: no image path given" in capsys.readouterr().err
    assert main(command + ["--skip-invalid"]) == 0
    test = load_change_dataset(str(out), split="test")
    assert test["id"] == ["p0", "p1"] and test["source"] == ["fotbcd", "fotbcd"]
    assert test[0]["captions"] == ["a road appears", "a new road is built"]


def test_parquet_mapping_errors(tmp_path):
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "set.parquet")
    with pytest.raises(DataInputError, match=r"set\.parquet: no column\(s\) 'caption'; its columns are a, b"):
        list(parquet_records([tmp_path / "set.parquet"], "before=a,after=b,captions=caption"))
    with pytest.raises(DataInputError, match="no column given for captions"):
        parse_column_mapping("before=a,after=b")
    with pytest.raises(DataInputError, match="'mask=m' is not FIELD=COLUMN"):
        parse_column_mapping("before=a,after=b,captions=c,mask=m")
    with pytest.raises(DataInputError, match=r"\(row 0\): expected an image"):
        pq.write_table(pa.table({"a": [1], "b": ["y"], "c": ["z"]}), tmp_path / "ints.parquet")
        list(parquet_records([tmp_path / "ints.parquet"], "before=a,after=b,captions=c"))


def test_vismin_documented_training_json(shared_data, tmp_path, capsys):
    """No VisMin record could be read here: the file is the README's documented example (its trailing comma
    removed, a second edit and a malformed entry added), with stand-in images."""
    from rscc.data.vismin import vismin_records

    readme = (shared_data / "cc_sources" / "vismin" / "github_README_dataset_section.md").read_text()
    assert '"edited_caption": "Three men holding a brown and white dog in a van.",' in readme
    entry = {"image_path": "/coco/images/train2017/000000234136.jpg",
             "caption": "Two men holding a brown and white dog in a van.",
             "negatives": [{"edited_image_path": "/edited/coco/234136/0.png",
                            "edited_caption": "Three men holding a brown and white dog in a van."},
                           {"edited_image_path": "/edited/coco/234136/1.png",
                            "edited_caption": "Two men holding a black dog in a van."}]}
    (tmp_path / "train.json").write_text(json.dumps([entry]))
    records = list(vismin_records(tmp_path / "train.json", tmp_path / "images"))
    assert [r.id for r in records] == ["edited/coco/234136/0", "edited/coco/234136/1"]
    assert records[0].captions == ["two men holding a brown and white dog in a van becomes three men holding a "
                                   "brown and white dog in a van"]
    stand_in_image(records[0].before, 40)
    for record in records:
        stand_in_image(record.after, 200)
    out = tmp_path / "out"
    assert main(["data", "vismin", "--annotations", str(tmp_path / "train.json"), "--image-root",
                 str(tmp_path / "images"), "--out", str(out)]) == 0
    assert len(load_change_dataset(str(out), split="train")) == 2
    assert "'X becomes Y'" in (out / "README.md").read_text()

    (tmp_path / "bad.json").write_text(json.dumps([entry, {**entry, "negatives": [{"edited_image_path": "x.png"}]}]))
    with pytest.raises(DataInputError, match=r"bad\.json: \[1\] negatives\[0\] has no edited_caption"):
        list(vismin_records(tmp_path / "bad.json", tmp_path))
