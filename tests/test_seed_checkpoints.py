"""Checkpoints saved by earlier rscc code, one per seed configuration, still load and compute the same logits."""

import json
from pathlib import Path

import pytest
import torch

from rscc import RsccForConditionalGeneration

SEED_CHECKPOINTS = Path(__file__).parent / "fixtures" / "seed_checkpoints"
SEED_NAMES = ["ccexpert", "mvcc_multiply", "mvcc_drop", "kcfi", "semantic_cc", "mvcc_video"]


@pytest.mark.parametrize("name", SEED_NAMES)
def test_saved_seed_checkpoint_gives_its_saved_logits(name):
    folder = SEED_CHECKPOINTS / name
    model = RsccForConditionalGeneration.from_pretrained(folder).eval()
    saved = torch.load(folder / "inputs_and_outputs.pt", weights_only=True)
    with torch.no_grad():
        outputs = model(**saved["inputs"])
    expected = saved["expected"]
    assert tuple(outputs.logits.shape) == tuple(expected["logits_shape"].tolist())
    kept = expected["logits"].shape[1]
    assert (outputs.logits[:, -kept:] - expected["logits"]).abs().max().item() <= 1e-5
    if "change_logits" in expected:
        assert (outputs.change_logits - expected["change_logits"]).abs().max().item() <= 1e-5
    else:
        assert outputs.change_logits is None


@pytest.mark.parametrize(
    "name, change_features",
    [("ccexpert", "difference_integration"), ("kcfi", "key_change"), ("mvcc_video", "none")],
)
def test_configs_saved_with_use_difference_integration_load_as_change_features(name, change_features, tmp_path):
    from rscc import RsccConfig

    saved = json.loads((SEED_CHECKPOINTS / name / "config.json").read_text())
    assert "use_difference_integration" in saved
    config = RsccConfig.from_pretrained(SEED_CHECKPOINTS / name)
    assert config.change_features == change_features
    config.save_pretrained(tmp_path)
    assert "use_difference_integration" not in json.loads((tmp_path / "config.json").read_text())
    assert RsccConfig.from_pretrained(tmp_path).change_features == change_features


def test_an_option_edited_after_construction_is_refused_at_save(tmp_path):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from rscc import RsccConfig

    config = RsccConfig()
    config.change_features = "none"
    config.visual_tokens = "change"
    with pytest.raises(StrictDataclassClassValidationError, match="set change_features='difference_integration'"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


# What the card of each seed configuration must say, and what it must not (a module the model does not have).
CARD_FACTS = {
    "ccexpert": (["Vision tower: SigLIP", "Difference integration (CCExpert)", "1 change-aware blocks"],
                 ["Key change", "token filter", "Change-detection head", "Video encoder"]),
    "mvcc_multiply": (["Difference integration (CCExpert)", "token filter (MV-CC): multiply, masks from the input"],
                      ["Key change", "Change-detection head", "Video encoder"]),
    "mvcc_drop": (["token filter (MV-CC): drop"], ["Key change", "Change-detection head", "Video encoder"]),
    "kcfi": (["Key change features (KCFI)", "Visual tokens: change segments",
              "Change-detection head: 2 classes, dwa"],
             ["Difference integration", "change-aware blocks", "Video encoder"]),
    "semantic_cc": (["Bi-temporal change semantic filter (Semantic-CC) after SigLIP layers [2, 4]",
                     "Change-detection head"], ["Key change", "token filter", "Video encoder"]),
    "mvcc_video": (["Video encoder (MV-CC): videomae, 2 layers, width 32", "token filter (MV-CC): multiply"],
                   ["Vision tower: SigLIP", "Difference integration", "change-aware blocks", "Key change"]),
}


@pytest.mark.parametrize("name", SEED_NAMES)
def test_model_card_describes_the_modules_the_configuration_builds(name):
    from rscc import RsccConfig
    from rscc.hub import describe_architecture

    card = describe_architecture(RsccConfig.from_pretrained(SEED_CHECKPOINTS / name))
    said, unsaid = CARD_FACTS[name]
    assert all(fact in card for fact in said), card
    assert not any(fact in card for fact in unsaid), card
    assert "Language model: Qwen2, 2 layers, width 32" in card


@pytest.mark.parametrize("name", ["ccexpert", "kcfi", "mvcc_video"])
def test_the_processor_gives_the_inputs_the_seed_checkpoints_were_saved_with(name):
    import importlib.util

    from rscc import RsccConfig

    spec = importlib.util.spec_from_file_location("make_seed_checkpoints", SEED_CHECKPOINTS / "make_seed_checkpoints.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    inputs = generator.fixed_inputs(RsccConfig.from_pretrained(SEED_CHECKPOINTS / name))
    saved = torch.load(SEED_CHECKPOINTS / name / "inputs_and_outputs.pt", weights_only=True)["inputs"]
    assert set(inputs) == set(saved)
    for key, value in saved.items():
        assert torch.equal(inputs[key], value), key
