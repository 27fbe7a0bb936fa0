"""One model, one input, one caption: the Hub pipeline, `describe_changes`, `rscc caption` and the demo caption
through the same step (`captioning_rscc.describe_batch`), the no-change shortcut included."""

import pytest
import torch

from rscc.tiny_checkpoints import make_processor, tiny_config
from rscc.cli import main
from rscc.demo import Captioner
from rscc.captioning import describe_changes
from rscc.modeling_rscc import RsccForConditionalGeneration
from rscc.pipeline_rscc import ChangeCaptioningPipeline

MAX_NEW_TOKENS = 4


def save_model_seeing_no_change(folder, no_change_shortcut: bool):
    """A tiny model with a change head that predicts no change anywhere, saved with its processor."""
    processor = make_processor()
    torch.manual_seed(0)
    model = RsccForConditionalGeneration(
        tiny_config(processor.tokenizer, use_change_head=True, no_change_shortcut=no_change_shortcut)
    )
    with torch.no_grad():
        model.model.change_head.classifier.weight.zero_()
        model.model.change_head.classifier.bias.copy_(torch.tensor([4.0, -4.0]))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor


@pytest.mark.parametrize("no_change_shortcut", [False, True])
def test_pipeline_describe_changes_cli_and_demo_give_one_caption(no_change_shortcut, example_pairs, tmp_path, capsys):
    model, processor = save_model_seeing_no_change(tmp_path, no_change_shortcut)
    before, after = example_pairs[0]

    (description,) = describe_changes(model, processor, [[before, after]], max_new_tokens=MAX_NEW_TOKENS)
    piped = ChangeCaptioningPipeline(model=model, processor=processor)(
        {"before": before, "after": after}, max_new_tokens=MAX_NEW_TOKENS
    )
    demo_caption, _, _, message = Captioner(model, processor, "tiny", max_new_tokens=MAX_NEW_TOKENS).describe(
        before, after
    )
    capsys.readouterr()
    assert main(["caption", before, after, "--model", str(tmp_path), "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    cli_caption, cli_changed = capsys.readouterr().out.strip().splitlines()

    assert message == ""
    assert piped["caption"] == description.caption == demo_caption == cli_caption
    assert piped["changed"] is False and description.changed is False and cli_changed == "changed fraction: 0.0000"
    if no_change_shortcut:
        assert description.caption == model.config.no_change_caption
    else:
        assert description.caption != model.config.no_change_caption


def test_the_trained_no_change_sentence_becomes_the_models_no_change_caption():
    from rscc.training.run import _with_no_change_caption

    sentence = "Nothing has changed."
    assert _with_no_change_caption({"use_change_head": True}, sentence) == {
        "use_change_head": True, "no_change_caption": sentence}
    assert _with_no_change_caption(None, None) == {}
    with pytest.raises(ValueError, match="give the sentence once"):
        _with_no_change_caption({"no_change_caption": "The scene is the same as before."}, sentence)
