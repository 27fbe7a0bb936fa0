"""`rscc data mix --config`: the CC-Foundation recipe, built from the sources a user has."""

import re
import sys
from pathlib import Path

import datasets
import pytest

from rscc.cli import main
from rscc.data import load_change_dataset
from rscc.data.recipe import Recipe
from rscc.data.schema import DataInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "mixtures" / "cc_foundation.yaml"


def test_cc_foundation_recipe_follows_the_paper():
    recipe = Recipe.load(RECIPE)
    pairs = {source.name: source.paper_pairs for source in recipe.sources}
    # CCExpert Table I: 200k pairs ("20w") from nine sources.
    assert pairs == {"clevr_change": 40000, "image_editing_request": 4000, "spot_the_diff": 12000,
                     "stvchrono": 10000, "vismin": 83000, "levir_cc": 10000, "changesim": 24000, "sysu_cd": 13000,
                     "second": 5000}
    # Sec. IV-A1: LEVIR-CC, SYSU-CD and SECOND upsampled threefold.
    assert {source.name for source in recipe.sources if source.factor == 3} == {"levir_cc", "sysu_cd", "second"}
    assert {source.factor for source in recipe.sources} == {1, 3}


def _built_levir_cc(shared_data: Path, tmp_path: Path) -> Path:
    """SOURCES/levir_cc built from the 3 real LEVIR-CC pairs, as the mixture benchmark builds it; returns SOURCES."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_mixture import build_levir_cc
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return build_levir_cc(shared_data, tmp_path)


def test_recipe_mixes_the_built_sources_and_lists_the_missing(shared_data, tmp_path, capsys):
    sources = _built_levir_cc(shared_data, tmp_path)
    assert main(["data", "from-masks", "--root", str(shared_data / "levir_cd_samples"), "--skip-invalid",
                 "--source-name", "sysu_cd", "--out", str(sources / "sysu_cd")]) == 0  # stands in for SYSU-CD
    capsys.readouterr()
    out = tmp_path / "cc_foundation"
    assert main(["data", "mix", "--config", str(RECIPE), "--sources-root", str(sources), "--out", str(out)]) == 0
    errors = capsys.readouterr().err
    missing = re.findall(r"rscc data mix: (\w+) is not built under", errors)
    assert missing == ["clevr_change", "image_editing_request", "spot_the_diff", "stvchrono", "vismin", "changesim",
                       "second"]
    assert "Build it with: rscc data second --root train=SECOND/train" in errors
    train = load_change_dataset(str(out), split="train")
    assert len(train) == 3 * 3 + 11 * 3  # both present sources are upsampled threefold
    assert sorted(i for i in train["id"] if i.startswith("train_000016")) == [
        "train_000016", "train_000016#1", "train_000016#2"]
    card = (out / "README.md").read_text()
    assert "## Recipe: CC-Foundation" in card
    assert "| levir_cc | 10000 | 3 | 11.7% | yes |" in card  # 30k of the paper's 257k upsampled pairs
    assert "| vismin | 83000 | 1 | 32.3% | missing |" in card
    assert "pretty_name: CC-Foundation" in card

    assert main(["data", "mix", "--config", str(RECIPE), "--sources-root", str(sources), "--require-all",
                 "--out", str(tmp_path / "all")]) == 2
    assert "7 of 9 sources not built" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("sources: []", "non-empty list `sources`"),
    ("sources: [{name: a}]", r"sources\[0\] must be a mapping with at least name and path"),
    ("sources: [{name: a, path: a, factor: 0}]", r"sources\[0\]: factor must be a positive integer, got 0"),
    ("sources: [{name: a, path: a, weight: 2}]", r"sources\[0\]: unknown key\(s\) weight"),
    ("sources: [{name: a, path: a}, {name: a, path: b}]", "source\\(s\\) a listed more than once"),
    ("sources: [", "not valid YAML"),
])
def test_bad_recipes_name_the_file_and_source(tmp_path, content, message):
    (tmp_path / "recipe.yaml").write_text(content)
    with pytest.raises(DataInputError, match=message):
        Recipe.load(tmp_path / "recipe.yaml")


def test_training_step_on_the_streamed_mixture(shared_data, tmp_path, tiny_model, tiny_processor,
                                               single_torch_thread):
    """The mixture read as a stream (Parquet shards read as it goes), one caption per example, batched by the
    training collator, and one optimizer step of the tiny model on it."""
    import torch

    from rscc.data import streaming_caption_view
    from rscc.training.trainer import ChangeCaptionCollator

    sources = _built_levir_cc(shared_data, tmp_path)
    out = tmp_path / "mixture"
    assert main(["data", "mix", "--config", str(RECIPE), "--sources-root", str(sources), "--out", str(out)]) == 0
    stream = load_change_dataset(str(out), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    flattened = list(streaming_caption_view(stream, "flatten"))
    assert len(flattened) == 9 * 5 and flattened[0]["caption"] == flattened[0]["captions"][0]
    drawn = [example["caption"] for example in streaming_caption_view(stream, "random_choice", seed=1)]
    assert len(drawn) == 9 and drawn == [e["caption"] for e in streaming_caption_view(stream, "random_choice", seed=1)]
    assert all(caption in example["captions"] for caption, example in zip(drawn, flattened[::5]))

    loader = torch.utils.data.DataLoader(streaming_caption_view(stream, "random_choice").with_format(None),
                                         batch_size=3, collate_fn=ChangeCaptionCollator(tiny_processor))
    batch = next(iter(loader))
    tiny_model.train()
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in tiny_model.parameters() if p.requires_grad]
    loss = tiny_model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = [p.detach() for p in tiny_model.parameters() if p.requires_grad]
    assert any(not torch.equal(old, new) for old, new in zip(before, after))
