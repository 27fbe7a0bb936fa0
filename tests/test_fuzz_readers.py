"""Fuzzing every reader of user files: random bytes, and real PNG, TIFF, CSV and JSON from ../shared/data cut short
or mutated. The property: a valid result, or an `RsccInputError` (rscc's error of bad input) naming the file;
never another exception. Bounded: a fixed number of derandomized examples per reader, seconds in all."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rscc.data import ccexpert_records, levir_cc_records, read_manifest
from rscc.errors import RsccInputError
from rscc.metrics import load_references, read_prediction_records
from rscc.processing_rscc import load_change_mask, load_image

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(shared_data, tmp_path_factory):
    """Real files to mutate, each small enough to decode in milliseconds."""
    folder = tmp_path_factory.mktemp("seeds")
    with rasterio.open(shared_data / "geotiff_xview2" / "pre" / "0_pre.tif") as chip:
        profile = chip.profile | {"width": 64, "height": 64,
                                  "transform": chip.window_transform(rasterio.windows.Window(0, 0, 64, 64))}
        pixels = chip.read(window=rasterio.windows.Window(0, 0, 64, 64))
    with rasterio.open(folder / "chip.tif", "w", **profile) as crop:
        crop.write(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16-bit colour with no georeference, as image tools write it
        with rasterio.open(folder / "deep.tif", "w", driver="GTiff", width=64, height=64, count=3,
                           dtype="uint16") as deep:
            deep.write(pixels.astype(np.uint16) * 40)
    captions = json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())["images"][:4]
    levir_cd = shared_data / "levir_cd_samples"
    names = [line for line in (levir_cd / "list" / "demo.txt").read_text().split() if line][:4]
    manifest = "before,after,caption,mask\n" + "".join(
        f'{levir_cd}/A/{name},{levir_cd}/B/{name},"{entry["sentences"][0]["raw"].strip()}",{levir_cd}/label/{name}\n'
        for name, entry in zip(names, captions))
    predictions = "".join(json.dumps({"id": Path(entry["filename"]).stem, "caption": entry["sentences"][1]["raw"]})
                          + "\n" for entry in captions)
    return {
        "png": (shared_data / "levir_cc" / "images" / "train" / "A" / "train_000016.png").read_bytes(),
        "mask": (levir_cd / "label" / names[0]).read_bytes(),
        "tif": (folder / "chip.tif").read_bytes(),
        "deep_tif": (folder / "deep.tif").read_bytes(),
        "csv": manifest.encode(),
        "predictions": predictions.encode(),
        "karpathy": json.dumps({"images": captions}).encode(),
        "dubai": (shared_data / "dubai_cc_captions" / "description_jsontr_te_val" / "Validation_Dubai_CC.json"
                  ).read_bytes()[:6000],
    }


@st.composite
def damaged(draw, seed: bytes):
    """The seed cut short, with bytes overwritten, inserted or deleted; or random bytes."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete", "random"]))
    data = bytearray(seed)
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "overwrite":
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


def holds(reader, path: Path, data: bytes):
    """Write `data` to `path`, run `reader` on it: a result, or an RsccInputError that names the file."""
    path.write_bytes(data)
    try:
        return reader(path)
    except RsccInputError as error:
        assert path.name in str(error), f"the error does not name the file: {error}"
        return None


def check_image(path):
    image = load_image(path)
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@pytest.mark.parametrize("seed_name, suffix", [("png", ".png"), ("tif", ".tif"), ("deep_tif", ".tif")])
def test_image_reader(seeds, tmp_path, seed_name, suffix):
    @FUZZ
    @given(data=damaged(seeds[seed_name]))
    def run(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            holds(check_image, tmp_path / f"image{suffix}", data)

    run()


def test_mask_reader(seeds, tmp_path):
    @FUZZ
    @given(data=damaged(seeds["mask"]))
    def run(data):
        mask = holds(lambda path: load_change_mask(path, num_classes=3), tmp_path / "mask.png", data)
        assert mask is None or (mask.ndim == 2 and mask.min() >= 0 and mask.max() < 3)

    run()


def test_manifest_reader(seeds, tmp_path):
    @FUZZ
    @given(data=damaged(seeds["csv"]))
    def run(data):
        rows = holds(lambda path: read_manifest(path, require_captions=False), tmp_path / "pairs.csv", data)
        # Read whole, or refused: every row that came back is a row of the file, none swallowed into a cell.
        assert rows is None or all("\n" not in str(cell) for _, row in rows for cell in row.values())

    run()


def test_caption_file_readers(seeds, tmp_path):
    @FUZZ
    @given(karpathy=damaged(seeds["karpathy"]), dubai=damaged(seeds["dubai"]))
    def run(karpathy, dubai):
        holds(lambda path: list(levir_cc_records(tmp_path, path)), tmp_path / "captions.json", karpathy)
        holds(lambda path: list(ccexpert_records(path)), tmp_path / "records.json", dubai)
        holds(lambda path: load_references(path, split=None), tmp_path / "references.json", karpathy)

    run()


def test_predictions_reader(seeds, tmp_path):
    @FUZZ
    @given(data=damaged(seeds["predictions"]))
    def run(data):
        records = holds(read_prediction_records, tmp_path / "predictions.jsonl", data)
        assert records is None or all(isinstance(record["caption"], str) for record in records)

    run()
