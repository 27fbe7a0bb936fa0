"""The inference benchmark runs end to end on the tiny preset and writes its JSON and table (figures are not tested)."""

import json
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.slow
def test_inference_benchmark_runs_and_writes_its_results(shared_data, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import bench_inference

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n\n<!-- results:tiny:start -->\nold\n<!-- results:tiny:end -->\n\nafter\n")
    out = tmp_path / "figures.json"
    bench_inference.main(["--preset", "tiny", "--pairs", "2", "--batch-sizes", "1", "--repeats", "1",
                          "--json", str(out), "--readme", str(readme)])
    figures = json.loads(out.read_text())
    runs = figures["runs"]
    assert list(runs) == list(bench_inference.MODELS)
    assert runs["stock"]["visual_tokens_per_pair"] == 2 * (27 * 27 + 1)
    assert runs["difference + drop (input masks)"]["visual_tokens_per_pair"] < runs["stock"]["visual_tokens_per_pair"]
    assert runs["difference module"]["gflop_per_pair"]["difference_module"] > 0
    assert runs["KCFI (key change tokens only + head)"]["visual_tokens_per_pair"] == 27 * 27 + 1
    assert runs["KCFI (key change tokens only + head)"]["gflop_per_pair"]["key_change_perceiver"] > 0
    filters = "Semantic-CC filters (4 BCSF in the tower)"
    assert runs[filters]["visual_tokens_per_pair"] == runs["stock"]["visual_tokens_per_pair"]
    assert runs[filters]["gflop_per_pair"]["vision_tower"] > runs["stock"]["gflop_per_pair"]["vision_tower"]
    assert figures["parameters"][filters] > figures["parameters"]["stock"]
    text = readme.read_text()
    assert "old" not in text and "| stock |" in text and text.endswith("after\n") and "intro" in text
    sys.modules.pop("bench_inference", None)


@pytest.mark.slow
def test_inference_benchmark_compares_pair_encodings(shared_data, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import bench_inference

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    out = tmp_path / "figures.json"
    bench_inference.main(["--preset", "tiny", "--variants", "encodings", "--pairs", "2", "--batch-sizes", "1",
                          "--repeats", "1", "--json", str(out), "--readme", str(readme)])
    runs = json.loads(out.read_text())["runs"]
    assert list(runs) == list(bench_inference.ENCODING_MODELS)
    visual = {name: run["visual_tokens_per_pair"] for name, run in runs.items()}
    # LLaVA-OneVision's 2-frame video: 2 x 14 x 14 + 1; the video encoder: 224 px / 16 px = 14 x 14 tubelets + 1.
    assert visual["stock"] == 1460 and visual["llava_video"] == 393 and visual["video_encoder"] == 197
    assert visual["video_encoder + multiply (input masks, MV-CC)"] == 197
    assert visual["video_encoder + drop (input masks)"] < 197
    assert runs["video_encoder"]["gflop_per_pair"]["backbone"] > 0
    assert runs["video_encoder"]["gflop_per_pair"].get("vision_tower", 0.0) == 0.0
    assert "<!-- results:tiny-encodings:start -->" in readme.read_text()
    sys.modules.pop("bench_inference", None)
