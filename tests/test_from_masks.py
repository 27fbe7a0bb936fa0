"""Tests of `rscc data from-masks` on the real LEVIR-CD samples in ../shared/data/levir_cd_samples."""

import random
import re
from collections import deque
from pathlib import Path

import numpy as np
from huggingface_hub import DatasetCard
from PIL import Image

from rscc.caption_text import is_no_change_caption
from rscc.cli import main
from rscc.data import build_dataset, load_change_dataset
from rscc.data.from_masks import (
    DEFAULT_MIN_REGION_PIXELS,
    GRID_PLACES,
    NUM_CAPTIONS,
    captions_for_regions,
    changed_regions,
    from_masks_records,
)

PLACE_PHRASES = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
                 "left": "on the left", "center": "in the center", "right": "on the right",
                 "bottom left": "in the bottom left corner", "bottom": "at the bottom",
                 "bottom right": "in the bottom right corner"}
COUNT_WORDS = ("a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def flood_fill_regions(mask: np.ndarray) -> list:
    """(size, centroid row, centroid column) of the 4-connected regions of `mask`, by a pixel-wise flood fill: an
    independent check of the run-based labelling the package uses."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            row, column = queue.popleft()
            pixels.append((row, column))
            for neighbour in ((row - 1, column), (row + 1, column), (row, column - 1), (row, column + 1)):
                if (0 <= neighbour[0] < mask.shape[0] and 0 <= neighbour[1] < mask.shape[1] and mask[neighbour]
                        and not seen[neighbour]):
                    seen[neighbour] = True
                    queue.append(neighbour)
        rows, columns = np.array(pixels).T
        regions.append((len(pixels), rows.mean(), columns.mean()))
    return sorted(regions, reverse=True)


def test_captions_name_the_count_and_place_of_the_changed_regions(shared_data):
    samples = shared_data / "levir_cd_samples"
    records = {record.id: record for record in from_masks_records(samples, split="test")}
    labelled = sorted(path.stem for path in (samples / "label").glob("*.png"))
    assert len(labelled) == 11 and set(labelled) < set(records)
    changed = 0
    for name in labelled:
        record = records[name]
        mask = np.asarray(Image.open(samples / "label" / f"{name}.png")) > 0
        regions = [r for r in flood_fill_regions(mask) if r[0] >= DEFAULT_MIN_REGION_PIXELS]
        assert len(record.captions) == NUM_CAPTIONS == len(set(record.captions)), name
        if not mask.any():
            assert record.change_flag == 0 and all(map(is_no_change_caption, record.captions)), name
            continue
        changed += 1
        assert record.change_flag == 1
        count = COUNT_WORDS[len(regions) - 1] if len(regions) <= len(COUNT_WORDS) else "many"
        _, row, column = regions[0]  # the largest region's place is named first in every caption
        place = PLACE_PHRASES[GRID_PLACES[int(row * 3 // mask.shape[0])][int(column * 3 // mask.shape[1])]]
        for caption in record.captions:
            words = caption.split()
            assert count in words and ("building" in words if count == "a" else "buildings" in words), caption
            assert place in caption, (name, place, caption)
            assert caption.endswith(" .") and caption == caption.lower()
    assert changed == 10  # train_386_0512_0768's mask is empty


def test_region_counts_match_a_flood_fill_on_every_real_mask(shared_data):
    for path in sorted((shared_data / "levir_cd_samples" / "label").glob("*.png")):
        mask = np.asarray(Image.open(path)) > 0
        expected = [size for size, _, _ in flood_fill_regions(mask)]
        regions = changed_regions(mask.astype(np.uint8), {1: "building"}, min_region_pixels=1)
        assert [region.pixels for region in regions] == expected, path.name


def test_a_mask_with_only_specks_is_still_a_change():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[90:92, 5:7] = 1  # 4 pixels, under the 20 a region needs when larger ones exist
    mask[10:12, 90:92] = 1
    regions = changed_regions(mask, {1: "building"})
    assert sorted((region.pixels, region.place) for region in regions) == [(4, "bottom left"), (4, "top right")]
    for caption in captions_for_regions(regions, mask.size, random.Random(0)):
        assert "two small buildings" in caption and not is_no_change_caption(caption), caption
    mask[40:60, 40:60] = 1  # with a real region present, the specks are noise
    assert [(region.pixels, region.place) for region in changed_regions(mask, {1: "building"})] == [(400, "center")]


def test_captions_are_deterministic_with_the_seed(shared_data):
    samples = shared_data / "levir_cd_samples"
    first = [record.captions for record in from_masks_records(samples, seed=3)]
    assert first == [record.captions for record in from_masks_records(samples, seed=3)]
    assert first != [record.captions for record in from_masks_records(samples, seed=4)]


def test_several_classes_get_one_clause_each():
    regions = changed_regions(np.array([[2, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1]], dtype=np.uint8),
                              {1: "road", 2: "water"}, min_region_pixels=1)
    captions = captions_for_regions(regions, 18, random.Random(0))
    assert len(set(captions)) == NUM_CAPTIONS
    for caption in captions:
        # one clause per class, the class of the largest region (the roads, 2 pixels each) first
        roads, water = caption.index("two large roads"), caption.index("a large area of water")
        assert roads < caption.index(" and ", roads) < water, caption
        assert caption.count("compared with before") <= 1 and caption.count("the scene changes") <= 1, caption
        assert "on the right" in caption and "in the top left corner" in caption, caption


def test_cli_reports_the_pair_without_a_mask_then_builds_the_rest(shared_data, tmp_path, capsys):
    samples = shared_data / "levir_cd_samples"
    out = tmp_path / "levir_cd"
    assert main(["data", "from-masks", "--root", f"test={samples}", "--out", str(out)]) == 1
    errors = capsys.readouterr().err
    assert "test_113_0256.png" in errors and "[test_113_0256] no captions" in errors
    assert "[test_113_0256] missing mask" in errors and not out.exists()

    assert main(["data", "from-masks", "--root", f"test={samples}", "--out", str(out), "--skip-invalid"]) == 0
    dataset = load_change_dataset(str(out), split="test")
    assert len(dataset) == 11 and sum(map(len, dataset["captions"])) == 55
    assert sorted(dataset["change_flag"]) == [0] + [1] * 10
    example = dataset[0]
    stored = np.asarray(example["change_mask"])
    assert np.array_equal(stored, np.asarray(Image.open(samples / "label" / f"{example['id']}.png")))
    card = DatasetCard.load(out / "README.md")
    assert "template sentences written by `rscc data from-masks` (seed 0)" in card.text
    assert "`test_113_0256`" in card.text  # the skipped pair is listed


def _png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_semantic_masks_are_captioned_by_class_and_stored_as_binary(tmp_path):
    """Stand-in images (the test makes them): a 3-level semantic mask with a road and two buildings, and one
    with a grey level the class list does not name."""
    for folder in ("A", "B", "label"):
        (tmp_path / folder).mkdir()
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[0:10, 0:60] = 128  # road along the top
    mask[45:55, 2:12] = mask[45:55, 45:55] = 255  # buildings bottom left and bottom right
    bad = mask.copy()
    bad[30, 30] = 77
    for name, label in (("good", mask), ("bad", bad)):
        for folder in ("A", "B"):
            _png(np.full((60, 60, 3), 90 if folder == "A" else 160, dtype=np.uint8), tmp_path / folder / f"{name}.png")
        _png(label, tmp_path / "label" / f"{name}.png")
    records = {r.id: r for r in from_masks_records(tmp_path, classes="128=road,255=building")}
    assert [p.kind for p in records["bad"].problems] == ["bad mask values"]
    assert "77" in records["bad"].problems[0].detail and records["bad"].captions == []
    for caption in records["good"].captions:
        # the road is 600 of 3,600 pixels (large), each building 100 (neither small nor large)
        assert "a large road" in caption and "at the top" in caption and "two buildings" in caption, caption
        assert "in the bottom left corner and in the bottom right corner" in caption, caption
    summary = build_dataset([records["good"]], tmp_path / "out")
    assert summary.num_pairs == 1
    stored = load_change_dataset(str(tmp_path / "out"), split="train")[0]["change_mask"]
    assert set(np.unique(np.asarray(stored)).tolist()) == {0, 255}
    assert np.array_equal(np.asarray(stored) > 0, mask > 0)


def test_bad_class_list_is_an_input_error(shared_data, tmp_path, capsys):
    assert main(["data", "from-masks", "--root", str(shared_data / "levir_cd_samples"), "--classes", "road",
                 "--out", str(tmp_path / "out")]) == 2
    assert "'road' is not LEVEL=NAME" in capsys.readouterr().err


def test_second_from_its_real_split_list_with_stand_in_rgb_labels(shared_data, tmp_path, capsys):
    """The split list is the real Bi-SRNet excerpt; SECOND publishes no images, so the test makes stand-in im1/im2
    and RGB label2 maps in SECOND's colours for the first three listed pairs and leaves the rest missing."""
    from rscc.data.second import read_split_list

    split_list = shared_data / "cc_sources" / "second" / "BiSRNet_train_list.first20.txt"
    names = read_split_list(split_list)
    assert len(names) == 20 and names[0] == "00003.png"
    root = tmp_path / "train"
    for folder in ("im1", "im2", "label2"):
        (root / folder).mkdir(parents=True)
    label = np.full((64, 64, 3), 255, dtype=np.uint8)  # white: unchanged
    label[0:16, 0:16] = (0, 0, 255)  # water, top left
    label[40:60, 40:50] = label[40:60, 54:64] = (128, 0, 0)  # two buildings, bottom right
    empty = np.full((64, 64, 3), 255, dtype=np.uint8)
    for name, mask in zip(names[:3], (label, empty, label)):
        _png(np.full((64, 64, 3), 50, dtype=np.uint8), root / "im1" / name)
        _png(np.full((64, 64, 3), 150, dtype=np.uint8), root / "im2" / name)
        _png(mask, root / "label2" / name)
    out = tmp_path / "out"
    command = ["data", "second", "--root", f"train={root}", "--list", f"train={split_list}", "--out", str(out)]
    assert main(command) == 1
    errors = capsys.readouterr().err
    assert re.search(r"^ +17  no captions$", errors, re.MULTILINE)  # the summary's count by kind
    assert f"label2/{names[-1]}: [{names[-1][:-4]}] no captions: captions come from the mask" in errors
    assert main(command + ["--skip-invalid"]) == 0
    train = load_change_dataset(str(out), split="train")
    assert train["id"] == ["00003", "00013", "00015"] and train["change_flag"] == [1, 0, 1]
    for caption in train[0]["captions"]:
        assert "two large buildings" in caption and "in the bottom right corner" in caption, caption
        assert "a large area of water" in caption and "in the top left corner" in caption, caption
    assert all(map(is_no_change_caption, train[1]["captions"]))
    stored = np.asarray(train[0]["change_mask"])
    assert np.array_equal(stored > 0, (label != 255).any(axis=2)) and set(np.unique(stored)) == {0, 255}
