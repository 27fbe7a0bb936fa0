"""Checkpoints saved by earlier rscc code, one per seed configuration, still load and compute the same logits."""

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
