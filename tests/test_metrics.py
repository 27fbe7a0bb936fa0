"""Tests of rscc.metrics: conventions, agreement with pycocoevalcap, id handling, subsets, change detection, reports."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

import rscc_console
from rscc import cli
from rscc.caption_text import is_no_change_caption
from rscc import metrics as M
from rscc.metrics import meteor, scoring
from rscc.processing_rscc import to_sentence_case

REPO_ROOT = Path(__file__).resolve().parent.parent
NEEDS_JAVA = pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH (METEOR / PTBTokenizer)")
NO_METEOR = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")

# Hand-made pairs: a change pair, a no-change pair, a change pair whose prediction wrongly says "no change".
PREDICTIONS = {
    "pair_a": "A new road is built.",
    "pair_b": "There is no difference.",
    "pair_c": "No change has occurred.",
    "pair_d": "Many houses were constructed along the river.",
}
REFERENCES = {
    "pair_a": [" a road is built .", " a new road appears in the scene ."],
    "pair_b": [" there is no difference .", " no change has occurred ."],
    "pair_c": [" some villas are built .", " many buildings appear ."],
    "pair_d": [" many houses are built along the river .", " some buildings appear by the river ."],
}
# The same captions normalised by hand as CCExpert does (lower-case, no ".", whitespace collapsed).
CCEXPERT_PREDICTIONS = {
    "pair_a": ["a new road is built"],
    "pair_b": ["there is no difference"],
    "pair_c": ["no change has occurred"],
    "pair_d": ["many houses were constructed along the river"],
}
CCEXPERT_REFERENCES = {
    "pair_a": ["a road is built", "a new road appears in the scene"],
    "pair_b": ["there is no difference", "no change has occurred"],
    "pair_c": ["some villas are built", "many buildings appear"],
    "pair_d": ["many houses are built along the river", "some buildings appear by the river"],
}


def coco_scores(gts, res):
    """pycocoevalcap called directly, on the 0-100 scale."""
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": 100 * bleu[n - 1] for n in range(1, 5)}
    scores["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    scores["CIDEr-D"] = 100 * Cider().compute_score(gts, res)[0]
    return scores


@pytest.fixture(scope="session")
def levir_json(shared_data):
    return shared_data / "levir_cc" / "LevirCCcaptions.json"


@pytest.fixture(scope="session")
def vocab_468(shared_data):
    return M.load_vocab(shared_data / "levir_cc" / "splits" / "vocab_468.json")


@pytest.fixture(scope="session")
def test_references(levir_json):
    return M.load_references(levir_json, "test")


@pytest.fixture
def small_levir_json(levir_json, tmp_path):
    """A LEVIR-CC-style file with the first 12 test pairs (6 change, 6 no change) of the real one."""
    images = json.loads(levir_json.read_text())["images"]
    test = [entry for entry in images if entry["split"] == "test"]
    keep = [e for e in test if e["changeflag"]][:6] + [e for e in test if not e["changeflag"]][:6]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": keep}))
    return path


def write_predictions(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------- conventions


def test_ccexpert_and_raw_conventions_normalise_as_documented():
    captions = {"x": ["  The road, is built.  ", "Two  houses\tappear ."]}
    assert M.apply_convention(captions, "ccexpert") == {"x": ["the road, is built", "two houses appear"]}
    assert M.apply_convention(captions, "raw") == {"x": ["The road, is built.", "Two houses appear ."]}


def test_vocab_ids_convention_follows_classic_tokenisation(vocab_468):
    # "," is split off and becomes <UNK> (id 1), "." and "?" vanish, unknown words become <UNK>.
    ids = M.apply_convention({"x": ["A road, is built.", "zebra t-shaped?"]}, "vocab-ids", vocab_468)
    expected_first = f"{vocab_468['a']} {vocab_468['road']} 1 {vocab_468['is']} {vocab_468['built']}"
    assert ids == {"x": [expected_first, f"1 {vocab_468['t-shaped']}"]}


def test_vocab_ids_drops_start_end_padding_and_keeps_unk(vocab_468):
    # A caption decoded from ids by a classic repository, special tokens written out.
    decoded = {"x": ["<START> There is no difference <END> <NULL> <NULL>", "<UNK> road"]}
    expected = " ".join(str(vocab_468[w]) for w in "there is no difference".split())
    assert M.apply_convention(decoded, "vocab-ids", vocab_468) == {"x": [expected, f"1 {vocab_468['road']}"]}


def test_vocab_ids_on_real_references_equal_the_published_token_encoding(levir_json, vocab_468):
    # The classic repositories encode the `tokens` of each sentence (Change-Agent's token files) with <UNK> for
    # rare words; our conversion of the `raw` sentences must give the same id strings for every test reference.
    images = [e for e in json.loads(levir_json.read_text())["images"] if e["split"] == "test"]
    raw = {e["filename"]: [s["raw"] for s in e["sentences"]] for e in images}
    unknown = vocab_468["<UNK>"]
    published = {
        e["filename"]: [" ".join(str(vocab_468.get(t, unknown)) for t in s["tokens"]) for s in e["sentences"]]
        for e in images
    }
    assert M.apply_convention(raw, "vocab-ids", vocab_468) == published
    assert any(" 1" in ids or ids.startswith("1") for caps in published.values() for ids in caps)  # <UNK> occurs


def test_unknown_convention_and_missing_vocab_are_explained():
    with pytest.raises(ValueError, match="ccexpert, ptb, vocab-ids, raw"):
        M.score_captions(PREDICTIONS, REFERENCES, convention="coco")
    with pytest.raises(ValueError, match="needs a vocabulary"):
        M.score_captions(PREDICTIONS, REFERENCES, convention="vocab-ids", metrics=["BLEU-4"])
    with pytest.raises(ValueError, match="unknown metric.*SPICE"):
        M.score_captions(PREDICTIONS, REFERENCES, metrics=["SPICE"])


def test_unreadable_vocab_file_is_named(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text('{"a": 0}')
    with pytest.raises(ValueError, match="vocab.json.*<UNK>"):
        M.load_vocab(bad)


# ---------------------------------------------------------------- agreement with pycocoevalcap


def test_scores_match_pycocoevalcap_called_directly():
    scores = M.score_captions(PREDICTIONS, REFERENCES, metrics=NO_METEOR)
    assert scores == pytest.approx(coco_scores(CCEXPERT_REFERENCES, CCEXPERT_PREDICTIONS), abs=1e-9)
    assert 0 < scores["BLEU-4"] < 100 and scores["CIDEr-D"] > 0


def test_whitespace_is_collapsed_so_a_leading_space_costs_nothing():
    padded = {k: [f"  {r}  " for r in refs] for k, refs in CCEXPERT_REFERENCES.items()}
    assert M.score_captions(PREDICTIONS, padded, metrics=NO_METEOR) == pytest.approx(
        M.score_captions(PREDICTIONS, CCEXPERT_REFERENCES, metrics=NO_METEOR)
    )
    # Without collapsing, ROUGE-L (which splits on single spaces) would drop: the reason for the rule.
    uncollapsed = {k: [f" {r}" for r in refs] for k, refs in CCEXPERT_REFERENCES.items()}
    assert coco_scores(uncollapsed, CCEXPERT_PREDICTIONS)["ROUGE-L"] < coco_scores(
        CCEXPERT_REFERENCES, CCEXPERT_PREDICTIONS
    )["ROUGE-L"]


def test_raw_convention_punishes_case_and_punctuation(test_references):
    # Sentence-case predictions ("A road is built.", CCExpert's target format) against LEVIR-CC's raw references
    # (" a road is built ."): each pair's first reference against the other four, on 400 real test pairs.
    ids = list(test_references)[:400]
    predictions = {i: to_sentence_case(test_references[i][0]) for i in ids}
    references = {i: test_references[i][1:] for i in ids}
    raw = M.score_captions(predictions, references, convention="raw", metrics=NO_METEOR)
    ccexpert = M.score_captions(predictions, references, metrics=NO_METEOR)
    for metric in ("BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert raw[metric] < ccexpert[metric] - 2


# ---------------------------------------------------------------- ids, duplicates, subsets


def test_missing_predictions_are_listed_with_a_count():
    references = {f"test_{i:06d}": ["a road is built"] for i in range(15)}
    with pytest.raises(M.MissingPredictionsError, match=r"15 of 15 .*test_000000, .*test_000009 \.\.\. \(and 5 more\)"):
        M.score_captions({}, references, metrics=["BLEU-4"])


def test_predictions_outside_the_references_are_ignored_with_a_warning(caplog):
    predictions = {**PREDICTIONS, "val_000001": "a road"}
    with caplog.at_level(logging.WARNING, logger="rscc.metrics"):
        report = M.evaluate_captions(predictions, REFERENCES, metrics=["BLEU-4"])
    assert "val_000001" in caplog.text
    assert report["counts"]["ignored_predictions"] == 1 and report["counts"]["pairs"] == 4


def test_duplicates_are_removed_and_disagreements_warned(caplog):
    rows = [
        {"id": "test_000001.png", "caption": "a road is built"},
        {"id": "test_000002", "caption": "there is no difference"},
        {"id": "test_000001", "caption": "a  road is built "},  # same caption: padding of a multi-GPU gather
        {"id": "test_000002", "caption": "a house appears"},  # disagrees: first one kept
    ]
    with caplog.at_level(logging.WARNING, logger="rscc.metrics"):
        captions, counts = M.deduplicate_predictions(rows)
    assert captions == {"test_000001": "a road is built", "test_000002": "there is no difference"}
    assert counts == {"rows": 4, "unique_ids": 2, "duplicate_rows": 2, "conflicting_ids": 1}
    assert "test_000002" in caplog.text and "test_000001" not in caplog.text


def test_subsets_and_change_decision_accuracy():
    report = M.evaluate_captions(PREDICTIONS, REFERENCES, metrics=NO_METEOR)
    assert report["counts"] == {
        "pairs": 4, "references": 8, "change_pairs": 3, "no_change_pairs": 1, "ignored_predictions": 0
    }
    # pair_c is a change pair predicted as "no change".
    decision = report["change_decision"]
    assert decision["accuracy"] == pytest.approx(75.0)
    assert decision["change_accuracy"] == pytest.approx(200 / 3)
    assert decision["no_change_accuracy"] == pytest.approx(100.0)
    change_ids = ["pair_a", "pair_c", "pair_d"]
    alone = M.score_captions(
        {i: PREDICTIONS[i] for i in change_ids}, {i: REFERENCES[i] for i in change_ids}, metrics=NO_METEOR
    )
    assert report["metrics"]["change"] == pytest.approx(alone)
    assert report["metrics"]["all"] == pytest.approx(M.score_captions(PREDICTIONS, REFERENCES, metrics=NO_METEOR))
    assert report["metrics"]["no_change"]["CIDEr-D"] == 0.0  # one pair: zero document frequency weight
    assert report["convention"]["name"] == "ccexpert" and report["versions"]["pycocoevalcap"]


# ---------------------------------------------------------------- loading


def test_load_references_reads_levir_cc_test_split(test_references):
    assert len(test_references) == 1929
    assert all(len(captions) == 5 for captions in test_references.values())
    assert "test_000001" in test_references and all(i.startswith("test_") for i in test_references)
    no_change = [i for i, refs in test_references.items() if all(is_no_change_caption(r) for r in refs)]
    assert len(no_change) == 965


def test_load_references_errors_name_the_problem(levir_json, tmp_path):
    with pytest.raises(ValueError, match="no pairs of split 'tst'.*test, train, val"):
        M.load_references(levir_json, "tst")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        M.load_references(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        M.load_references(broken)


def test_load_references_from_a_dataset_folder_reads_only_ids_and_captions(tmp_path):
    import datasets

    (tmp_path / "data").mkdir()
    rows = {
        "id": ["test_000001", "test_000002"],
        "before": [b"not an image", b"not an image"],  # would fail if decoded as an image
        "captions": [["A road is built."], ["There is no difference."]],
        "change_flag": [1, 0],
    }
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    references = M.load_references(tmp_path, "test")
    assert references == {"test_000001": ["A road is built."], "test_000002": ["There is no difference."]}
    with pytest.raises(ValueError, match="split 'val'"):
        M.load_references(tmp_path, "val")


def test_load_predictions_reports_bad_lines(tmp_path):
    good = write_predictions(tmp_path / "p.jsonl", [{"id": "test_000001.png", "caption": "a road"}])
    assert M.load_predictions(good)[0] == {"test_000001": "a road"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "caption": "x"}\n{"id": "b", caption}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: not valid JSON"):
        M.load_predictions(bad)
    keyless = write_predictions(tmp_path / "keyless.jsonl", [{"image": "a", "text": "x"}])
    with pytest.raises(ValueError, match='line 1: expected an object with "id" and "caption"'):
        M.load_predictions(keyless)


# ---------------------------------------------------------------- Java missing


def test_missing_java_skips_meteor_unless_required(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    with caplog.at_level(logging.WARNING, logger="rscc.metrics"):
        report = M.evaluate_captions(PREDICTIONS, REFERENCES)
    assert report["metrics"]["all"]["METEOR"] is None and report["metrics"]["all"]["S_m"] is None
    assert report["metrics"]["all"]["BLEU-4"] == pytest.approx(
        M.score_captions(PREDICTIONS, REFERENCES, metrics=["BLEU-4"])["BLEU-4"]
    )
    assert "apt-get install default-jre-headless" in report["meteor_error"] and "METEOR" in caplog.text
    with pytest.raises(M.JavaNotFoundError, match="METEOR runs on Java.*apt-get install default-jre-headless"):
        M.score_captions(PREDICTIONS, REFERENCES, require_meteor=True)
    with pytest.raises(M.JavaNotFoundError, match="'ptb' convention"):
        M.score_captions(PREDICTIONS, REFERENCES, convention="ptb", metrics=["BLEU-4"])


# ---------------------------------------------------------------- change detection


def test_binary_change_detection_metrics_by_hand():
    metrics = M.ChangeDetectionMetrics()
    metrics.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))  # TP 2, FP 1, FN 0, TN 1
    result = metrics.compute()
    assert result["precision"] == pytest.approx(200 / 3)
    assert result["recall"] == pytest.approx(100.0)
    assert result["f1"] == pytest.approx(80.0)
    assert result["iou"] == pytest.approx(200 / 3)
    assert result["overall_accuracy"] == pytest.approx(75.0)
    assert result["per_class_iou"]["class_0"] == pytest.approx(50.0)
    assert result["miou"] == pytest.approx((50 + 200 / 3) / 2)


def test_change_detection_accumulates_over_batches_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    predictions, targets = rng.integers(0, 3, (4, 16, 16)), rng.integers(0, 3, (4, 16, 16))
    whole = M.ChangeDetectionMetrics(3, class_names=["background", "road", "building"])
    whole.update(predictions, targets)
    batched = M.ChangeDetectionMetrics(3, class_names=["background", "road", "building"])
    for prediction, target in zip(predictions, targets):
        batched.update(torch.from_numpy(prediction), torch.from_numpy(target))
    assert batched.compute() == whole.compute()
    matrix = np.zeros((3, 3))
    np.add.at(matrix, (targets.ravel(), predictions.ravel()), 1)
    road_iou = matrix[1, 1] / (matrix[1].sum() + matrix[:, 1].sum() - matrix[1, 1])
    assert whole.compute()["per_class_iou"]["road"] == pytest.approx(100 * road_iou)
    merged_tp = matrix[1:, 1:].sum()
    assert whole.compute()["precision"] == pytest.approx(100 * merged_tp / matrix[:, 1:].sum())


def test_change_detection_ignore_index_and_bad_input():
    metrics = M.ChangeDetectionMetrics(ignore_index=255)
    metrics.update(np.array([1, 0, 1]), np.array([1, 0, 255]))
    assert metrics.compute()["pixels"] == 2 and metrics.compute()["f1"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="outside 0..1"):
        metrics.update(np.array([2]), np.array([1]))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(np.zeros((2, 2)), np.zeros((2, 3)))
    empty = M.ChangeDetectionMetrics()
    empty.update(np.zeros(4, dtype=int), np.zeros(4, dtype=int))
    assert empty.compute()["precision"] is None and empty.compute()["miou"] == pytest.approx(100.0)


def test_real_levir_cd_masks(shared_data):
    from PIL import Image

    label_dir = shared_data / "levir_cd_samples" / "label"
    metrics = M.ChangeDetectionMetrics(class_names=["unchanged", "changed"])
    for label_path in sorted(label_dir.glob("*.png")):
        target = M.mask_to_class_indices(np.array(Image.open(label_path)), (0, 255))
        metrics.update(target, target)  # a perfect prediction
        metrics.update(np.zeros_like(target), target)  # a model that never predicts change
    result = metrics.compute()
    assert result["recall"] == pytest.approx(50.0) and result["precision"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="outside the label values"):
        M.mask_to_class_indices(np.array([0, 128, 255]), (0, 255))


# ---------------------------------------------------------------- reports, model card, CLI, evaluate


def test_reports_are_written_as_json_that_reads_back(tmp_path):
    report = M.evaluate_captions(PREDICTIONS, REFERENCES, metrics=["BLEU-4", "CIDEr-D"])
    path = M.write_report(report, tmp_path / "out" / "report.json")
    assert json.loads(path.read_text()) == report


def test_cli_writes_report_and_prints_table(small_levir_json, tmp_path, capsys):
    references = M.load_references(small_levir_json, "test")
    rows = [{"id": f"{i}.png", "caption": to_sentence_case(refs[0])} for i, refs in references.items()]
    predictions = write_predictions(tmp_path / "p.jsonl", rows + rows[:2])  # two padded duplicates
    output = tmp_path / "report.json"
    exit_code = cli.main(
        ["eval", "--predictions", str(predictions), "--references", str(small_levir_json), "--split", "test",
         "--metrics", "BLEU-4", "ROUGE-L", "CIDEr-D", "--output", str(output)]
    )
    assert exit_code == 0
    report = json.loads(output.read_text())
    assert report["convention"]["name"] == "ccexpert" and report["references"]["split"] == "test"
    assert report["predictions"]["rows"] == 14 and report["predictions"]["duplicate_rows"] == 2
    assert report["counts"]["pairs"] == 12 and set(report["metrics"]) == {"all", "change", "no_change"}
    assert report["metrics"]["all"]["ROUGE-L"] == pytest.approx(
        M.score_captions({r["id"][:-4]: r["caption"] for r in rows}, references, metrics=["ROUGE-L"])["ROUGE-L"]
    )
    assert set(report["versions"]) >= {"rscc", "pycocoevalcap", "python", "java"}
    printed = capsys.readouterr().out
    assert "convention: ccexpert" in printed and "no_change" in printed and "BLEU-4" in printed

    # --keep-duplicates scores all 14 rows, as an evaluation that does not de-duplicate would.
    assert cli.main(
        ["eval", "--predictions", str(predictions), "--references", str(small_levir_json), "--keep-duplicates",
         "--metrics", "BLEU-4", "CIDEr-D", "--output", str(output)]
    ) == 0
    report = json.loads(output.read_text())
    assert report["counts"]["pairs"] == 14 and report["predictions"]["duplicates_scored"] is True
    row_predictions, row_references = M.every_row_as_a_pair(rows + rows[:2], references)
    assert len(row_predictions) == 14 and row_references[f"{rows[0]['id'][:-4]}#2"] == references[rows[0]["id"][:-4]]
    expected = M.score_captions(row_predictions, row_references, metrics=["CIDEr-D"])["CIDEr-D"]
    assert report["metrics"]["all"]["CIDEr-D"] == pytest.approx(expected)


def test_cli_errors_exit_with_a_message(small_levir_json, tmp_path, capsys):
    predictions = write_predictions(tmp_path / "p.jsonl", [{"id": "test_000001", "caption": "a road"}])
    args = ["eval", "--predictions", str(predictions), "--references", str(small_levir_json), "--metrics", "BLEU-4"]
    assert cli.main(args) == 2
    assert "have no prediction" in capsys.readouterr().err
    assert cli.main(args + ["--convention", "vocab-ids"]) == 2
    assert "needs --vocab" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(args + ["--convention", "coco"])


def test_evaluate_module_loads_by_path_and_delegates():
    import evaluate

    metric = evaluate.load(str(REPO_ROOT / "eval" / "rscc_caption_metric.py"))
    ids = list(PREDICTIONS)
    result = metric.compute(
        predictions=[PREDICTIONS[i] for i in ids], references=[REFERENCES[i] for i in ids], metrics=list(NO_METEOR)
    )
    assert result.pop("convention") == "ccexpert"
    assert result == pytest.approx(M.score_captions(PREDICTIONS, REFERENCES, metrics=NO_METEOR))


# ---------------------------------------------------------------- Java: METEOR and PTBTokenizer


@pytest.mark.parametrize(
    "arguments, needed",
    [
        (["eval", "--predictions", "p.jsonl", "--references", "r.json"], True),
        (["eval", "--human-agreement", "--references", "r.json", "--metrics", "S_m"], True),
        (["eval", "--predictions", "p.jsonl", "--references", "r.json", "--metrics", "BLEU-4", "CIDEr-D"], False),
        (["eval", "--help"], False),
        (["caption", "a.png", "b.png"], False),
        ([], False),
    ],
)
def test_console_script_starts_meteor_only_for_evaluations_that_need_it(arguments, needed):
    assert rscc_console._eval_needs_meteor(arguments) is needed


def test_metrics_take_over_the_meteor_process_the_console_script_started(monkeypatch):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        monkeypatch.setattr(meteor, "_prestarted_meteor", process)
        monkeypatch.setattr(meteor, "_meteor_process", None)
        monkeypatch.setattr(meteor, "require_java", lambda what: None)
        assert meteor.shared_meteor().meteor_p is process
        assert meteor.take_prestarted_meteor() is None, "handed out once"
    finally:
        process.kill()
        process.wait()


@pytest.mark.java
@pytest.mark.slow
@NEEDS_JAVA
def test_meteor_matches_pycocoevalcap_called_directly(test_references):
    from pycocoevalcap.meteor.meteor import Meteor

    ids = list(test_references)[:150] + list(test_references)[-150:]
    predictions = {i: to_sentence_case(test_references[i][2]) for i in ids}
    references = {i: test_references[i][:2] + test_references[i][3:] for i in ids}
    predictions.update(PREDICTIONS)
    references.update(REFERENCES)
    predictions["pair_empty"], references["pair_empty"] = "", ["a road is built"]
    report = M.evaluate_captions(predictions, references, require_meteor=True)
    gts, res = scoring._normalise_pairs(predictions, references, "ccexpert", None)
    direct = Meteor()
    assert report["metrics"]["all"]["METEOR"] == pytest.approx(100 * direct.compute_score(gts, res)[0], abs=1e-9)
    change = [i for i, refs in references.items() if not all(is_no_change_caption(r) for r in refs)]
    change_direct = direct.compute_score({i: gts[i] for i in change}, {i: res[i] for i in change})[0]
    assert report["metrics"]["change"]["METEOR"] == pytest.approx(100 * change_direct, abs=1e-9)
    assert 0 < report["metrics"]["all"]["METEOR"] < 100
    components = [report["metrics"]["all"][m] for m in M.S_M_COMPONENTS]
    assert report["metrics"]["all"]["S_m"] == pytest.approx(sum(components) / 4)


@pytest.mark.java
@pytest.mark.slow
@NEEDS_JAVA
def test_cli_full_test_split_with_meteor(levir_json, test_references, tmp_path):
    rows = [{"id": i, "caption": to_sentence_case(refs[0])} for i, refs in test_references.items()]
    predictions = write_predictions(tmp_path / "p.jsonl", rows)
    output = tmp_path / "report.json"
    # Through the console script, which starts METEOR's JVM before importing rscc and hands it to rscc.metrics.
    command = [sys.executable, "-m", "rscc_console", "eval", "--predictions", str(predictions), "--references",
               str(levir_json), "--require-meteor", "--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(output.read_text())
    assert report["counts"] == {
        "pairs": 1929, "references": 9645, "change_pairs": 964, "no_change_pairs": 965, "ignored_predictions": 0
    }
    assert report["metrics"]["all"]["METEOR"] == pytest.approx(100.0)  # every prediction is one of its references
    assert report["change_decision"]["accuracy"] == pytest.approx(100.0)
    assert report["meteor_error"] is None


@pytest.mark.java
@pytest.mark.slow
@NEEDS_JAVA
def test_leave_one_out_human_agreement_and_convention_effects(test_references, vocab_468):
    reports = {
        convention: M.leave_one_out_agreement(test_references, convention, vocab=vocab_468, require_meteor=True)
        for convention in ("ccexpert", "ptb", "vocab-ids")
    }
    ccexpert = reports["ccexpert"]["metrics"]["all"]
    assert len(reports["ccexpert"]["runs"]) == 5 and "leave-one-out" in reports["ccexpert"]["method"]
    assert ccexpert == pytest.approx(
        {m: np.mean([run["all"][m] for run in reports["ccexpert"]["runs"]]) for m in M.CAPTION_METRICS}
    )
    # Figures recorded when the evaluator was written (pycocoevalcap 1.2, METEOR 1.5): a regression guard.
    assert ccexpert == pytest.approx(LEAVE_ONE_OUT_CCEXPERT, abs=0.01)
    # The reference notes: PTBTokenizer gives the same numbers as CCExpert's normalisation on this data (2 of the
    # 50,385 LEVIR-CC sentences tokenise differently: "road's", "a\\almost").
    assert reports["ptb"]["metrics"]["all"] == pytest.approx(ccexpert, abs=0.01)
    # Ids cannot match stems, synonyms or paraphrases: METEOR drops, CIDEr-D rises a little, BLEU barely moves.
    vocab_ids = reports["vocab-ids"]["metrics"]["all"]
    assert vocab_ids["METEOR"] < ccexpert["METEOR"] - 0.2
    assert 0 < vocab_ids["CIDEr-D"] - ccexpert["CIDEr-D"] < 1
    assert vocab_ids["BLEU-4"] == pytest.approx(ccexpert["BLEU-4"], abs=0.1)


LEAVE_ONE_OUT_CCEXPERT = {
    "BLEU-1": 53.9674, "BLEU-2": 34.0161, "BLEU-3": 22.4145, "BLEU-4": 15.1599,
    "METEOR": 20.0649, "ROUGE-L": 32.7091, "CIDEr-D": 26.2875, "S_m": 23.5554,
}
