"""The bad-input campaign of issue 14: bad input to every command and the Python API, each case's outcome counted.

Each case sets up files (real imagery from ../shared/data, a tiny random checkpoint), runs one command line through
`rscc.cli.main` (or one Python API call) in this process, and checks what came of it:

- `clear error`: refused as expected, with a documented exit code (1 or 2), no traceback, a message naming the
  input and nothing of the user's lost;
- `handled`: valid input that ran and gave the right result;
- `unclear error`: a traceback, another exception type, an undocumented exit code, a message that does not name
  the cause, or valid input refused;
- `silent`: exit 0 (or no exception) with a wrong or lost result, or a user's file deleted or changed;
- `ran away`: still running after the case's time limit.

The same script runs on any commit of the package (set RSCC_ROOT to a checkout, e.g. one made with
`git archive 0e9c600 | tar -x -C /tmp/rscc_base`), so the counts before and after a change are comparable:

    python benchmarks/bad_input_campaign.py [--only FAMILY[,FAMILY...]] [--verbose]
    RSCC_ROOT=/tmp/rscc_base PYTHONPATH=/tmp/rscc_base python benchmarks/bad_input_campaign.py

It needs a transformers under which the tiny model captions (the tested window; 0e9c600 captions under 5.23 only).

Counts on two CPU cores, 83 cases (clear error / handled / unclear error / silent / ran away):

    before issue 14 (0e9c600, transformers 5.23):  13 / 4 / 24 / 41 / 1
    after (issue 14 and the 5.24 port, 5.24):      72 / 11 / 0 / 0 / 0

Issue 26 added 36 cases in eight families, several in child processes: concurrency (two runs into one output at
once, a second run mid-run, kill -9 then rerun), series (corrupt dates, ids, inputs changed between runs, a processor
of other settings), scenes of N rasters (CRS contradictions, alpha bands, a truncated GeoTIFF), launcher (`rscc
launch`, or `accelerate launch` where the package has no `rscc launch`), converters, from-masks, streaming (broken
shards) and demo (the page served by `rscc demo`, driven through gradio_client). An error case may also check that
nothing was lost (the run that got the output wrote all of it). Counts (transformers 5.25, two shared CPU cores):

    family       before (4d018d8)           after (issue 26)
    concurrency   0 / 1 / 0 / 4 / 0          4 / 1 / 0 / 0 / 0
    series        0 / 1 / 1 / 5 / 0          4 / 3 / 0 / 0 / 0
    scenes        0 / 0 / 3 / 1 / 0          2 / 2 / 0 / 0 / 0
    launcher      0 / 1 / 2 / 1 / 0          2 / 2 / 0 / 0 / 0
    converters    2 / 0 / 3 / 2 / 0          5 / 2 / 0 / 0 / 0
    from-masks    0 / 0 / 1 / 3 / 0          3 / 1 / 0 / 0 / 0
    streaming     0 / 0 / 2 / 0 / 0          2 / 0 / 0 / 0 / 0
    demo          0 / 1 / 0 / 2 / 0          1 / 2 / 0 / 0 / 0
    all 36        2 / 4 / 12 / 18 / 0       23 / 13 / 0 / 0 / 0
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(os.environ.get("RSCC_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rscc.tiny_checkpoints import make_tiny_checkpoint  # noqa: E402
from rscc.cli import main  # noqa: E402

OUTCOMES = ("clear error", "handled", "unclear error", "silent", "ran away")
LEVIR = SHARED / "levir_cc" / "images" / "train"
LEVIR_CD = SHARED / "levir_cd_samples"
CHIPS = SHARED / "geotiff_xview2"
PAIR = [str(LEVIR / "A" / "train_000016.png"), str(LEVIR / "B" / "train_000016.png")]
CD_NAMES = [line for line in (LEVIR_CD / "list" / "demo.txt").read_text().split() if line]


class RanAway(Exception):
    pass


@dataclass
class Result:
    code: int | None = None
    err: str = ""
    out: object = ""
    exception: BaseException | None = None
    from_api: bool = False  # a Python call: a ValueError of the package is its clear error


@dataclass
class Case:
    """`run(work)` returns a `Result`; `expect` is "error" (with `fragment` in the message) or "ok"; `intact` lists
    files that must come out unchanged; `verify(work, result)` says whether an "ok" result is right (for errors,
    whether nothing was lost)."""

    family: str
    name: str
    run: Callable
    expect: str = "error"
    fragment: str | tuple = ""
    verify: Callable | None = None
    intact: Callable | None = None
    limit_s: int = 120
    notes: list = field(default_factory=list)


def cli(*argv) -> Result:
    out, err = io.StringIO(), io.StringIO()
    result = Result()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result.code = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            result.code = exit_.code if isinstance(exit_.code, int) else 2
        except RanAway:
            raise
        except BaseException as error:  # an uncaught exception is what a user sees as a traceback
            result.exception = error
            traceback.print_exc(file=err)
            result.code = 1
    result.out, result.err = out.getvalue(), err.getvalue()
    return result


def api(function) -> Result:
    result = Result(from_api=True)
    try:
        result.out = function()
        result.code = 0
    except RanAway:
        raise
    except BaseException as error:
        result.exception = error
        result.err = f"{type(error).__name__}: {error}"
        result.code = 1
    return result


def classify(case: Case, work: Path, result: Result, snapshot: dict) -> str:
    changed = [path for path, content in snapshot.items() if not path.exists() or path.read_bytes() != content]
    if changed:
        case.notes.append(f"input changed or deleted: {changed[0]}")
        return "silent"
    fragments = (case.fragment,) if isinstance(case.fragment, str) else case.fragment
    if case.expect == "error":
        if result.code == 0 or (case.verify is not None and not case.verify(work, result)):
            return "silent"
        if result.exception is not None:
            typed = isinstance(result.exception, (ValueError, FileNotFoundError)) and result.from_api
            named = all(fragment in str(result.exception) for fragment in fragments)
            return "clear error" if typed and named else "unclear error"
        named = all(fragment in result.err for fragment in fragments)
        documented = result.code in (1, 2, 3, 4, 130, 143)
        return "clear error" if named and documented and "Traceback" not in result.err else "unclear error"
    if result.code != 0:
        return "unclear error"
    return "handled" if case.verify is None or case.verify(work, result) else "silent"


def run_case(case: Case, scratch: Path, verbose: bool) -> str:
    work = scratch / f"{case.family}-{case.name}".replace(" ", "_").replace("/", "_")
    work.mkdir()
    old_handler = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(RanAway()))
    signal.alarm(case.limit_s)
    try:
        setup_and_run = case.run(work)
        snapshot = {path: path.read_bytes() for path in (case.intact(work) if case.intact else [])}
        result = setup_and_run()
        outcome = classify(case, work, result, snapshot)
    except RanAway:
        outcome, result = "ran away", Result()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
    if verbose or outcome in ("unclear error", "silent", "ran away"):
        message = (result.err.strip().splitlines() or [""])[-1][:160]
        if outcome == "silent" and isinstance(result.out, str):
            message += f" | output: {result.out.strip()[:120]}"
        print(f"  [{outcome:13}] {case.family}/{case.name}: rc={result.code} {message} {'; '.join(case.notes)}",
              file=sys.__stderr__)
    return outcome


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def write_16_bit(path: Path, values: np.ndarray, **profile) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", width=values.shape[2], height=values.shape[1], count=values.shape[0],
                           dtype="uint16", **profile) as raster:
            raster.write(values)
    return path


def real_16_bit(path: Path, **profile) -> Path:
    """A real LEVIR-CC image as 16-bit data filling 0..10,200 (high bytes 0..39, as satellite exports are)."""
    pixels = np.moveaxis(np.asarray(Image.open(PAIR[1]).convert("RGB")), -1, 0).astype(np.uint16) * 40
    return write_16_bit(path, pixels, **profile)


def bomb_png(path: Path) -> Path:
    """A PNG claiming 30,000 x 30,000 pixels (over twice Pillow's limit) in a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def manifest_csv(path: Path, rows: list, header="before,after,caption") -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def cd_rows(count=5) -> list:
    return [(str(LEVIR_CD / "A" / name), str(LEVIR_CD / "B" / name)) for name in CD_NAMES[:count]]


def unclosed_quote_manifest(path: Path) -> Path:
    rows = [f"{b},{a},houses appear" for b, a in cd_rows()]
    rows[1] = f'{cd_rows()[1][0]},{cd_rows()[1][1]},"a road is built'
    return manifest_csv(path, rows)


def levir_root(root: Path) -> Path:
    captions = json.loads((SHARED / "levir_cc" / "LevirCCcaptions.json").read_text())["images"]
    names = ("train_000016.png", "train_000051.png", "train_000054.png")
    for side in ("A", "B"):
        (root / "images" / "train" / side).mkdir(parents=True)
        for name in names:
            shutil.copy(LEVIR / side / name, root / "images" / "train" / side / name)
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": [e for e in captions if e["filename"] in names]}))
    return root


def files_under(folder: Path) -> list:
    return [path for path in folder.rglob("*") if path.is_file()]


def built_pairs(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(shard).num_rows for shard in (folder / "data").glob("*.parquet"))


def jsonl_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def damaged_checkpoint(work: Path, damage) -> Path:
    folder = shutil.copytree(TINY, work / "broken")
    damage(folder)
    return folder


def drop_a_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights[sorted(weights)[0]]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def double_mlp(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------------------

TINY = HEAD = FILTER = CHANGE_TOKENS = None
MODEL = []


def cases() -> list:
    c = []
    tokens = ["--max-new-tokens", "2"]

    def add(family, name, setup, **kwargs):
        c.append(Case(family, name, setup, **kwargs))

    # Readers of user files: every row or a named error.
    add("readers", "data manifest csv unclosed quote",
        lambda w: (lambda m=unclosed_quote_manifest(w / "p.csv"): lambda: cli(
            "data", "manifest", "--manifest", m, "--out", w / "out"))(), fragment="line 2")
    add("readers", "caption manifest csv unclosed quote",
        lambda w: (lambda m=unclosed_quote_manifest(w / "p.csv"): lambda: cli(
            "caption", m, *MODEL, *tokens, "--out", w / "c.jsonl"))(), fragment="line 2")
    add("readers", "data manifest latin-1 csv",
        lambda w: (lambda m=(w / "p.csv").write_bytes(
            f"before,after,caption\n{PAIR[0]},{PAIR[1]},caf\u00e9 built\n".encode("latin-1")): lambda: cli(
            "data", "manifest", "--manifest", w / "p.csv", "--out", w / "out"))(), fragment=("p.csv", "UTF-8"))
    add("readers", "caption manifest latin-1 csv",
        lambda w: (lambda m=(w / "p.csv").write_bytes(
            f"before,after,caption\n{PAIR[0]},{PAIR[1]},caf\u00e9 built\n".encode("latin-1")): lambda: cli(
            "caption", w / "p.csv", *MODEL, *tokens))(), fragment=("p.csv", "UTF-8"))
    add("readers", "data manifest csv multi-line cell",
        lambda w: (lambda m=manifest_csv(w / "p.csv", [f'{PAIR[0]},{PAIR[1]},"one\nsentence"']): lambda: cli(
            "data", "manifest", "--manifest", m, "--out", w / "out"))(), fragment="line 2")
    for name, content in (("entries are strings", {"images": ["train_000016.png"]}),
                          ("sentences are numbers", {"images": [{"filename": "train_000016.png", "split": "train",
                                                                 "sentences": [3]}]}),
                          ("images is a dict", {"images": {"a": 1}})):
        add("readers", f"data levir-cc json {name}",
            lambda w, content=content: (lambda r=levir_root(w / "root"): (
                (r / "LevirCCcaptions.json").write_text(json.dumps(content)),
                lambda: cli("data", "levir-cc", "--root", r, "--out", w / "out"))[1])(),
            fragment="LevirCCcaptions.json")
    add("readers", "data ccexpert image path is a number",
        lambda w: ((w / "r.json").write_text(json.dumps([{"uid": 1, "img1_path": 5, "img2_path": PAIR[1],
                                                          "change_caption": ["a road"]}])),
                   lambda: cli("data", "ccexpert", "--records", w / "r.json", "--out", w / "out"))[1],
        fragment="r.json")
    add("readers", "caption manifest jsonl before is a list",
        lambda w: ((w / "p.jsonl").write_text(json.dumps({"before": [PAIR[0]], "after": PAIR[1]})),
                   lambda: cli("caption", w / "p.jsonl", *MODEL, *tokens))[1], fragment="p.jsonl")
    add("readers", "data mix local path typo",
        lambda w: lambda: cli("data", "mix", "--source", f"{w}/levir_ccc:train:2", "--out", w / "out"),
        fragment="levir_ccc")

    def eval_files(w, caption=None, refs=None, latin=False):
        entries = [{"filename": f"test_{i}.png", "split": "test", "sentences": [{"raw": "a road is built"}]}
                   for i in range(3)]
        if refs is not None:
            entries[1]["sentences"] = refs
        (w / "refs.json").write_text(json.dumps({"images": entries}))
        rows = [{"id": f"test_{i}", "caption": "a road is built" if i != 1 else caption} for i in range(3)]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (w / "p.jsonl").write_bytes(text.encode("latin-1" if latin else "utf-8"))
        return lambda: cli("eval", "--predictions", w / "p.jsonl", "--references", w / "refs.json", "--metrics",
                           "BLEU-4", "--output", w / "eval.json")

    add("readers", "eval caption null", lambda w: eval_files(w, caption=None), fragment=("p.jsonl", "line 2"))
    add("readers", "eval caption list", lambda w: eval_files(w, caption=["a", "road"]), fragment=("p.jsonl", "line 2"))
    add("readers", "eval references all empty", lambda w: eval_files(w, caption="x", refs=[{"raw": " "}]),
        fragment="test_1")
    add("readers", "eval references raw null", lambda w: eval_files(w, caption="x", refs=[{"raw": None}]),
        fragment="refs.json")
    add("readers", "eval predictions latin-1", lambda w: eval_files(w, caption="caf\u00e9", latin=True),
        fragment="p.jsonl")

    add("readers", "data manifest csv column named twice",
        lambda w: (lambda m=manifest_csv(w / "p.csv", [f"{PAIR[0]},{PAIR[1]},a road,houses appear"],
                                         header="before,after,caption,caption"): lambda: cli(
            "data", "manifest", "--manifest", m, "--out", w / "out"))(), fragment=("p.csv", "caption"))

    def load_missing_dataset(w):
        from rscc.data import load_change_dataset

        return lambda: api(lambda: load_change_dataset(w / "levir_ccc", split="train"))

    add("readers", "load_change_dataset local path typo", load_missing_dataset, fragment="levir_ccc")

    # Nothing of the user's deleted or overwritten.
    add("deletion", "data --out is the source root --overwrite",
        lambda w: (lambda r=levir_root(w / "root"): lambda: cli("data", "levir-cc", "--root", r, "--out", r,
                                                                 "--overwrite"))(),
        fragment="--overwrite", intact=lambda w: files_under(w / "root"))
    add("deletion", "data --out is the source images/ --overwrite",
        lambda w: (lambda r=levir_root(w / "root"): lambda: cli("data", "levir-cc", "--root", r, "--out",
                                                                 r / "images", "--overwrite"))(),
        fragment="--overwrite", intact=lambda w: files_under(w / "root"))
    add("deletion", "data --out is the manifest's folder --overwrite",
        lambda w: (lambda m=manifest_csv(w / "p.csv", [f"{b},{a},houses" for b, a in cd_rows(2)]): lambda: cli(
            "data", "manifest", "--manifest", m, "--out", w, "--overwrite"))(),
        fragment="--overwrite", intact=lambda w: [w / "p.csv"])
    add("deletion", "data --out is a folder of other files --overwrite",
        lambda w: ((w / "notes").mkdir(), (w / "notes" / "thesis.tex").write_text("years"), lambda: cli(
            "data", "manifest", "--manifest", manifest_csv(w / "p.csv", [f"{PAIR[0]},{PAIR[1]},houses"]),
            "--out", w / "notes", "--overwrite"))[2],
        fragment="--overwrite", intact=lambda w: [w / "notes" / "thesis.tex"])
    add("deletion", "data mix --out is its own source --overwrite",
        lambda w: (cli("data", "manifest", "--manifest", manifest_csv(w / "p.csv", [f"{PAIR[0]},{PAIR[1]},houses"]),
                       "--out", w / "built"),
                   lambda: cli("data", "mix", "--source", f"{w / 'built'}:train:2", "--out", w / "built",
                               "--overwrite"))[1],
        fragment="--overwrite", intact=lambda w: files_under(w / "built"))
    add("deletion", "caption --out is the manifest",
        lambda w: ((w / "p.jsonl").write_text(json.dumps({"before": PAIR[0], "after": PAIR[1]}) + "\n"),
                   lambda: cli("caption", w / "p.jsonl", *MODEL, *tokens, "--out", w / "p.jsonl"))[1],
        fragment="p.jsonl", intact=lambda w: [w / "p.jsonl"])
    add("deletion", "caption --mask-out is the after image",
        lambda w: (lambda pair=[shutil.copy(p, w / f"{s}.png") for s, p in zip("ab", PAIR)]: lambda: cli(
            "caption", *pair, "--model", HEAD, *tokens, "--mask-out", pair[1]))(),
        fragment="b.png", intact=lambda w: [w / "b.png"])
    add("deletion", "scene --out is BEFORE",
        lambda w: (lambda b=shutil.copy(CHIPS / "pre" / "0_pre.tif", w / "b.tif"): lambda: cli(
            "scene", b, CHIPS / "post" / "0_post.tif", "--out", b, *MODEL, *tokens))(),
        fragment="b.tif", intact=lambda w: [w / "b.tif"])
    add("deletion", "tiny-checkpoint into a model folder",
        lambda w: ((w / "mine").mkdir(), (w / "mine" / "config.json").write_text("{}"),
                   lambda: cli("tiny-checkpoint", w / "mine"))[2],
        fragment="mine", intact=lambda w: [w / "mine" / "config.json"])
    add("deletion", "eval --output is the predictions file",
        lambda w: (eval_files(w, caption="x"), lambda: cli(
            "eval", "--predictions", w / "p.jsonl", "--references", w / "refs.json", "--metrics", "BLEU-4",
            "--output", w / "p.jsonl"))[1],
        fragment="p.jsonl", intact=lambda w: [w / "p.jsonl"])

    # Imagery: one reader, full depth.
    def not_black(work, result):
        image = np.asarray(result.out)
        return image.max() >= 200 and image.min() <= 30

    from rscc.processing_rscc import load_image

    for name, profile in (("16-bit RGB PNG", {"driver": "PNG"}), ("16-bit RGB TIFF (GDAL)", {"driver": "GTiff"}),
                          ("16-bit RGB TIFF band-interleaved", {"driver": "GTiff", "interleave": "band"}),
                          ("16-bit RGB TIFF photometric RGB", {"driver": "GTiff", "photometric": "RGB"})):
        add("imagery", f"load_image {name}",
            lambda w, profile=profile: (lambda p=real_16_bit(w / f"x.{profile['driver'].lower()}", **profile):
                                        lambda: api(lambda: load_image(p)))(),
            expect="ok", verify=not_black)
    add("imagery", "caption a 16-bit RGB TIFF pair",
        lambda w: (lambda b=real_16_bit(w / "b.tif", driver="GTiff"), a=real_16_bit(w / "a.tif", driver="GTiff"):
                   lambda: cli("caption", b, a, *MODEL, *tokens))(), expect="ok")
    add("imagery", "load_image 16-bit grey PNG",
        lambda w: (lambda p=write_16_bit(w / "g.png", np.asarray(Image.open(PAIR[1]).convert("L"))[None].astype(
            np.uint16) * 40, driver="PNG"): lambda: api(lambda: load_image(p)))(), expect="ok", verify=not_black)
    add("imagery", "data build with a 16-bit RGB PNG",
        lambda w: (lambda p=real_16_bit(w / "deep.png", driver="PNG"): lambda: cli(
            "data", "manifest", "--manifest", manifest_csv(w / "p.csv", [f"{PAIR[0]},{p},houses appear"]),
            "--out", w / "out"))(), fragment="deep.png")
    add("imagery", "load_image all-NaN array",
        lambda w: lambda: api(lambda: load_image(np.full((64, 64, 3), np.nan, np.float32))), fragment="NaN")
    add("imagery", "load_image some NaN",
        lambda w: lambda: api(lambda: load_image(np.where(np.eye(64)[..., None] > 0, np.nan, 0.5).repeat(3, -1))),
        fragment="NaN")
    add("imagery", "load_image 0 x 0 array", lambda w: lambda: api(lambda: load_image(np.zeros((0, 0, 3), np.uint8))),
        fragment="no pixels")
    add("imagery", "caption a decompression bomb PNG",
        lambda w: (lambda p=bomb_png(w / "bomb.png"): lambda: cli("caption", PAIR[0], p, *MODEL, *tokens))(),
        fragment="bomb.png")
    add("imagery", "data build with a decompression bomb PNG",
        lambda w: (lambda p=bomb_png(w / "bomb.png"): lambda: cli(
            "data", "manifest", "--manifest", manifest_csv(w / "p.csv", [f"{PAIR[0]},{p},houses appear"]),
            "--out", w / "out"))(), fragment="bomb.png")

    # Resumable outputs record what made them.
    def rerun(w, *changed):
        folders = [w / "A", w / "B"]
        for folder, image in zip(folders, PAIR):
            folder.mkdir()
            shutil.copy(image, folder / "x.png")
            shutil.copy(image, folder / "y.png")
        cli("caption", *folders, *MODEL, *tokens, "--out", w / "c.jsonl")
        return lambda: cli("caption", *folders, *MODEL, *tokens, "--out", w / "c.jsonl", *changed)

    add("resume", "rerun with another --max-new-tokens", lambda w: rerun(w, "--max-new-tokens", "3"),
        fragment="c.jsonl")
    add("resume", "rerun with another --model",
        lambda w: rerun(w, "--model", shutil.copytree(TINY, w / "other")), fragment="c.jsonl")
    add("resume", "rerun the same command", lambda w: rerun(w), expect="ok",
        verify=lambda w, r: len(jsonl_lines(w / "c.jsonl")) == 2 and "2 already done" in r.err)

    # Masks either take effect or are refused.
    label = LEVIR_CD / "label" / CD_NAMES[0]
    add("masks", "--mask on a model without a token filter",
        lambda w: lambda: cli("caption", *PAIR, *MODEL, *tokens, "--mask", label), fragment="--mask")
    for option in (["--mask", label], ["--json"], ["--mask-out", "m.png"]):
        add("masks", f"batch with {option[0]}",
            lambda w, option=option: (lambda f=[shutil.copytree(LEVIR / s, w / s) for s in "AB"]: lambda: cli(
                "caption", *f, *MODEL, *tokens, *option))(), fragment=option[0])

    def mask_build(w, mask_name, writer, caption="houses appear"):
        grey = np.asarray(Image.open(label).convert("L"))
        writer(grey, w / mask_name)
        before, after = cd_rows(1)[0]
        return lambda: cli("data", "manifest", "--manifest", manifest_csv(
            w / "p.csv", [f"{before},{after},{caption},{w / mask_name}"], header="before,after,caption,mask"),
            "--out", w / "out")

    add("masks", "data mask of values 0/7",
        lambda w: mask_build(w, "m.png", lambda g, p: Image.fromarray(np.where(g > 0, 7, 0).astype(np.uint8)).save(p)),
        fragment="m.png")
    add("masks", "data JPEG-damaged mask",
        lambda w: mask_build(w, "m.jpg", lambda g, p: Image.fromarray(g).save(p, quality=50)), fragment="m.jpg")
    add("masks", "data caption '.'",
        lambda w: mask_build(w, "m.png", lambda g, p: Image.fromarray(g).save(p), caption="."),
        fragment="empty caption")

    def masks_to_a_plain_model(w):
        from rscc import RsccForConditionalGeneration, RsccProcessor
        from rscc.captioning import describe_changes

        model = RsccForConditionalGeneration.from_pretrained(TINY).eval()
        return lambda: api(lambda: describe_changes(model, RsccProcessor.from_pretrained(TINY), [PAIR],
                                                    change_masks=[label], max_new_tokens=2))

    add("masks", "describe_changes with masks on a model without a filter", masks_to_a_plain_model,
        fragment="change_masks")
    add("options", "data --max-shard-size 0",
        lambda w: lambda: cli("data", "manifest", "--manifest", manifest_csv(
            w / "p.csv", [f"{PAIR[0]},{PAIR[1]},houses appear"]), "--out", w / "out", "--max-shard-size", "0"),
        fragment="--max-shard-size")
    add("options", "caption --batch-size 0",
        lambda w: lambda: cli("caption", *PAIR, *MODEL, "--batch-size", "0"), fragment="--batch-size")
    add("options", "caption --max-new-tokens 0",
        lambda w: lambda: cli("caption", *PAIR, *MODEL, "--max-new-tokens", "0"), fragment="--max-new-tokens")

    for option in (["--value-range", "0", "3000"], ["--assume-aligned"]):
        add("options", f"scene {option[0]} on 8-bit georeferenced rasters",
            lambda w, option=option: lambda: cli("scene", CHIPS / "pre" / "0_pre.tif", CHIPS / "post" / "0_post.tif",
                                                 "--out", w / "s.geojson", *MODEL, *tokens, "--tile-size", "512",
                                                 *option), fragment=option[0])
    add("options", "eval --vocab without --convention vocab-ids",
        lambda w: (eval_files(w, caption="x"), lambda: cli(
            "eval", "--predictions", w / "p.jsonl", "--references", w / "refs.json", "--metrics", "BLEU-4",
            "--vocab", SHARED / "levir_cc" / "splits" / "vocab_468.json"))[1], fragment="--vocab")

    # Scene options.
    scene = ["scene", CHIPS / "pre" / "0_pre.tif", CHIPS / "post" / "0_post.tif"]
    add("scene", "--tile-size 0", lambda w: lambda: cli(*scene, "--out", w / "s.geojson", *MODEL, *tokens,
                                                        "--tile-size", "0"), fragment="--tile-size")
    add("scene", "--tile-size 1", lambda w: lambda: cli(*scene, "--out", w / "s.geojson", *MODEL, *tokens,
                                                        "--tile-size", "1"), fragment="--tile-size", limit_s=30)
    add("scene", "--out is a folder", lambda w: lambda: cli(*scene, "--out", w, *MODEL, *tokens), fragment="folder")
    add("scene", "SIGTERM during a run", sigterm_scene, expect="ok", verify=stopped_cleanly, limit_s=200)

    # Model folders, devices and outputs of caption.
    damages = {
        "config not JSON": lambda f: (f / "config.json").write_text("{not json"),
        "config.json missing": lambda f: (f / "config.json").unlink(),
        "weights missing": lambda f: (f / "model.safetensors").unlink(),
        "weights truncated": lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:20000]),
        "weights garbage": lambda f: (f / "model.safetensors").write_bytes(b"\x00garbage" * 50),
        "tokenizer.json missing": lambda f: (f / "tokenizer.json").unlink(),
        "processor_config.json missing": lambda f: (f / "processor_config.json").unlink(),
        "config shape mismatch": double_mlp,
        "a weight missing": drop_a_weight,
    }
    for name, damage in damages.items():
        add("model", name, lambda w, damage=damage: (lambda f=damaged_checkpoint(w, damage): lambda: cli(
            "caption", *PAIR, "--model", f, *tokens))(), fragment="broken")
    add("model", "missing local folder", lambda w: lambda: cli("caption", *PAIR, "--model", "./runs/stage3"),
        fragment=("./runs/stage3", "folder"))
    add("model", "--device cuda on a CPU build" if not torch.cuda.is_available() else "--device cuda:99",
        lambda w: lambda: cli("caption", *PAIR, *MODEL, *tokens, "--device",
                              "cuda" if not torch.cuda.is_available() else "cuda:99"), fragment="--device")
    add("model", "--mask-out into a missing folder",
        lambda w: lambda: cli("caption", *PAIR, "--model", HEAD, *tokens, "--mask-out", w / "new" / "m.png"),
        expect="ok", verify=lambda w, r: (w / "new" / "m.png").is_file() and r.out.strip() != "")
    add("model", "--mask-out onto a folder",
        lambda w: lambda: cli("caption", *PAIR, "--model", HEAD, *tokens, "--mask-out", w), fragment="folder")
    add("model", "publish a broken folder (dry run)",
        lambda w: (lambda f=damaged_checkpoint(w, damages["weights garbage"]): lambda: cli(
            "publish", f, "--repo-id", "u/n", "--dry-run", "--out", w / "hub"))(), fragment="broken")

    # Python API.
    def other_batch_inputs():
        from rscc import RsccProcessor

        processor = RsccProcessor.from_pretrained(TINY)
        inputs, other = processor(images=[PAIR, PAIR]), processor(images=[PAIR])
        generated = torch.cat([inputs["input_ids"], torch.full((2, 3), 5)], dim=1)
        return processor.post_process_captions(generated, other)

    add("api", "post_process_captions with another batch's inputs", lambda w: lambda: api(other_batch_inputs),
        fragment="inputs")

    def generate_without_images():
        from rscc import RsccForConditionalGeneration, RsccProcessor

        model = RsccForConditionalGeneration.from_pretrained(TINY).eval()
        inputs = RsccProcessor.from_pretrained(TINY)(images=[PAIR])
        return model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              max_new_tokens=2)

    add("api", "generate without pixel_values (modeling_rscc.py, main's)", lambda w: lambda: api(
        generate_without_images), fragment="pixel_values")

    # Controls: bad input every version handled.
    add("controls", "caption missing image", lambda w: lambda: cli("caption", PAIR[0], w / "gone.png", *MODEL),
        fragment="gone.png")
    add("controls", "data --out not empty", lambda w: ((w / "out").mkdir(), (w / "out" / "x").write_text("x"),
                                                       lambda: cli("data", "manifest", "--manifest", manifest_csv(
                                                           w / "p.csv", [f"{PAIR[0]},{PAIR[1]},houses"]),
                                                           "--out", w / "out"))[2], fragment="not empty")
    add("controls", "eval missing predictions", lambda w: (eval_files(w, caption="x"), lambda: cli(
        "eval", "--predictions", w / "gone.jsonl", "--references", w / "refs.json"))[1], fragment="gone.jsonl")
    add("controls", "caption manifest unknown column",
        lambda w: ((w / "p.jsonl").write_text(json.dumps({"before": PAIR[0], "after": PAIR[1], "msk": "m"})),
                   lambda: cli("caption", w / "p.jsonl", *MODEL))[1], fragment="msk")
    add("controls", "caption a pair", lambda w: lambda: cli("caption", *PAIR, *MODEL, *tokens), expect="ok")
    add("controls", "data manifest good",
        lambda w: lambda: cli("data", "manifest", "--manifest", manifest_csv(
            w / "p.csv", [f"{b},{a},houses appear" for b, a in cd_rows()]), "--out", w / "out"),
        expect="ok", verify=lambda w, r: built_pairs(w / "out") == 5)
    return c + issue_26_cases()


# --------------------------------------------------------------------------------------------------------------------
# Issue 26: series, scenes of N rasters, the launcher, converters, from-masks, streaming, the demo, and concurrency
# --------------------------------------------------------------------------------------------------------------------


def truncated_png(path: Path, source: str = PAIR[1], keep: float = 0.6) -> Path:
    """A real PNG cut short: Pillow reports it truncated, GDAL decodes rows of it anyway."""
    data = Path(source).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def pair_folders(work: Path, count: int, prefix: str = "") -> list:
    """BEFORE and AFTER folders of `count` real LEVIR-CD pairs (the sample's pairs again, renamed, beyond its 7)."""
    folders = [work / f"{prefix}A", work / f"{prefix}B"]
    for folder, side in zip(folders, "AB"):
        folder.mkdir()
        for index in range(count):
            name = CD_NAMES[index % len(CD_NAMES)]
            shutil.copy(LEVIR_CD / side / name, folder / (name if index < len(CD_NAMES) else f"{index}_{name}"))
    return folders


def rscc_child(*argv, **popen) -> subprocess.Popen:
    """`python -m rscc ARGV` of the package under test, in its own process."""
    return subprocess.Popen([sys.executable, "-m", "rscc", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, **popen)


def both_finished(children: list) -> Result:
    """One result of several runs: exit 0 when every one succeeded, else the failing one's code and stderr."""
    finished = [(child.wait(timeout=600), child.communicate()[1]) for child in children]
    failed = [(code, err) for code, err in finished if code != 0]
    code, err = failed[0] if failed else (0, "".join(err for _, err in finished))
    return Result(code=code, err=err)


def complete_jsonl(path: Path, count: int) -> bool:
    """The output holds every sample exactly once."""
    ids = [line.get("id") for line in jsonl_lines(path)]
    return len(ids) == count and len(set(ids)) == count


def wait_for_lines(path: Path, count: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.2)


def two_at_once(work: Path, argv: list, delay: float = 0.0):
    def run():
        first = rscc_child(*argv)
        time.sleep(delay)
        return both_finished([first, rscc_child(*argv)])
    return run


def second_run_midway(work: Path, argv: list, partial: Path):
    def run():
        first = rscc_child(*argv)
        wait_for_lines(partial, 1)
        second = rscc_child(*argv)
        return both_finished([first, second])
    return run


def killed_then_rerun(work: Path, argv: list, partial: Path):
    def run():
        first = rscc_child(*argv)
        wait_for_lines(partial, 1)
        first.send_signal(signal.SIGKILL)
        first.wait()
        return both_finished([rscc_child(*argv)])
    return run


def reprojected(source: Path, path: Path, crs: str = "EPSG:3857", alpha: bool = False, crs_free: bool = False) -> Path:
    """`source` warped into another CRS (or written without one), optionally with an alpha band (0 in a corner)."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(source) as src:
        values = src.read()
        if crs_free:
            transform, width, height, target_crs = None, src.width, src.height, None
            out = values
        else:
            transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
            target_crs = crs
            out = np.zeros((src.count, height, width), values.dtype)
            reproject(values, out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs=crs, resampling=Resampling.bilinear)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": out.shape[0] + alpha,
               "dtype": out.dtype}
    if target_crs:
        profile.update(crs=target_crs, transform=transform)
    if alpha:
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **profile) as raster:
            raster.write(out, list(range(1, out.shape[0] + 1)))
            if alpha:
                mask = np.full(out.shape[1:], 255, np.uint8)
                mask[: height // 4, : width // 4] = 0
                raster.write(mask, out.shape[0] + 1)
    return path


def series_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def parquet_column(folder: Path, column: str) -> list:
    import pyarrow.parquet as pq

    return [value for shard in sorted((folder / "data").glob("*.parquet"))
            for value in pq.read_table(shard, columns=[column]).column(column).to_pylist()]


def launcher() -> list:
    """The launch command the README documents for data-parallel runs: `rscc launch` where the package has it (it
    takes `accelerate launch`'s arguments), else `accelerate launch` itself."""
    if (ROOT / "rscc" / "launch.py").is_file():
        return [sys.executable, "-m", "rscc", "launch"]
    return [str(Path(sys.executable).with_name("accelerate")), "launch"]


def launched(*argv, processes: int = 2, multi: bool = True) -> Result:
    command = [*launcher(), "--multi_gpu" if multi else "--cpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(29500 + os.getpid() % 1000), "-m", "rscc", *map(str, argv)]
    child = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return Result(code=child.returncode, err=child.stderr, out=child.stdout)


DEMO = {}


def demo_client(model: Path):
    """A gradio_client on `rscc demo --model MODEL` served from a child process (one per model, kept for the
    family's cases)."""
    if model not in DEMO:
        import socket

        from gradio_client import Client

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        child = rscc_child("demo", "--model", model, "--port", port)
        deadline = time.time() + 240
        while True:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    DEMO[model] = (child, Client(f"http://127.0.0.1:{port}/", verbose=False))
                break
            except Exception:
                if child.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"rscc demo did not start: {child.stderr.read()[-400:]}")
                time.sleep(2)
    return DEMO[model][1]


def stop_demos() -> None:
    for child, _ in DEMO.values():
        child.terminate()
        child.communicate(timeout=60)
    DEMO.clear()


def through_demo(model: Path, before, after, mask=None) -> Result:
    """Describe through the page's API; the page's message is its error (a non-empty message without a caption)."""
    from gradio_client import handle_file

    client = demo_client(model)
    caption, _, _, message = client.predict(*(handle_file(str(path)) if path else None for path in (before, after,
                                                                                                    mask)),
                                            api_name="/describe")
    return Result(code=0 if caption else 2, err=message or "", out=caption)


def issue_26_cases() -> list:
    c = []
    tokens = ["--max-new-tokens", "2"]

    def add(family, name, setup, **kwargs):
        c.append(Case(family, name, setup, **kwargs))

    # Concurrency: an output belongs to one run at a time; a killed run's output is taken over.
    def caption_argv(w, count=160):
        return ["caption", *pair_folders(w, count), "--model", TINY, "--max-new-tokens", "48", "--batch-size", "1",
                "--out", w / "o.jsonl"]

    add("concurrency", "two caption runs into one --out at once",
        lambda w: two_at_once(w, caption_argv(w)), fragment=("o.jsonl", "pid"),
        verify=lambda w, r: complete_jsonl(w / "o.jsonl", 160), limit_s=600)
    add("concurrency", "a second caption run while the first captions",
        lambda w: second_run_midway(w, caption_argv(w), w / "o.jsonl.partial"), fragment=("o.jsonl", "pid"),
        verify=lambda w, r: complete_jsonl(w / "o.jsonl", 160), limit_s=600)
    add("concurrency", "kill -9 mid-run, then rerun",
        lambda w: killed_then_rerun(w, caption_argv(w), w / "o.jsonl.partial"), expect="ok",
        verify=lambda w, r: complete_jsonl(w / "o.jsonl", 160) and not (w / "o.jsonl.partial").exists(), limit_s=600)
    add("concurrency", "two scene runs into one --out at once",
        lambda w: two_at_once(w, ["scene", CHIPS / "pre" / "0_pre.tif", CHIPS / "post" / "0_post.tif", "--model",
                                  TINY, "--tile-size", "256", "--max-new-tokens", "12", "--batch-size", "1",
                                  "--out", w / "s.geojson"]),
        fragment=("s.geojson", "pid"),
        verify=lambda w, r: len(json.loads((w / "s.geojson").read_text())["features"]) == 16, limit_s=600)
    add("concurrency", "two data builds into one --out at once",
        lambda w: two_at_once(w, ["data", "manifest", "--manifest", manifest_csv(
            w / "p.csv", [f"{index}_{k},{b},{a},houses appear" for index in range(400) for k, (b, a) in enumerate(cd_rows())],
            header="id,before,after,caption"), "--out", w / "out"]),
        fragment=("out", "pid"), verify=lambda w, r: built_pairs(w / "out") == 2000, limit_s=600)

    # Series of dates: corrupt dates, ids, inputs changed between runs, processors of other settings.
    three = [str(LEVIR_CD / side / CD_NAMES[0]) for side in "AB"] + [PAIR[1]]
    add("series", "caption a series with a truncated PNG date",
        lambda w: (lambda t=truncated_png(w / "cut.png"): lambda: cli(
            "caption", three[0], t, three[2], *MODEL, *tokens))(), fragment="cut.png")
    add("series", "manifest series with a truncated PNG date",
        lambda w: (lambda m=series_manifest(w / "m.jsonl", [{"images": [three[0], str(truncated_png(
            w / "cut.png")), three[2]]}]): lambda: cli("caption", m, *MODEL, *tokens, "--out", w / "o.jsonl"))(),
        fragment="cut.png")
    add("series", "describe_changes with a truncated PNG",
        lambda w: (lambda t=truncated_png(w / "cut.png"): lambda: api(lambda: describe_with_tiny([[PAIR[0], t]])))(),
        fragment="cut.png")
    add("series", "manifest ids 0 and 1",
        lambda w: (lambda m=series_manifest(w / "m.jsonl", [{"id": 0, "images": three}, {"id": 1, "images": three}]):
                   lambda: cli("caption", m, *MODEL, *tokens, "--out", w / "o.jsonl"))(), expect="ok",
        verify=lambda w, r: [line["id"] for line in jsonl_lines(w / "o.jsonl")] == ["0", "1"])

    def rerun_after(w, change):
        dates = []
        for index, source in enumerate(three):
            dates.append(w / f"d{index}.png")
            shutil.copy(source, dates[-1])
        manifest = series_manifest(w / "m.jsonl", [{"id": "s", "images": [str(d) for d in dates]},
                                                   {"id": "t", "images": [str(d) for d in dates[:2]]}])
        cli("caption", manifest, *MODEL, *tokens, "--out", w / "o.jsonl")
        change(dates)
        return lambda: cli("caption", manifest, *MODEL, *tokens, "--out", w / "o.jsonl")

    add("series", "rerun after a date file is replaced in place",
        lambda w: rerun_after(w, lambda d: shutil.copy(PAIR[0], d[2])), expect="ok",
        verify=lambda w, r: "d2.png" in r.err and "1 sample(s) captioned" in r.err and complete_jsonl(w / "o.jsonl", 2))
    add("series", "rerun after a date file is touched (same content)",
        lambda w: rerun_after(w, lambda d: os.utime(d[2], (time.time() + 60, time.time() + 60))), expect="ok",
        verify=lambda w, r: "0 sample(s) captioned" in r.err and complete_jsonl(w / "o.jsonl", 2))
    add("series", "describe_changes: visual_tokens='change' model, default processor",
        lambda w: lambda: api(lambda: describe_with_tiny([PAIR], model=CHANGE_TOKENS)),
        fragment=("visual_tokens", "change"))

    # Scenes of N rasters: CRS contradictions, alpha bands, corrupt rasters.
    pre, post = CHIPS / "pre" / "0_pre.tif", CHIPS / "post" / "0_post.tif"
    scene_tail = ["--model", TINY, *tokens, "--tile-size", "512"]
    add("scenes", "--assume-aligned on rasters of two CRSs and one without",
        lambda w: (lambda o=reprojected(post, w / "other_crs.tif"), n=reprojected(post, w / "no_crs.tif",
                                                                                  crs_free=True):
                   lambda: cli("scene", pre, o, n, "--out", w / "s.geojson", *scene_tail, "--assume-aligned"))(),
        fragment=("--assume-aligned", "EPSG:32615", "EPSG:3857"))
    add("scenes", "RGBA GeoTIFF date that needs resampling",
        lambda w: (lambda o=reprojected(post, w / "rgba.tif", alpha=True): lambda: cli(
            "scene", pre, o, "--out", w / "s.geojson", *scene_tail))(), expect="ok",
        verify=lambda w, r: (w / "s.geojson").is_file())
    add("scenes", "3 rasters, one RGBA on the same grid",
        lambda w: (lambda o=reprojected(post, w / "rgba.tif", crs="EPSG:32615", alpha=True): lambda: cli(
            "scene", pre, o, post, "--out", w / "s.geojson", *scene_tail))(), expect="ok",
        verify=lambda w, r: (w / "s.geojson").is_file())
    add("scenes", "truncated GeoTIFF date",
        lambda w: (lambda t=truncated_png(w / "cut.tif", str(post), keep=0.5): lambda: cli(
            "scene", pre, t, "--out", w / "s.geojson", *scene_tail))(), fragment="cut.tif")

    # The launcher: the same exit codes and one-line messages as without it; process counts as asked.
    add("launcher", "2 processes: a missing image",
        lambda w: (lambda m=series_manifest(w / "m.jsonl", [{"before": PAIR[0], "after": str(w / "gone.png")}]):
                   lambda: launched("caption", m, "--model", TINY, "--out", w / "o.jsonl"))(),
        fragment="gone.png", limit_s=300)
    add("launcher", "2 processes: --out is held by another run",
        lambda w: (lambda folders=pair_folders(w, 4): lambda: held_by_another_run(
            w / "o.jsonl", lambda: launched("caption", *folders, "--model", TINY, *tokens, "--out", w / "o.jsonl")))(),
        fragment=("o.jsonl", "pid"), limit_s=300)
    add("launcher", "--num_processes 2 without --multi_gpu",
        lambda w: (lambda folders=pair_folders(w, 2): lambda: launched(
            "caption", *folders, "--model", TINY, *tokens, "--out", w / "o.jsonl", multi=False))(),
        expect="ok", verify=lambda w, r: "started one" in r.err and complete_jsonl(w / "o.jsonl", 2), limit_s=300)
    add("launcher", "2 processes caption 4 pairs",
        lambda w: (lambda folders=pair_folders(w, 4): lambda: launched(
            "caption", *folders, "--model", TINY, *tokens, "--out", w / "o.jsonl"))(),
        expect="ok", verify=lambda w, r: complete_jsonl(w / "o.jsonl", 4), limit_s=300)

    # Converters: one input given twice, ids that are falsy but present, paths leaving a declared root.
    def good_manifest(w):
        return manifest_csv(w / "p.csv", [f"{b},{a},houses appear" for b, a in cd_rows(2)])

    add("converters", "data manifest: the same --manifest twice",
        lambda w: (lambda m=good_manifest(w): lambda: cli("data", "manifest", "--manifest", m, "--manifest",
                                                           f"train={m}", "--out", w / "out"))(),
        fragment=("p.csv", "--manifest"))

    def ccexpert_file(w, before, name="r.json"):
        (w / name).write_text(json.dumps([{"uid": 1, "change_flag": 1, "img1_path": before, "img2_path": PAIR[1],
                                           "change_caption": ["a road is built"]}]))
        return w / name

    add("converters", "data ccexpert: the same --records twice",
        lambda w: (lambda r=ccexpert_file(w, PAIR[0]): lambda: cli("data", "ccexpert", "--records", r,
                                                                    "--records", r, "--out", w / "out"))(),
        fragment=("r.json", "--records"))

    def outside_root(w, *extra):
        (w / "root").mkdir()
        shutil.copy(PAIR[0], w / "secret.png")
        shutil.copy(PAIR[1], w / "root" / "after.png")
        (w / "r.json").write_text(json.dumps([{"uid": 1, "change_flag": 1, "img1_path": "../secret.png",
                                               "img2_path": "after.png", "change_caption": ["a road is built"]}]))
        return lambda: cli("data", "ccexpert", "--records", w / "r.json", "--image-root", w / "root", "--out",
                           w / "out", *extra)

    add("converters", "data ccexpert: image path leaving --image-root", outside_root,
        fragment=("../secret.png", "--image-root"))
    add("converters", "data ccexpert: image path leaving --image-root, allowed",
        lambda w: outside_root(w, "--allow-outside-root"), expect="ok", verify=lambda w, r: built_pairs(w / "out") == 1)
    add("converters", "data manifest jsonl id 0",
        lambda w: (lambda m=series_manifest(w / "p.jsonl", [
            {"id": 0, "before": b, "after": a, "caption": "houses appear"} for b, a in cd_rows(1)]): lambda: cli(
            "data", "manifest", "--manifest", m, "--out", w / "out"))(), expect="ok",
        verify=lambda w, r: parquet_column(w / "out", "id") == ["0"])
    add("converters", "data from-masks: the same --root twice",
        lambda w: lambda: cli("data", "from-masks", "--root", LEVIR_CD, "--root", f"train={LEVIR_CD}",
                              "--out", w / "out"), fragment=("levir_cd_samples", "--root"))
    add("converters", "data mix: the same source twice",
        lambda w: (cli("data", "manifest", "--manifest", good_manifest(w), "--out", w / "built"),
                   lambda: cli("data", "mix", "--source", f"{w / 'built'}:train:2", "--source",
                               f"{w / 'built'}:train:1", "--out", w / "out"))[1], fragment=("built", "--source"))

    # from-masks: classes named twice, binary masks of 0/1.
    def from_masks(w, classes, masks=None):
        root = w / "cd"
        for side in ("A", "B", "label"):
            (root / side).mkdir(parents=True)
        for name in CD_NAMES[:2]:
            shutil.copy(LEVIR_CD / "A" / name, root / "A" / name)
            shutil.copy(LEVIR_CD / "B" / name, root / "B" / name)
            grey = np.asarray(Image.open(LEVIR_CD / "label" / name).convert("L"))
            Image.fromarray(masks(grey) if masks else grey).save(root / "label" / name)
        return lambda: cli("data", "from-masks", "--root", root, "--out", w / "out",
                           *(["--classes", classes] if classes else []))

    add("from-masks", "--classes: one grey level named twice",
        lambda w: from_masks(w, "255=building,255=road"), fragment=("255=building", "255=road"))
    add("from-masks", "--classes: one name at two levels",
        lambda w: from_masks(w, "128=road,255=road"), fragment=("128=road", "255=road"))
    add("from-masks", "--classes: one colour named twice",
        lambda w: from_masks(w, "0/0/255=water,0/0/255=sea,255/255/255=unchanged"),
        fragment=("0/0/255=water", "0/0/255=sea"))
    add("from-masks", "binary masks of 0/1 are stored 0/255",
        lambda w: from_masks(w, None, masks=lambda g: (g > 0).astype(np.uint8)), expect="ok",
        verify=lambda w, r: stored_mask_levels(w / "out") <= {0, 255})

    # Streaming mixtures: a broken shard is named, with the command that rebuilds it.
    def broken_shard(w, damage):
        cli("data", "manifest", "--manifest", good_manifest(w), "--out", w / "built")
        shard = sorted((w / "built" / "data").glob("*.parquet"))[0]
        damage(shard)
        return lambda: cli("data", "mix", "--source", f"{w / 'built'}:train:2", "--out", w / "out")

    add("streaming", "data mix with a truncated Parquet shard",
        lambda w: broken_shard(w, lambda s: s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])),
        fragment=(".parquet", "rscc data"))
    add("streaming", "data mix with a shard that is not Parquet",
        lambda w: broken_shard(w, lambda s: s.write_bytes(b"not parquet" * 100)), fragment=(".parquet", "rscc data"))

    # The demo, through its API (gradio_client), as a browser reaches it.
    add("demo", "a truncated PNG", lambda w: (lambda t=truncated_png(w / "cut.png"): lambda: through_demo(
        TINY, PAIR[0], t))(), fragment="truncated", limit_s=300)
    add("demo", "a mask of another size than the pair",
        lambda w: (lambda m=(Image.open(LEVIR_CD / "label" / CD_NAMES[0]).convert("L").resize((100, 60), Image.Resampling.NEAREST).save(
            w / "m.png"), w / "m.png")[1]: lambda: through_demo(FILTER, *cd_rows(1)[0], m))(), expect="ok",
        verify=lambda w, r: "resized" in r.err, limit_s=300)
    add("demo", "a good pair", lambda w: lambda: through_demo(TINY, *PAIR), expect="ok", limit_s=300)
    return c


def held_by_another_run(out: Path, run) -> Result:
    """`run()` while another rscc run holds `out`: a one-process `rscc caption` of 400 pairs started just before."""
    other = rscc_child("caption", *pair_folders(out.parent, 400, "long_"), "--model", TINY, "--max-new-tokens", "48",
                       "--batch-size", "1", "--out", out)
    wait_for_lines(out.with_name(out.name + ".partial"), 1)
    result = run()
    other.wait(timeout=600)
    return result


def stored_mask_levels(folder: Path) -> set:
    masks = parquet_column(folder, "change_mask")
    return set(np.unique(np.concatenate([np.unique(np.asarray(Image.open(io.BytesIO(mask["bytes"]))))
                                         for mask in masks])).tolist())


def describe_with_tiny(pairs, model=None):
    from rscc import RsccForConditionalGeneration, RsccProcessor
    from rscc.captioning import describe_changes

    model = RsccForConditionalGeneration.from_pretrained(model or TINY).eval()
    return describe_changes(model, RsccProcessor.from_pretrained(TINY), pairs, max_new_tokens=2)


def sigterm_scene(work: Path):
    """`rscc scene` in a child process, sent SIGTERM mid-run: it must stop, and leave no file, hidden or not."""
    def run() -> Result:
        argv = ["scene", CHIPS / "pre" / "0_pre.tif", CHIPS / "post" / "0_post.tif", "--out", work / "s.geojson",
                "--model", TINY, "--tile-size", "32", "--max-new-tokens", "8"]
        code = f"import sys; from rscc.cli import main; sys.exit(main({[str(arg) for arg in argv]!r}))"
        child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(25)  # imports and the model load, then 1,024 tiles to caption
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
        return Result(code=0, err=err, out=json.dumps({"rc": child.returncode, "left": sorted(
            path.name for path in work.iterdir())}))
    return run


def stopped_cleanly(work: Path, result: Result) -> bool:
    child = json.loads(result.out)
    return child["rc"] in (130, 143) and not child["left"]


def main_campaign() -> None:
    global TINY, HEAD, FILTER, CHANGE_TOKENS, MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run these families (comma-separated)")
    parser.add_argument("--verbose", action="store_true", help="print every case's outcome")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rscc-campaign-") as scratch:
        scratch = Path(scratch)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            TINY = make_tiny_checkpoint(scratch / "tiny")
            HEAD = make_tiny_checkpoint(scratch / "head", use_change_head=True)
            FILTER = make_tiny_checkpoint(scratch / "filter", change_filter="drop")
            CHANGE_TOKENS = make_tiny_checkpoint(scratch / "change", visual_tokens="change", use_change_head=True)
        MODEL = ["--model", TINY]
        counts, by_family = Counter(), {}
        for case in cases():
            if args.only and case.family not in args.only.split(","):
                continue
            outcome = run_case(case, scratch, args.verbose)
            counts[outcome] += 1
            by_family.setdefault(case.family, Counter())[outcome] += 1
        stop_demos()
    print(f"rscc at {ROOT}: {sum(counts.values())} cases")
    print(f"{'family':10} " + " ".join(f"{name:>13}" for name in OUTCOMES))
    for family, family_counts in [*by_family.items(), ("all", counts)]:
        print(f"{family:10} " + " ".join(f"{family_counts[name]:>13}" for name in OUTCOMES))


if __name__ == "__main__":
    main_campaign()
