"""Model cards from an evaluation JSON, and the Hub folder `rscc publish` assembles (offline)."""

import json
import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from test_remote_code import HIDE_RSCC_AND_GENERATE

from rscc.cli import main
from rscc.compat_rscc import TRANSFORMERS_REQUIREMENT
from rscc.hub import build_model_card, eval_results_from_evaluation, load_evaluation, publish, validate_model_card

pytestmark = pytest.mark.usefixtures("single_torch_thread")

EVALUATION = {
    "convention": "levir-cc-official",
    "split": "test",
    "dataset": "LEVIR-CC",
    "metrics": {"BLEU-1": 84.12, "BLEU-4": 60.25, "METEOR": 38.9, "ROUGE-L": 74.01, "CIDEr-D": 130.48, "S_m": 75.91},
    "counts": {"pairs": 1929, "references": 9645},
    "versions": {"rscc": "0.1.0", "pycocoevalcap": "1.2"},
}


@pytest.fixture
def evaluation_file(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(EVALUATION))
    return path


def test_card_carries_hub_metadata_and_model_index_with_the_convention(evaluation_file, tiny_checkpoint, tmp_path):
    out = tmp_path / "card" / "README.md"
    argv = ["card", str(evaluation_file), "--repo-id", "someone/rscc-tiny", "--out", str(out),
            "--model", str(tiny_checkpoint)]
    assert main(argv) == 0
    card = ModelCard.load(out)  # huggingface_hub's own parser: YAML and model-index must be valid
    metadata = card.data.to_dict()
    assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-text-to-text" and "remote-sensing" in metadata["tags"]
    assert metadata["base_model"] == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    assert metadata["datasets"] == ["levir-cc"] and {"bleu", "meteor", "rouge", "cider"} <= set(metadata["metrics"])
    results = card.data.eval_results
    assert card.data.model_name == "rscc-tiny"
    assert {r.metric_name: r.metric_value for r in results} == EVALUATION["metrics"]
    assert {(r.dataset_name, r.dataset_split, r.metric_config) for r in results} == {
        ("LEVIR-CC", "test", "levir-cc-official")
    }
    assert next(r for r in results if r.metric_name == "BLEU-4").metric_args == {"max_order": 4}
    text = card.text
    assert "trust_remote_code=True" in text and 'load_captioner("someone/rscc-tiny")' in text
    assert "revision=revision" in text and TRANSFORMERS_REQUIREMENT in text, "remote code pinned, window stated"
    assert "| CIDEr-D | 130.48 |" in text and "levir-cc-official" in text and "pairs 1929" in text
    assert "SigLIP, 4 layers, width 32" in text  # from the checkpoint's config
    assert "## Limitations" in text and "Not recorded for this checkpoint." in text


def test_card_reads_an_rscc_eval_report(tmp_path, shared_data):
    references = shared_data / "levir_cc" / "LevirCCcaptions.json"
    from rscc.metrics import load_references

    test_references = load_references(references, split="test")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "caption": r[0]}) + "\n" for i, r in test_references.items()))
    report = tmp_path / "eval.json"
    assert main(["eval", "--predictions", str(predictions), "--references", str(references), "--metrics", "BLEU-4",
                 "ROUGE-L", "--output", str(report)]) == 0
    evaluation = load_evaluation(report)
    assert (evaluation["convention"], evaluation["split"], evaluation["dataset"]) == ("ccexpert", "test",
                                                                                     "LevirCCcaptions")
    assert set(evaluation["metrics"]) == {"BLEU-4", "ROUGE-L"}
    out = tmp_path / "README.md"
    assert main(["card", str(report), "--repo-id", "someone/rscc-tiny", "--out", str(out)]) == 0
    results = ModelCard.load(out).data.eval_results
    assert {r.metric_name: r.metric_value for r in results} == {k: round(v, 4) for k, v in evaluation["metrics"].items()}


def test_the_evaluation_mapping_keeps_unknown_metrics_and_the_recipe_is_rendered(tmp_path):
    evaluation = {**EVALUATION, "metrics": {"SPICE": 23.5}}
    (result,) = eval_results_from_evaluation(evaluation, dataset_id="my-org/levir-cc")
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("spice", 23.5, "my-org/levir-cc")
    card = build_model_card("someone/rscc", evaluation, recipe={"learning_rate": 2e-5, "epochs": 3})
    validate_model_card(card)
    assert "| learning_rate | 2e-05 |" in card.text and "| epochs | 3 |" in card.text


@pytest.mark.parametrize(
    "content, message",
    [
        ({key: value for key, value in EVALUATION.items() if key != "convention"}, "field 'convention' is missing"),
        ({**EVALUATION, "metrics": {"BLEU-4": "high"}}, "not numbers: \\['BLEU-4'\\]"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_evaluation_json_is_a_clear_error_and_no_card_is_written(content, message, tmp_path, capsys):
    path = tmp_path / "evaluation.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "card" / "README.md"
    assert main(["card", str(path), "--repo-id", "someone/rscc", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rscc card: error: evaluation file") and re.search(message, error)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    with pytest.raises(ValueError, match="evaluation file not found"):
        load_evaluation(tmp_path / "missing.json")


def test_dry_run_assembles_a_folder_that_loads_without_rscc(evaluation_file, tiny_checkpoint, example_pairs, tmp_path):
    out = tmp_path / "hub" / "rscc-tiny"
    argv = ["publish", str(tiny_checkpoint), "--repo-id", "someone/rscc-tiny", "--eval", str(evaluation_file),
            "--dry-run", "--out", str(out)]
    assert main(argv) == 0
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "configuration_rscc.py", "modeling_rscc.py", "processing_rscc.py",
            "processor_config.json", "tokenizer.json", "README.md", "pipeline_rscc.py"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert sorted(os.listdir(out.parent)) == ["rscc-tiny"]  # no temporary folder left beside it
    card = ModelCard.load(out / "README.md")
    validate_model_card(card)
    assert card.data.eval_results[0].metric_config == "levir-cc-official"

    result = subprocess.run(
        [sys.executable, "-c", HIDE_RSCC_AND_GENERATE + PIPELINE_WITHOUT_RSCC, str(out), *example_pairs[0]],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generated, piped = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert generated["model"].startswith("transformers_modules.") and not generated["rscc_imported"]
    assert len(generated["captions"]) == 2
    assert piped["pipeline"] == "ChangeCaptioningPipeline" and not piped["rscc_imported"]
    assert piped["caption"] == generated["captions"][0]  # the pipeline captions the pair as generate does
    assert piped["series_piped"] == [piped["series_generated"]] * 2  # and a series, as a dict or a tuple
    assert "expected two or more dates" in piped["one_date_error"]


# Appended to the hidden-rscc script: the same pair through transformers.pipeline, in the same process.
PIPELINE_WITHOUT_RSCC = r"""
from transformers import pipeline
captioner = pipeline(model=folder, trust_remote_code=True)
caption = captioner({"before": before, "after": after}, max_new_tokens=4)["caption"]
series = [before, after, before]
series_inputs = processor(images=[series])
(series_generated,) = processor.post_process_captions(
    model.generate(**series_inputs, max_new_tokens=4, do_sample=False), series_inputs)
series_piped = [captioner(sample, max_new_tokens=4)["caption"] for sample in ({"images": series}, tuple(series))]
try:
    captioner({"images": [before]})
    one_date_error = None
except ValueError as error:
    one_date_error = str(error)
print(json.dumps({"pipeline": type(captioner).__name__, "caption": caption, "series_generated": series_generated,
                  "series_piped": series_piped, "one_date_error": one_date_error,
                  "rscc_imported": any(m == "rscc" or m.startswith("rscc.") for m in sys.modules)}))
"""


class RecordingHubApi:
    """Stands in for HfApi: records the calls and what the uploaded folder held."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_publish_validates_the_card_on_the_hub_then_creates_the_repo_and_uploads(tiny_checkpoint, monkeypatch):
    validated = []
    monkeypatch.setattr(ModelCard, "validate", lambda card, repo_type=None: validated.append(str(card)))
    api = RecordingHubApi()
    card = build_model_card("someone/rscc-tiny", EVALUATION)
    result = publish(tiny_checkpoint, "someone/rscc-tiny", card, private=True, api=api)
    assert validated == [str(card)]
    (create, upload) = api.calls
    assert create == ("create_repo", "someone/rscc-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert upload[0:2] == ("upload_folder", "someone/rscc-tiny")
    assert {"README.md", "model.safetensors", "pipeline_rscc.py"} <= set(upload[2])
    assert result.url.endswith("/commit/0") and result.folder is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dry-run"], "--dry-run writes the folder only, so it needs --out"),
        (["--dry-run", "--out", ""], "--out is an empty path"),
        (["--dry-run", "--out", "{existing}"], "already exists and is not an empty folder"),
        (["--repo-id", "no-slash", "--dry-run", "--out", "{fresh}"], "--repo-id 'no-slash'"),
    ],
)
def test_bad_publish_input_is_a_clear_error(extra, message, tiny_checkpoint, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    extra = [value.format(existing=existing, fresh=tmp_path / "fresh") for value in extra]
    assert main(["publish", str(tiny_checkpoint), "--repo-id", "someone/rscc", *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("rscc publish: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"] and os.listdir(existing) == ["keep.txt"]


def test_publish_refuses_a_folder_that_is_not_an_rscc_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["publish", str(tmp_path), "--repo-id", "someone/rscc", "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert "holds a 'bert' model; expected an rscc checkpoint" in capsys.readouterr().err
