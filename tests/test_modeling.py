import pytest
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from rscc import RsccConfig, RsccForConditionalGeneration
from rscc.modeling_rscc import first_predicting_position
from rscc.tiny_checkpoints import TINY_DIFFERENCE_OPTIONS, build_tiny_tokenizer, llava_onevision_0_5b_config, tiny_config


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory):
    """A saved stock LLaVA-OneVision model with tiny random weights, as a base checkpoint would be."""
    config = tiny_config(build_tiny_tokenizer()).to_dict()
    for key in [key for key in config if key.startswith("difference_") or key == "change_features"]:
        del config[key]
    del config["model_type"]
    torch.manual_seed(1)
    stock = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**config))
    folder = tmp_path_factory.mktemp("stock-llava-ov")
    stock.save_pretrained(folder)
    return folder


def test_config_defaults_follow_ccexpert_on_the_26_layer_tower():
    config = RsccConfig()
    assert config.vision_config.num_hidden_layers == 26
    assert config.difference_feature_layers == [-10, -7, -4, -1]
    assert config.vision_grid_size == 27
    assert config.vision_config.hidden_size % config.difference_num_heads == 0
    assert RsccConfig.from_dict(config.to_dict()).difference_feature_layers == [-10, -7, -4, -1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"difference_num_heads": 7}, "must divide"),
        ({"difference_feature_layers": [30]}, "outside"),
        ({"difference_feature_layers": []}, "empty"),
        ({"vision_feature_layer": [-2, -1]}, "single index"),
        ({"difference_num_blocks": 0}, "at least 1"),
    ],
)
def test_config_rejects_inconsistent_options(options, message):
    with pytest.raises(ValueError, match=message):
        RsccConfig(**options)


def test_fresh_model_matches_stock_llava_onevision(stock_folder, tiny_processor, example_pairs):
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(stock_folder).eval()
    model = RsccForConditionalGeneration.from_llava_onevision(stock_folder, **TINY_DIFFERENCE_OPTIONS).eval()
    inputs = tiny_processor(images=example_pairs, text=[tiny_processor.prompt, "Before: <image> after: <image>. Changes?"])
    with torch.no_grad():
        stock_logits = stock(**inputs).logits
        rscc_logits = model(**inputs).logits
    assert (stock_logits - rscc_logits).abs().max().item() <= 1e-5

    # The module is live: once its output scale moves, the logits move.
    with torch.no_grad():
        model.model.difference_module.output_scale.fill_(0.5)
        assert (model(**inputs).logits - stock_logits).abs().max().item() > 1e-3


def test_zero_init_scale_still_receives_gradient(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs, captions=["A road is built.", "Houses appear."])
    tiny_model.train()
    tiny_model(**inputs).loss.backward()
    assert tiny_model.model.difference_module.output_scale.grad.abs().sum() > 0


def test_from_llava_onevision_reports_only_the_new_module(stock_folder):
    model, report = RsccForConditionalGeneration.from_llava_onevision(
        stock_folder, output_loading_info=True, difference_num_blocks=1, **TINY_DIFFERENCE_OPTIONS
    )
    difference_names = {f"model.difference_module.{name}" for name, _ in model.model.difference_module.named_parameters()}
    assert set(report["new_parameters"]) == difference_names
    assert report["num_new_parameters"] == sum(p.numel() for p in model.model.difference_module.parameters())
    assert model.config.difference_num_blocks == 1 and len(model.model.difference_module.blocks) == 1
    with pytest.raises(TypeError, match="unknown RsccConfig option"):
        RsccForConditionalGeneration.from_llava_onevision(stock_folder, difference_blocks=1)


def test_from_llava_onevision_refuses_other_checkpoints(tiny_checkpoint):
    with pytest.raises(ValueError, match="'rscc' model, not 'llava_onevision'"):
        RsccForConditionalGeneration.from_llava_onevision(tiny_checkpoint)


def test_save_load_round_trip_is_bit_identical(tiny_model, tiny_processor, example_pairs, tmp_path):
    with torch.no_grad():
        tiny_model.model.difference_module.output_scale.normal_()
    tiny_model.save_pretrained(tmp_path)
    reloaded = RsccForConditionalGeneration.from_pretrained(tmp_path).eval()
    original_state, reloaded_state = tiny_model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    assert all(torch.equal(original_state[key], reloaded_state[key]) for key in original_state)
    inputs = tiny_processor(images=example_pairs)
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs).logits, reloaded(**inputs).logits)


def test_processor_token_count_matches_model_features(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs)
    features = tiny_model.model.get_image_features(
        inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
    ).pooler_output
    image_tokens_per_sample = (inputs["input_ids"] == tiny_model.config.image_token_id).sum(1)
    assert [feature.shape[0] for feature in features] == [tiny_processor.tokens_per_image] * 4
    assert image_tokens_per_sample.tolist() == [2 * tiny_processor.tokens_per_image] * 2


def test_real_size_processor_count_is_730_per_image():
    config = llava_onevision_0_5b_config()
    assert config.vision_grid_size**2 + 1 == 730


def test_image_token_mismatch_is_a_value_error_with_both_counts(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs)
    inputs["input_ids"][0, inputs["input_ids"][0].tolist().index(tiny_model.config.image_token_id)] = 0
    with pytest.raises(ValueError, match=r"tokens: \d+, features: \d+"):
        tiny_model(**inputs)


def test_samples_of_fewer_than_two_images_are_refused(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs)
    inputs["batch_num_images"] = torch.tensor([1, 3])
    with pytest.raises(ValueError, match="at least two images"):
        tiny_model(**inputs)
    inputs["batch_num_images"] = torch.tensor([2, 3])
    with pytest.raises(ValueError, match=r"count 5 images, but pixel_values holds 4"):
        tiny_model(**inputs)


def test_batched_generation_matches_one_by_one(tiny_model, tiny_processor, example_pairs):
    prompts = [tiny_processor.prompt, "Compare <image> with <image> and describe every change you see in detail."]
    batch = tiny_processor(images=example_pairs, text=prompts)
    assert batch["attention_mask"][0, 0] == 0, "prompts of different lengths are left-padded"
    batched = tiny_processor.post_process_captions(
        tiny_model.generate(**batch, max_new_tokens=8, do_sample=False), batch
    )
    single = []
    for pair, prompt in zip(example_pairs, prompts):
        inputs = tiny_processor(images=[pair], text=prompt)
        single += tiny_processor.post_process_captions(
            tiny_model.generate(**inputs, max_new_tokens=8, do_sample=False), inputs
        )
    assert len(batched) == 2 and all(isinstance(caption, str) for caption in batched)
    assert batched == single


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs, captions=["A road is built.", "Houses appear."])
    with torch.no_grad():
        tiny_model.model.difference_module.output_scale.fill_(0.3)
    tiny_model.train()
    tiny_model(**inputs).loss.backward()
    reference = {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    tiny_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert tiny_model.model.difference_module.blocks[0].gradient_checkpointing
    tiny_model(**inputs).loss.backward()
    for name, gradient in reference.items():
        torch.testing.assert_close(dict(tiny_model.named_parameters())[name].grad, gradient, rtol=1e-4, atol=1e-6)


def test_labelled_logits_only_keeps_the_loss_and_gradients(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs, captions=["A road is built along the river.", "Houses appear."])
    assert inputs["attention_mask"][1, -1] == 0, "right-padded: the captions end at different positions"
    with torch.no_grad():
        tiny_model.model.difference_module.output_scale.fill_(0.3)
    tiny_model.train()
    full = tiny_model(**inputs)
    full.loss.backward()
    reference = {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    labelled = tiny_model(**inputs, labelled_logits_only=True)
    labelled.loss.backward()

    labels = inputs["labels"]
    first_target = int((labels != -100).any(0).float().argmax())
    assert labelled.logits.shape[1] == labels.shape[1] - first_target + 1 < full.logits.shape[1] // 10
    torch.testing.assert_close(labelled.logits, full.logits[:, first_target - 1 :])
    torch.testing.assert_close(labelled.loss, full.loss)
    for name, gradient in reference.items():
        torch.testing.assert_close(dict(tiny_model.named_parameters())[name].grad, gradient, rtol=1e-4, atol=1e-6)


def test_first_predicting_position():
    labels = torch.tensor([[-100, -100, -100, 5, 6], [-100, -100, 7, 8, -100]])
    assert first_predicting_position(labels) == 1  # position 1 predicts row 1's first target, at 2
    assert first_predicting_position(torch.full((2, 5), -100)) == 4, "nothing supervised: the last position only"


def test_model_builds_on_the_meta_device_without_reading_parameters():
    with torch.device("meta"):
        model = RsccForConditionalGeneration(llava_onevision_0_5b_config())
    difference_parameters = sum(p.numel() for p in model.model.difference_module.parameters())
    assert next(model.parameters()).is_meta
    assert 50e6 < difference_parameters < 80e6, "CCExpert's module is about 70M parameters at width 1152"


def test_capability_flags(tiny_model):
    assert tiny_model.supports_gradient_checkpointing
    assert tiny_model._supports_sdpa
    assert {"SiglipEncoderLayer", "Qwen2DecoderLayer", "RsccChangeAwareBlock"} <= set(tiny_model._no_split_modules)


def test_set_attn_implementation_reaches_the_difference_module(tiny_model, tiny_processor, example_pairs, monkeypatch):
    import rscc.difference_integration_rscc as modeling

    inputs = tiny_processor(images=example_pairs[:1])
    eager_calls = []
    eager = modeling.eager_attention_forward
    monkeypatch.setattr(modeling, "eager_attention_forward", lambda *a, **k: eager_calls.append(1) or eager(*a, **k))
    with torch.no_grad():
        tiny_model.model.difference_module.output_scale.fill_(0.5)
        sdpa_logits = tiny_model(**inputs).logits
        assert not eager_calls
        tiny_model.set_attn_implementation("eager")
        configs = [tiny_model.config, tiny_model.config.vision_config, tiny_model.config.text_config]
        assert [config._attn_implementation for config in configs] == ["eager"] * 3
        eager_logits = tiny_model(**inputs).logits
    # Each of the two blocks attends four times: change to change, change to images, each image to change.
    assert len(eager_calls) == 2 * 4
    assert (eager_logits - sdpa_logits).abs().max().item() <= 1e-4


def test_generate_refuses_image_placeholders_without_images(tiny_model, tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs[:1])
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=2)
