"""Change masks: the MV-CC token filter, the change-detection head, the joint losses and self-guided filtering."""

import datetime
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from rscc import RsccConfig, RsccForConditionalGeneration
from rscc.tiny_checkpoints import TINY_DIFFERENCE_OPTIONS, build_tiny_tokenizer, llava_onevision_0_5b_config, tiny_config
from rscc.compat_rscc import image_features_seen
from rscc.captioning import describe_changes
from rscc.token_filter_rscc import change_masks_to_tokens, context_token_mask, pack_kept_positions
from rscc.processing_rscc import load_change_mask
from rscc.training import TaskLossWeighting

CAPTIONS = ["A road is built.", "Many houses appear along the new road in the top left corner."]


def build(processor, seed=0, **options):
    """A tiny rscc model with a live difference module (non-zero output scale), in eval mode."""
    torch.manual_seed(seed)
    model = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options)).eval()
    with torch.no_grad():
        model.model.difference_module.output_scale.normal_()
    return model


def twin(model, processor, **options):
    """A model with `model`'s weights (those it has) and other options."""
    other = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options)).eval()
    missing, _ = other.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return other


@pytest.fixture(scope="module")
def levir_cd(shared_data):
    """The real LEVIR-CD pairs that have a label: `([before, after], label_path)` each."""
    folder = shared_data / "levir_cd_samples"
    names = sorted(path.name for path in (folder / "label").iterdir())
    return [([str(folder / "A" / name), str(folder / "B" / name)], str(folder / "label" / name)) for name in names]


@pytest.fixture(scope="module")
def changed_and_unchanged(levir_cd):
    """Two real pairs with their real masks plus the first one with an empty mask: different kept counts."""
    (pair, mask), (other_pair, other_mask) = levir_cd[0], levir_cd[1]
    empty = np.zeros((256, 256), np.uint8)
    return [pair, other_pair, pair], [mask, other_mask, empty]


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory):
    """A saved stock LLaVA-OneVision model with tiny random weights."""
    config = tiny_config(build_tiny_tokenizer()).to_dict()
    rscc_options = {*RsccConfig.__dataclass_fields__} - {*LlavaOnevisionConfig.__dataclass_fields__}
    for key in rscc_options | {"model_type"}:
        config.pop(key, None)
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("stock-llava-ov")
    LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stock_run(stock_folder, tiny_processor, example_pairs):
    """A training batch and the stock model's logits on it."""
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(stock_folder).eval()
    inputs = tiny_processor(images=example_pairs, captions=CAPTIONS)
    with torch.no_grad():
        return inputs, stock(**inputs).logits


# --- configuration -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"change_filter": "zero"}, "change_filter='zero'"),
        ({"change_mask_source": "head"}, "change_mask_source='head'"),
        ({"change_loss_weighting": "uncertainty"}, "change_loss_weighting"),
        ({"change_mask_source": "predicted"}, "use_change_head=True"),
        ({"no_change_shortcut": True}, "use_change_head=True"),
        ({"change_filter": "drop", "change_filter_min_tokens": 10}, "square number"),
        ({"change_filter": "drop", "change_filter_min_tokens": 784}, "at most 729"),
        ({"use_change_head": True, "vision_feature_select_strategy": "default"}, "full token grid"),
        ({"use_change_head": True, "change_head_num_classes": 1}, "at least 2"),
        ({"change_loss_dwa_temperature": 0.0}, "> 0"),
    ],
)
def test_config_rejects_inconsistent_change_options(options, message):
    with pytest.raises(ValueError, match=message):
        RsccConfig(**options)


def test_config_defaults_leave_the_model_unfiltered_and_round_trip():
    config = RsccConfig()
    assert (config.change_filter, config.change_mask_source, config.use_change_head) == ("none", "input", False)
    options = dict(
        change_filter="drop", change_mask_source="predicted", use_change_head=True, change_filter_min_tokens=9
    )
    reloaded = RsccConfig.from_dict(RsccConfig(**options).to_dict())
    assert {key: getattr(reloaded, key) for key in options} == options


# --- mask to token grid --------------------------------------------------------------------------------------------


def test_masks_of_any_resolution_are_sampled_at_token_centres_of_the_config_grid(levir_cd):
    grid = llava_onevision_0_5b_config().vision_grid_size
    assert grid == 27
    label = np.array(Image.open(levir_cd[0][1]))
    tokens = change_masks_to_tokens(torch.from_numpy(label)[None].long(), grid)[0].view(grid, grid)
    centres = ((np.arange(grid) + 0.5) * label.shape[0] / grid).astype(int)
    assert torch.equal(tokens, torch.from_numpy(label[np.ix_(centres, centres)] > 0))
    assert 0 < tokens.sum() < grid * grid

    # The same pattern at 4x the resolution gives the same tokens.
    upsampled = torch.from_numpy(label).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(change_masks_to_tokens(upsampled[None].long(), grid)[0].view(grid, grid), tokens)


def test_context_floor_is_a_uniform_sub_grid():
    mask = context_token_mask(27, 16).view(27, 27)
    rows, columns = mask.nonzero().unbind(1)
    assert mask.sum() == 16
    assert sorted(set(rows.tolist())) == sorted(set(columns.tolist())) == [3, 10, 16, 23]
    assert context_token_mask(27, 0).sum() == 0 and context_token_mask(7, 49).all()


def test_packing_lists_kept_positions_on_the_padding_side():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert pack_kept_positions(keep, left_padding=True).tolist() == [
        [-1, -1, 0, 2, 3],
        [-1, -1, -1, -1, 1],
        [0, 1, 2, 3, 4],
    ]
    assert pack_kept_positions(keep[:2], left_padding=False).tolist() == [[0, 2, 3], [1, -1, -1]]


# --- equivalences --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, with_masks",
    [
        ({"use_change_head": True}, True),  # head on, its mask unused
        ({"use_change_head": True, "change_filter": "drop"}, False),  # input source, no mask given
        ({"change_filter": "multiply"}, False),
    ],
)
def test_fresh_model_with_change_options_matches_stock(stock_folder, stock_run, options, with_masks):
    inputs, stock_logits = stock_run
    model = RsccForConditionalGeneration.from_llava_onevision(stock_folder, **TINY_DIFFERENCE_OPTIONS, **options)
    masks = torch.zeros(2, 28, 28, dtype=torch.long) if with_masks else None
    with torch.no_grad():
        output = model.eval()(**inputs, change_masks=masks)
    assert (stock_logits - output.logits).abs().max().item() <= 1e-5
    assert (output.change_logits is not None) == options.get("use_change_head", False)
    assert output.kept_positions is None
    if with_masks:
        assert output.change_loss is not None and output.caption_loss is not None


def test_from_llava_onevision_reports_the_change_head_as_new(stock_folder):
    model, report = RsccForConditionalGeneration.from_llava_onevision(
        stock_folder, output_loading_info=True, use_change_head=True, **TINY_DIFFERENCE_OPTIONS
    )
    head_names = {f"model.change_head.{name}" for name, _ in model.model.change_head.named_parameters()}
    assert head_names <= set(report["new_parameters"])


def test_all_ones_mask_drop_equals_no_filter(tiny_processor, example_pairs):
    none = build(tiny_processor, use_change_head=True)
    drop = twin(none, tiny_processor, use_change_head=True, change_filter="drop")
    inputs = tiny_processor(images=example_pairs, captions=CAPTIONS)
    ones = torch.ones(2, 28, 28, dtype=torch.long)
    with torch.no_grad():
        expected = none(**inputs, change_masks=ones)
        dropped = drop(**inputs, change_masks=ones)
    real = inputs["attention_mask"].bool()
    assert dropped.kept_positions.shape == inputs["input_ids"].shape
    assert torch.equal(dropped.logits[real], expected.logits[real])
    assert torch.equal(dropped.loss, expected.loss)

    prompts = tiny_processor(images=example_pairs, text=[tiny_processor.prompt, "Compare <image> and <image>."])
    options = dict(change_masks=ones, max_new_tokens=6, do_sample=False)
    assert torch.equal(none.generate(**prompts, **options), drop.generate(**prompts, **options))


def test_multiply_zeroes_unchanged_tokens_of_both_images_and_keeps_the_length(tiny_processor, example_pairs):
    model = build(tiny_processor, change_filter="multiply")
    inputs = tiny_processor(images=example_pairs)
    masks = torch.zeros(2, 28, 28, dtype=torch.long)
    masks[0, :8, :8] = 1  # the top-left 2x2 tokens of the 7x7 grid of pair 0; pair 1 unchanged
    with torch.no_grad():
        output = model(**inputs, change_masks=masks)
    features = image_features_seen(output).view(4, 50, -1)
    nonzero = features.abs().sum(-1) > 0
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[:2, :2] = True
    for image in range(4):
        grid = expected if image < 2 else torch.zeros_like(expected)
        assert torch.equal(nonzero[image, :49].view(7, 7), grid)
        assert nonzero[image, 49], "the newline token is not filtered"
    assert output.logits.shape[1] == inputs["input_ids"].shape[1]


# --- drop: sequence shortening, labels, generation -----------------------------------------------------------------


def test_drop_keeps_changed_tokens_plus_the_context_floor(tiny_processor, changed_and_unchanged):
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop", change_filter_min_tokens=4)
    inputs = tiny_processor(images=pairs, change_masks=masks)
    with torch.no_grad():
        output = model(**inputs)
    image_token = model.config.image_token_id
    text_tokens = (inputs["input_ids"] != image_token).sum(1)
    kept = (output.kept_positions >= 0).sum(1)

    context = np.zeros((7, 7), bool)
    context[np.ix_([1, 5], [1, 5])] = True  # 2x2 sub-grid: centres of the two halves of 7 tokens
    for row, mask in enumerate(inputs["change_masks"].numpy()):
        changed = mask[2::4, 2::4] > 0  # centre pixel of each 4x4-pixel token of the 28-pixel input
        expected_visual = 2 * ((changed | context).sum() + 1)  # both images, plus their newline tokens
        assert kept[row] - text_tokens[row] == expected_visual
    assert kept[2] - text_tokens[2] == 2 * (4 + 1), "an empty mask keeps only the floor and the newlines"
    assert output.logits.shape[1] == kept.max() < inputs["input_ids"].shape[1]


def test_drop_equals_the_language_model_on_the_physically_shorter_sequence(tiny_processor, changed_and_unchanged):
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop", use_change_head=True)
    inputs = tiny_processor(images=pairs, captions=[*CAPTIONS, "No change."], change_masks=masks)
    assert inputs["attention_mask"][:, -1].tolist() != [1, 1, 1], "right-padded training batch"
    with torch.no_grad():
        output = model(**inputs)
        features = model.model.get_image_features(
            inputs["pixel_values"],
            inputs["image_sizes"],
            batch_num_images=inputs["batch_num_images"],
            change_masks=inputs["change_masks"],
        )
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        image_positions = inputs["input_ids"] == model.config.image_token_id
        embeds[image_positions] = torch.cat(features.pooler_output)
        keep = inputs["attention_mask"].bool().clone()
        keep[image_positions] &= features.kept_tokens.flatten()

    manual_losses, supervised = [], 0
    for row in range(3):
        positions = keep[row].nonzero()[:, 0]
        with torch.no_grad():
            # The shortened sequence is an ordinary one: contiguous positions, as the language model's default.
            hidden = model.model.language_model(inputs_embeds=embeds[row, positions][None]).last_hidden_state
        reference = model.lm_head(hidden)[0]
        slots = output.kept_positions[row] >= 0
        assert torch.equal(output.kept_positions[row, slots], positions)
        torch.testing.assert_close(output.logits[row, slots], reference, rtol=1e-5, atol=1e-5)

        labels = inputs["labels"][row, positions]
        supervised += (labels != -100).sum().item()
        manual_losses.append(
            torch.nn.functional.cross_entropy(reference[:-1], labels[1:], ignore_index=-100, reduction="sum")
        )
    assert supervised == (inputs["labels"] != -100).sum().item(), "no supervised token is dropped"
    torch.testing.assert_close(output.caption_loss, torch.stack(manual_losses).sum() / supervised)
    with torch.no_grad():  # the training path: LM head on the caption window of the shortened sequence only
        windowed = model(**inputs, labelled_logits_only=True)
    assert windowed.logits.shape[1] < output.logits.shape[1]
    torch.testing.assert_close(windowed.caption_loss, output.caption_loss)


def test_batched_generate_with_mixed_kept_counts(tiny_processor, changed_and_unchanged):
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop")
    prompts = [tiny_processor.prompt, "Compare <image> with <image> and describe every change.", tiny_processor.prompt]
    batch = tiny_processor(images=pairs, text=prompts, change_masks=masks)
    with torch.no_grad():
        kept = (model(**batch).kept_positions >= 0).sum(1)
    assert len(set(kept.tolist())) == 3, "each sample keeps a different number of positions"

    options = dict(max_new_tokens=4, do_sample=False)
    batched = model.generate(**batch, **options)
    one_by_one = [
        model.generate(**tiny_processor(images=[pair], text=prompt, change_masks=[mask]), **options)[0]
        for pair, prompt, mask in zip(pairs, prompts, masks)
    ]
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(one_by_one):
        assert batched[row, width:].tolist() == single[-4:].tolist()
    # Without a cache every step re-runs (and re-drops) the whole prompt: the cached steps must agree with it.
    assert torch.equal(model.generate(**batch, use_cache=False, **options), batched)
    beams = model.generate(**batch, num_beams=2, num_return_sequences=2, max_new_tokens=3, do_sample=False)
    assert beams.shape == (6, width + 3)


def test_pairs_without_change_skip_difference_integration(tiny_processor, changed_and_unchanged):
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop")
    plain = twin(model, tiny_processor, change_filter="drop", change_features="none")
    inputs = tiny_processor(images=pairs, change_masks=masks)
    arguments = (inputs["pixel_values"], inputs["image_sizes"])
    options = dict(batch_num_images=inputs["batch_num_images"], change_masks=inputs["change_masks"])
    with torch.no_grad():
        refined = model.model.get_image_features(*arguments, **options).pooler_output
        raw = plain.model.get_image_features(*arguments, **options).pooler_output
    assert not torch.allclose(refined[0], raw[0]), "a changed pair goes through the module"
    assert torch.equal(refined[4], raw[4]) and torch.equal(refined[5], raw[5]), "the unchanged pair does not"


def difference_inputs(model, processor, pairs):
    """The difference module's inputs for `pairs`: per-level hidden states and the features it refines."""
    inputs = processor(images=pairs)
    size = model.config.vision_grid_size**2
    with torch.no_grad():
        hidden = model.model.vision_tower(
            inputs["pixel_values"][:, 0], output_hidden_states=True
        ).hidden_states
    levels = [hidden[layer][:, -size:] for layer in model.config.difference_feature_layers]
    features = hidden[model.config.vision_feature_layer][:, -size:]
    return [level[0::2] for level in levels], [level[1::2] for level in levels], features[0::2], features[1::2]


def test_mask_sparse_difference_module_packs_pairs_and_leaves_other_tokens_raw(tiny_processor, levir_cd):
    model = build(tiny_processor)
    module = model.model.difference_module
    pairs = [levir_cd[0][0], levir_cd[1][0], levir_cd[2][0]]
    before_levels, after_levels, before, after = difference_inputs(model, tiny_processor, pairs)
    grid = model.config.vision_grid_size**2
    generator = torch.Generator().manual_seed(0)
    token_mask = torch.rand(3, grid, generator=generator) < torch.tensor([[0.2], [0.6], [0.9]])
    assert len(set(token_mask.sum(1).tolist())) == 3, "different kept counts in one batch"
    with torch.no_grad():
        packed = module(before_levels, after_levels, before, after, kept_tokens=token_mask)
        for pair in range(3):
            alone = module(
                [level[pair : pair + 1] for level in before_levels],
                [level[pair : pair + 1] for level in after_levels],
                before[pair : pair + 1],
                after[pair : pair + 1],
                kept_tokens=token_mask[pair : pair + 1],
            )
            for packed_side, alone_side, raw in zip(packed, alone, (before, after)):
                torch.testing.assert_close(packed_side[pair], alone_side[0], rtol=1e-5, atol=1e-5)
                kept = token_mask[pair]
                assert torch.equal(packed_side[pair, ~kept], raw[pair, ~kept]), "unkept tokens stay raw"
                assert not torch.allclose(packed_side[pair, kept], raw[pair, kept]), "kept tokens are refined"
        dense = module(before_levels, after_levels, before, after)
        all_kept = module(before_levels, after_levels, before, after, kept_tokens=torch.ones(3, grid, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(dense, all_kept)), "all tokens kept: exactly the dense module"
    assert not torch.allclose(packed[0], dense[0]), "the sparse module attends to the kept tokens only"


def test_mask_sparse_difference_module_follows_the_kept_tokens(tiny_processor, changed_and_unchanged):
    """Under "drop", each changed pair runs the difference module on its kept tokens (changed plus the context
    floor), the changed pairs packed into one call; the unchanged pair skips it."""
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop")
    inputs = tiny_processor(images=pairs, change_masks=masks)
    arguments = (inputs["pixel_values"], inputs["image_sizes"])
    options = dict(batch_num_images=inputs["batch_num_images"], change_masks=inputs["change_masks"])
    calls = []
    model.model.difference_module.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["kept_tokens"].sum(1).tolist()), with_kwargs=True
    )
    with torch.no_grad():
        features = model.model.get_image_features(*arguments, **options)
    kept = features.kept_tokens[0::2, :-1].sum(1).tolist()
    assert calls == [kept[:2]], "the changed pairs run on their kept tokens; the unchanged pair skips the module"
    assert kept[0] < model.config.vision_grid_size**2


def test_predicted_source_filters_with_the_head_unless_a_mask_is_given(tiny_processor, changed_and_unchanged):
    pairs, masks = changed_and_unchanged
    model = build(tiny_processor, change_filter="drop", use_change_head=True, change_mask_source="predicted")
    with torch.no_grad():  # a head that sees no change anywhere
        model.model.change_head.classifier.weight.zero_()
        model.model.change_head.classifier.bias.copy_(torch.tensor([4.0, -4.0]))
    inputs = tiny_processor(images=pairs, change_masks=[masks[0], None, None])
    text_tokens = (inputs["input_ids"] != model.config.image_token_id).sum(1)
    with torch.no_grad():
        kept = (model(**inputs).kept_positions >= 0).sum(1) - text_tokens
        inputs.pop("change_masks")
        kept_self_guided = (model(**inputs).kept_positions >= 0).sum(1) - text_tokens
    floor = 2 * (16 + 1)
    assert kept[0] > floor, "the given mask drives pair 0"
    assert kept[1:].tolist() == [floor, floor], "the head drives the pairs without a mask"
    assert kept_self_guided.tolist() == [floor] * 3


# --- losses --------------------------------------------------------------------------------------------------------


def test_only_pairs_with_a_mask_add_detection_loss(tiny_processor, levir_cd):
    model = build(tiny_processor, use_change_head=True)
    pairs = [levir_cd[0][0], levir_cd[1][0]]
    inputs = tiny_processor(images=pairs, captions=CAPTIONS, change_masks=[levir_cd[0][1], None])
    with torch.no_grad():
        output = model(**inputs)
        unlabelled = model(**tiny_processor(images=pairs, captions=CAPTIONS, change_masks=[None, None]))
    expected = torch.nn.functional.cross_entropy(output.change_logits[:1], inputs["change_masks"][:1])
    torch.testing.assert_close(output.change_loss, expected)
    assert output.change_logits.shape == (2, 2, 28, 28)
    assert unlabelled.change_loss is None and torch.equal(unlabelled.loss, unlabelled.caption_loss)


def head_gradient(model, loss):
    model.zero_grad()
    loss.backward()
    return model.model.change_head.classifier.weight.grad.clone()


CPU_STEP = SimpleNamespace(device=torch.device("cpu"))  # the `args` a TrainerCallback's `on_step_end` reads


@pytest.mark.parametrize("weighting", ["fixed", "normalized"])
def test_fixed_and_normalized_weighting(tiny_processor, levir_cd, weighting):
    model = build(tiny_processor, use_change_head=True, change_loss_weighting=weighting, change_loss_weight=0.3).train()
    inputs = tiny_processor(images=[levir_cd[0][0]], captions=CAPTIONS[:1], change_masks=[levir_cd[0][1]])
    output = model(**inputs)
    # The model's own loss is the fixed weighting under every setting; "normalized" is the Trainer's.
    torch.testing.assert_close(output.loss, output.caption_loss + 0.3 * output.change_loss)
    # The head acts on the caption only through the filter (off here), so its gradient is the change loss's.
    change_gradient = head_gradient(model, model(**inputs).change_loss)
    if weighting == "fixed":
        torch.testing.assert_close(head_gradient(model, output.loss), 0.3 * change_gradient)
    else:
        combined = TaskLossWeighting("normalized").combine(output.caption_loss, output.change_loss, training=True)
        torch.testing.assert_close(combined, torch.tensor(2.0))
        torch.testing.assert_close(head_gradient(model, combined), change_gradient / output.change_loss.detach())


def test_dwa_weights_follow_the_formula(tiny_processor, levir_cd):
    temperature = 0.5
    model = build(
        tiny_processor, use_change_head=True, change_loss_weighting="dwa", change_loss_dwa_temperature=temperature
    ).train()
    weighting = TaskLossWeighting("dwa", temperature=temperature)
    history, weights_seen = [], []
    for step in range(4):
        (pair, mask), (other_pair, other_mask) = levir_cd[step], levir_cd[step + 1]
        captions = CAPTIONS[step % 2 :] + CAPTIONS[: step % 2]
        inputs = tiny_processor(images=[pair, other_pair], captions=captions, change_masks=[mask, other_mask])
        with torch.no_grad():
            output = model(**inputs)
        losses = torch.stack([output.caption_loss, output.change_loss])
        if len(history) < 2:
            weights = torch.ones(2)
        else:
            rates = history[-1] / history[-2]
            weights = 2 * torch.exp(rates / temperature) / torch.exp(rates / temperature).sum()
        combined = weighting.combine(output.caption_loss, output.change_loss, training=True)
        torch.testing.assert_close(combined, (weights * losses).sum())
        weighting.on_step_end(CPU_STEP, None, None)
        history.append(losses)
        weights_seen.append(weights)
    assert max((weights - 1).abs().max().item() for weights in weights_seen) > 1e-3, "the weights moved"

    weighting.combine(output.caption_loss, output.change_loss, training=False)
    weighting.on_step_end(CPU_STEP, None, None)
    assert torch.equal(torch.tensor(weighting.history[-1]), history[-1]), "evaluation does not feed the weights"
    restored = TaskLossWeighting(**weighting.state()["args"], history=weighting.state()["attributes"]["history"])
    assert restored.history == weighting.history, "the state a checkpoint keeps rebuilds the weighting"


def _record_dwa_losses(rank: int, port: int, results) -> None:
    # A collective one process skips fails at the timeout instead of hanging the test.
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        weighting = TaskLossWeighting("dwa")
        for step in range(3):
            # Process 1's step 1 has no labelled change mask, so no change loss (and no combination).
            if (rank, step) != (1, 1):
                weighting.combine(torch.tensor(1.0 + rank + step), torch.tensor(10.0 * (rank + 1) + step), True)
            weighting.on_step_end(CPU_STEP, None, None)
        results[rank] = weighting.history
    finally:
        torch.distributed.destroy_process_group()


def test_dwa_history_is_averaged_over_processes():
    """Each process sees its own batch's losses; the weights must not differ between processes."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Manager().dict()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.start_processes(_record_dwa_losses, args=(port, results), nprocs=2, start_method="spawn")
    # Steps 1 and 2 (the history keeps two). Step 1: process 0's losses (2, 11) alone; step 2: caption (3, 4) -> 3.5,
    # change (12, 22) -> 17.
    assert results[0] == results[1] == [[2.0, 11.0], [3.5, 17.0]]


def test_dice_term_and_three_class_masks(tiny_processor, example_pairs):
    mci = np.zeros((256, 256), np.uint8)
    mci[:100, :] = 128  # road
    mci[150:, 50:200] = 255  # building
    tiny_processor.num_change_classes = 3
    try:
        inputs = tiny_processor(images=example_pairs[:1], captions=CAPTIONS[:1], change_masks=[mci])
    finally:
        tiny_processor.num_change_classes = 2
    assert inputs["change_masks"].unique().tolist() == [0, 1, 2]
    plain = build(tiny_processor, use_change_head=True, change_head_num_classes=3)
    dice = twin(plain, tiny_processor, use_change_head=True, change_head_num_classes=3, change_dice_weight=0.7)
    with torch.no_grad():
        without, with_dice = plain(**inputs), dice(**inputs)
    probabilities = with_dice.change_logits.softmax(1)[0]
    target = torch.nn.functional.one_hot(inputs["change_masks"][0], 3).permute(2, 0, 1).float()
    overlap = (probabilities * target).sum((1, 2))[1:]
    total = (probabilities + target).sum((1, 2))[1:]
    dice_loss = (1 - (2 * overlap + 1) / (total + 1)).mean()
    torch.testing.assert_close(with_dice.change_loss, without.change_loss + 0.7 * dice_loss)


def test_model_rejects_masks_it_cannot_read(tiny_processor, example_pairs):
    model = build(tiny_processor, use_change_head=True, change_filter="drop")
    inputs = tiny_processor(images=example_pairs)
    with pytest.raises(ValueError, match=r"change_masks of shape \(3, 28, 28\): expected \(batch_size=2"):
        model(**inputs, change_masks=torch.zeros(3, 28, 28, dtype=torch.long))
    three_class = build(tiny_processor, use_change_head=True, change_head_num_classes=3)
    with pytest.raises(ValueError, match=r"change_masks hold \[7\]"):
        three_class(**inputs, change_masks=torch.full((2, 28, 28), 7))


# --- processor: mask encodings -------------------------------------------------------------------------------------


def test_real_levir_cd_label_is_binary(levir_cd):
    label = np.asarray(Image.open(levir_cd[0][1]))
    classes = load_change_mask(levir_cd[0][1])
    assert classes.dtype == np.int64 and np.array_equal(classes, (label == 255).astype(np.int64))


def mci_levels():
    levels = np.zeros((16, 16), np.uint8)
    levels[:4] = 128
    levels[10:, 8:] = 255
    return levels


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda levels: Image.fromarray(levels), id="grey PNG"),
        pytest.param(lambda levels: Image.fromarray(np.stack([levels] * 3, -1)), id="grey RGB"),
        pytest.param(lambda levels: Image.fromarray(np.stack([levels, levels // 2, levels * 0], -1)), id="red channel"),
        pytest.param(lambda levels: Image.fromarray(np.stack([levels] * 3 + [levels * 0 + 255], -1)), id="RGBA"),
        pytest.param(lambda levels: torch.from_numpy(levels)[None], id="(1, H, W) tensor"),
        pytest.param(lambda levels: np.stack([levels] * 3), id="(3, H, W) array"),
    ],
)
def test_levir_mci_encodings(tmp_path, encode):
    levels = mci_levels()
    mask = encode(levels)
    if isinstance(mask, Image.Image):
        mask.save(tmp_path / "mask.png")
        mask = tmp_path / "mask.png"
    expected = np.select([levels == 128, levels == 255], [1, 2], 0)
    assert np.array_equal(load_change_mask(mask, num_classes=3), expected)
    assert np.array_equal(load_change_mask(mask, num_classes=2), (expected > 0).astype(np.int64))


def test_class_id_and_boolean_masks():
    ids = np.zeros((8, 8), np.uint8)
    ids[2:5, 3:] = 1
    for mask in (ids, torch.from_numpy(ids).bool(), torch.from_numpy(ids).float()):
        assert np.array_equal(load_change_mask(mask), ids)
    palette = Image.fromarray(ids, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    assert np.array_equal(load_change_mask(palette), ids)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.array([[0, 7], [7, 0]], np.uint8), r"mask values \[0, 7\] match no documented encoding"),
        (np.array([[0, 1], [2, 0]], np.uint8), r"\[0, 1, 2\]"),  # class 2 for a 2-class head
        (np.array([[[0, 255, 0], [0, 0, 0]]], np.uint8), r"RGB mask colours \[\[0, 255, 0\]\] have no class"),
        (np.array([[0.0, 0.5]]), "whole class codes"),
        (np.zeros((2, 3, 4, 5)), "not a mask"),
    ],
)
def test_unexplained_mask_values_are_errors(mask, message):
    with pytest.raises(ValueError, match=message):
        load_change_mask(mask, name="change_masks[0]")


def test_processor_names_bad_mask_files(tiny_processor, example_pairs, tmp_path):
    Image.fromarray(np.full((256, 256), 42, np.uint8)).save(tmp_path / "label.png")
    with pytest.raises(ValueError, match=r"change_masks\[1\] \(.*label.png\): mask values \[42\]"):
        tiny_processor(images=example_pairs, change_masks=[None, tmp_path / "label.png"])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        tiny_processor(images=example_pairs, change_masks=[tmp_path / "gone.png", None])
    with pytest.raises(ValueError, match=r"change_masks: expected one entry per sample \(2\), got 1"):
        tiny_processor(images=example_pairs, change_masks=[None])


def test_processor_output_and_resizing(tiny_processor, levir_cd, caplog):
    pair, label = levir_cd[0]
    double = Image.open(label).resize((512, 512), Image.NEAREST)
    with caplog.at_level("WARNING"):
        inputs = tiny_processor(images=[pair, pair, pair], change_masks=[label, double, None])
    assert [record.getMessage() for record in caplog.records if "change_masks" in record.getMessage()] == [
        "change_masks[1]: mask of 512x512 (height x width) differs from its images (256x256); resized with nearest "
        "neighbour"
    ]
    masks = inputs["change_masks"]
    assert masks.shape == (3, 28, 28) and masks.dtype == torch.long
    assert torch.equal(masks[0], masks[1]), "nearest resizing keeps the same pixels"
    assert masks[2].eq(-100).all(), "a pair without a mask is unlabelled"
    centres = ((np.arange(28) + 0.5) * 256 / 28).astype(int)
    assert np.array_equal(masks[0].numpy(), (np.asarray(Image.open(label))[np.ix_(centres, centres)] > 0))


# --- post-processing and the no-change shortcut --------------------------------------------------------------------


def test_post_processing_resizes_logits_to_the_original_size(tiny_processor):
    logits = torch.zeros(2, 2, 28, 28)
    logits[0, 1] = torch.where(torch.arange(28) < 14, 5.0, -5.0)  # left half changed
    results = tiny_processor.post_process_change_masks(logits, target_sizes=[(256, 256), (384, 768)])
    assert results[0]["change_mask"].shape == (256, 256) and results[1]["change_mask"].shape == (384, 768)
    assert results[0]["changed_fraction"] == 0.5 and results[0]["changed"]
    assert (results[0]["change_mask"][:, :128] == 1).all() and (results[0]["change_mask"][:, 128:] == 0).all()
    assert results[1]["changed_fraction"] == 0.0 and not results[1]["changed"]


def test_describe_changes_on_real_levir_cd_pairs(tiny_processor, levir_cd, shared_data):
    folder = shared_data / "levir_cd_samples"
    stray = [str(folder / "A" / "test_113_0256.png"), str(folder / "B" / "test_113_0256.png")]  # 768x384 RGBA
    pairs = [pair for pair, _ in levir_cd[:3]] + [stray]
    model = build(tiny_processor, use_change_head=True, change_filter="drop", change_mask_source="predicted")
    descriptions = describe_changes(model, tiny_processor, pairs, batch_size=3, max_new_tokens=3)
    assert len(descriptions) == 4
    for description, pair in zip(descriptions, pairs):
        width, height = Image.open(pair[0]).size
        assert isinstance(description.caption, str)
        assert description.change_mask.shape == (height, width)
        assert set(np.unique(description.change_mask).tolist()) <= {0, 1}
        assert description.changed_fraction == pytest.approx((description.change_mask != 0).mean())
        assert description.changed == (description.changed_fraction > 0)


def test_no_change_shortcut_skips_the_language_model(tiny_processor, levir_cd, monkeypatch):
    pairs = [pair for pair, _ in levir_cd[:2]]
    model = build(tiny_processor, use_change_head=True, no_change_shortcut=True)
    with torch.no_grad():  # a head that predicts no change anywhere
        model.model.change_head.classifier.weight.zero_()
        model.model.change_head.classifier.bias.copy_(torch.tensor([4.0, -4.0]))
    with monkeypatch.context() as patch:
        patch.setattr(model, "generate", lambda *args, **kwargs: pytest.fail("generate ran for a no-change pair"))
        descriptions = describe_changes(model, tiny_processor, pairs)
    assert [description.caption for description in descriptions] == [model.config.no_change_caption] * 2
    assert [description.changed for description in descriptions] == [False, False]

    with torch.no_grad():  # now it sees change everywhere: the pairs are captioned as without the shortcut
        model.model.change_head.classifier.bias.copy_(torch.tensor([-4.0, 4.0]))
    shortcut = describe_changes(model, tiny_processor, pairs, max_new_tokens=4)
    model.config.no_change_shortcut = False
    plain = describe_changes(model, tiny_processor, pairs, max_new_tokens=4)
    assert [description.caption for description in shortcut] == [description.caption for description in plain]
    assert all(description.changed_fraction == 1.0 for description in shortcut)


def test_change_head_is_small_and_builds_on_the_meta_device():
    with torch.device("meta"):
        model = RsccForConditionalGeneration(llava_onevision_0_5b_config(use_change_head=True, change_filter="drop"))
    head_parameters = sum(p.numel() for p in model.model.change_head.parameters())
    assert next(model.parameters()).is_meta
    assert 1e6 < head_parameters < 2e6
    assert math.isqrt(model.config.change_filter_min_tokens) ** 2 == model.config.change_filter_min_tokens
