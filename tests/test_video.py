"""Video encodings of a pair (`pair_encoding`): LLaVA-OneVision's own 2-frame video path, and MV-CC's video encoder."""

import json
import os

import pytest
import torch
from transformers import AutoModel, LlavaOnevisionForConditionalGeneration, TimesformerConfig, VJEPA2Model
from conftest import VIDEO_ENCODER_TYPES, tiny_video_encoder_config
from test_remote_code import HIDE_RSCC, run_without_rscc

from rscc import RsccConfig, RsccForConditionalGeneration, RsccProcessor
from rscc.tiny_checkpoints import TINY_DIFFERENCE_OPTIONS, make_processor
from rscc.training import apply_lora, lora_target_pattern, part_of
from rscc.video_rscc import IMAGENET_MEAN, processor_options

# The encoder's features as its own model gives them, `(num_clips, tokens, hidden_size)`.
STOCK_FEATURES = {
    "videomae": lambda encoder, frames: encoder(pixel_values=frames).last_hidden_state,
    "vjepa2": lambda encoder, frames: encoder.get_vision_features(frames),
}


def build(stock_folder, video_encoder=None, **options):
    model = RsccForConditionalGeneration.from_llava_onevision(stock_folder, video_encoder=video_encoder, **options)
    processor = RsccProcessor.from_llava_onevision(stock_folder, **processor_options(model.config, video_encoder))
    return model.eval(), processor


def test_llava_video_token_count_is_stock_two_frame_video_count():
    # At LLaVA-OneVision's 384 px / 14 px: 2 x 196 + 1 = 393 tokens instead of 2 x 730.
    processor = make_processor(image_size=384, patch_size=14)
    assert sum(processor.placeholder_token_counts()) == 2 * 730
    video = RsccProcessor(processor.image_processor, processor.tokenizer, num_image_tokens=729,
                          pair_encoding="llava_video")
    assert video.placeholder_token_counts() == [196, 197]
    inputs = video(images=[[torch.zeros(3, 64, 64), torch.ones(3, 64, 64)]])
    assert int((inputs["input_ids"] == video.image_token_id).sum()) == 393


def test_llava_video_features_and_logits_equal_stock_two_frame_video(stock_folder, example_pairs):
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(stock_folder).eval()
    model, processor = build(stock_folder, pair_encoding="llava_video", change_features="none")
    inputs = processor(images=example_pairs, text=[processor.prompt, "Before: <image> after: <image>. Changes?"])
    frames = inputs["pixel_values"][:, 0].view(len(example_pairs), 2, *inputs["pixel_values"].shape[-3:])
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        ).pooler_output
        expected = stock.model.get_video_features(frames).pooler_output
        assert [tuple(f.shape) for f in features] == [tuple(expected.shape[1:])] * 2
        assert (torch.stack(features) - expected).abs().max().item() <= 1e-6
        # Stock LLaVA-OneVision on the same prompt with video placeholders and the pair as a 2-frame video.
        video_ids = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.image_token_id,
                                                    stock.config.video_token_id)
        stock_logits = stock(input_ids=video_ids, attention_mask=inputs["attention_mask"],
                             pixel_values_videos=frames).logits
        assert (model(**inputs).logits - stock_logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("change_filter", ["multiply", "drop"])
def test_llava_video_filters_on_the_pooled_grid(stock_folder, example_pairs, change_filter):
    model, processor = build(stock_folder, pair_encoding="llava_video", change_features="none",
                             change_filter=change_filter, change_filter_min_tokens=0)
    assert model.config.token_grid_size == 4  # the tiny 7x7 grid pooled to ceil(7 / 2)
    mask = torch.zeros(28, 28, dtype=torch.long)
    mask[:7, :7] = 1  # the top-left pooled token only
    inputs = processor(images=example_pairs, change_masks=[mask, None])
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                  batch_num_images=inputs["batch_num_images"],
                                                  change_masks=inputs["change_masks"])
    if change_filter == "multiply":
        first = features.pooler_output[0]
        nonzero = first.abs().sum(-1) > 0
        # Token 0 of each frame and the newline token stay; every other token of the masked pair is zero.
        assert nonzero.tolist() == [i in (0, 16, 32) for i in range(33)]
        assert bool((features.pooler_output[1].abs().sum(-1) > 0).all())
    else:
        assert features.kept_tokens[0].tolist() == [i in (0, 16, 32) for i in range(33)]
        assert bool(features.kept_tokens[1].all())
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            one = model.generate(**processor(images=example_pairs[:1], change_masks=[mask]), max_new_tokens=3,
                                 do_sample=False)
        assert torch.equal(generated[0, -3:], one[0, -3:])


@pytest.mark.parametrize("model_type", VIDEO_ENCODER_TYPES)
def test_video_encoder_replaces_siglip_and_loads_the_encoders_weights(stock_folder, video_encoder_folders,
                                                                      model_type):
    model, report = RsccForConditionalGeneration.from_llava_onevision(
        stock_folder, pair_encoding="video_encoder", video_encoder=video_encoder_folders[model_type],
        output_loading_info=True
    )
    assert model.model.vision_tower is None and model.model.multi_modal_projector is None
    assert model.config.change_features == "none" and model.config.video_encoder_config["tubelet_size"] == 2
    saved = AutoModel.from_pretrained(video_encoder_folders[model_type]).state_dict()
    backbone = model.model.video_encoder.backbone.state_dict()
    for name, value in backbone.items():
        assert torch.equal(value, saved[name]), name
    # V-JEPA 2's predictor (masked-token prediction, for pretraining only) is neither built nor loaded.
    left_out = {name.split(".")[0] for name in set(saved) - set(backbone)}
    assert left_out == ({"predictor"} if model_type == "vjepa2" else set())
    assert all(name.startswith("model.video_encoder.projector.") for name in report["new_parameters"])
    assert {part_of(name) for name, _ in model.named_parameters()} == {"video_encoder", "projector", "language_model"}
    # A config instead of a folder: random encoder weights, reported as new.
    _, report = RsccForConditionalGeneration.from_llava_onevision(
        stock_folder, pair_encoding="video_encoder", video_encoder=tiny_video_encoder_config(model_type),
        output_loading_info=True
    )
    assert any(name.startswith("model.video_encoder.backbone.") for name in report["new_parameters"])
    assert not any(".predictor." in name for name in report["new_parameters"])


@pytest.mark.parametrize("model_type", VIDEO_ENCODER_TYPES)
def test_video_encoder_tokens_layout_and_processor_frames(stock_folder, video_encoder_folders, example_pairs,
                                                          model_type):
    model, processor = build(stock_folder, video_encoder_folders[model_type], pair_encoding="video_encoder")
    # One tubelet spans both dates: its 7x7 tokens stand at the after image's placeholder, then the newline token.
    assert model.config.token_grid_size == 7 and model.config.video_num_frames == 2
    assert processor.placeholder_token_counts() == [0, 50]
    assert list(processor.image_processor.image_mean) == IMAGENET_MEAN
    assert processor.image_processor.size["height"] == 28
    inputs = processor(images=example_pairs)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 2 * 50
    stock = AutoModel.from_pretrained(video_encoder_folders[model_type]).eval()
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                  batch_num_images=inputs["batch_num_images"])
        frames = inputs["pixel_values"][:, 0].view(2, 2, 3, 28, 28)
        tokens = STOCK_FEATURES[model_type](stock, frames)
        expected = model.model.video_encoder.projector(tokens)
    assert [tuple(f.shape) for f in features.pooler_output] == [(50, 32)] * 2
    assert torch.allclose(torch.stack(features.pooler_output)[:, :49], expected, atol=1e-6)
    # The encoder sees both dates at once: swapping them changes the tokens.
    with torch.no_grad():
        swapped = STOCK_FEATURES[model_type](stock, frames.flip(1))
    assert (swapped - tokens).abs().max() > 1e-4


def test_processor_options_read_the_frame_size_and_an_image_or_video_preprocessor_config(tmp_path):
    # VideoMAE folders keep `preprocessor_config.json`, V-JEPA 2 folders `video_preprocessor_config.json`.
    config = RsccConfig(pair_encoding="video_encoder", change_features="none",
                        video_encoder_config=tiny_video_encoder_config("vjepa2", crop_size=32))
    for file_name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (tmp_path / file_name).mkdir()
        (tmp_path / file_name / file_name).write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
        options = processor_options(config, tmp_path / file_name)["image_processor_options"]
        assert options["image_mean"] == [0.5] * 3 and options["image_std"] == [0.25] * 3
        assert options["size"] == options["crop_size"] == {"height": 32, "width": 32}
    assert processor_options(config)["image_processor_options"]["image_mean"] == IMAGENET_MEAN


def test_vjepa2_pretrained_on_long_clips_takes_pairs_with_its_rotary_positions(stock_folder, example_pairs,
                                                                               tmp_path):
    # V-JEPA 2 checkpoints are pretrained on 16 or 64 frames; its rotary positions follow the token index and its
    # frames_per_clip only sizes the predictor, so 2-frame clips get the features the stock model gives them.
    torch.manual_seed(3)
    stock = VJEPA2Model(tiny_video_encoder_config("vjepa2", frames_per_clip=16)).eval()
    stock.save_pretrained(tmp_path / "fpc16")
    model, processor = build(stock_folder, tmp_path / "fpc16", pair_encoding="video_encoder")
    assert model.config.video_encoder_config["frames_per_clip"] == 2
    frames = processor(images=example_pairs)["pixel_values"][:, 0].view(2, 2, 3, 28, 28)
    with torch.no_grad():
        tokens = model.model.video_encoder(frames)
        assert torch.allclose(tokens.flatten(1, 2), stock.get_vision_features(frames), atol=1e-6)


@pytest.mark.parametrize("model_type", VIDEO_ENCODER_TYPES)
@pytest.mark.parametrize("change_filter", ["multiply", "drop"])
def test_video_encoder_with_change_head_and_filter_trains_and_generates(stock_folder, video_encoder_folders,
                                                                        example_pairs, change_filter, model_type):
    model, processor = build(stock_folder, video_encoder_folders[model_type], pair_encoding="video_encoder",
                             use_change_head=True, change_filter=change_filter, change_filter_min_tokens=0)
    mask = torch.zeros(28, 28, dtype=torch.long)
    mask[:4, :4] = 1  # token 0 of the 7x7 grid
    inputs = processor(images=example_pairs, change_masks=[mask, None], captions=["A road is built.", "No change."])
    model.train()
    outputs = model(**inputs)
    assert outputs.change_logits.shape == (2, 2, 28, 28) and outputs.change_loss is not None
    outputs.loss.backward()
    assert model.model.change_head.input_proj.weight.grad.abs().sum() > 0
    assert model.model.video_encoder.projector[0].weight.grad.abs().sum() > 0
    model.eval()
    inputs = processor(images=example_pairs, change_masks=[mask, None])
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                  batch_num_images=inputs["batch_num_images"],
                                                  change_masks=inputs["change_masks"])
        batched = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        alone = model.generate(**processor(images=example_pairs[:1], change_masks=[mask]), max_new_tokens=3,
                               do_sample=False)
    seen = features.kept_tokens[0] if change_filter == "drop" else features.pooler_output[0].abs().sum(-1) > 0
    assert seen.tolist() == [i in (0, 49) for i in range(50)]
    assert torch.equal(batched[0, -3:], alone[0, -3:])


@pytest.mark.parametrize("pair_encoding, model_type", [("images", None), ("llava_video", None),
                                                       ("video_encoder", "videomae"), ("video_encoder", "vjepa2")])
def test_encodings_save_reload_and_run_as_remote_code(stock_folder, video_encoder_folders, example_pairs, tmp_path,
                                                      pair_encoding, model_type):
    encoder = video_encoder_folders[model_type] if model_type else None
    difference = {} if encoder else TINY_DIFFERENCE_OPTIONS
    model, processor = build(stock_folder, encoder, pair_encoding=pair_encoding, use_change_head=True,
                             change_filter="multiply", change_mask_source="predicted", **difference)
    with torch.no_grad():  # a live difference module, so that the comparison below covers it
        if model.model.difference_module is not None:
            model.model.difference_module.output_scale.fill_(0.5)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert "video_rscc.py" in os.listdir(folder)
    assert json.loads((folder / "config.json").read_text())["pair_encoding"] == pair_encoding
    reloaded = RsccForConditionalGeneration.from_pretrained(folder).eval()
    reloaded_processor = RsccProcessor.from_pretrained(folder)
    assert reloaded_processor.placeholder_token_counts() == processor.placeholder_token_counts()
    (a, b), (c, _) = example_pairs
    # A pair and, where the encoding takes any N, a 3-date series in the same batch.
    samples = [[a, b]] if pair_encoding == "video_encoder" else [[a, b], [c, a, b]]
    with torch.no_grad():
        expected = model(**processor(images=samples)).logits
        assert torch.equal(reloaded(**reloaded_processor(images=samples)).logits, expected)
    script = HIDE_RSCC + r"""
folder, samples, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    torch.save(model(**processor(images=samples)).logits, out)
print(json.dumps({"rscc_imported": any(m == "rscc" or m.startswith("rscc.") for m in sys.modules)}))
"""
    out = tmp_path / "logits.pt"
    result = run_without_rscc(script, [str(folder), json.dumps(samples), str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not json.loads(result.stdout.strip().splitlines()[-1])["rscc_imported"]
    assert (torch.load(out) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("model_type", VIDEO_ENCODER_TYPES)
def test_lora_targets_only_the_video_encoders_last_block(stock_folder, video_encoder_folders, model_type):
    model, _ = build(stock_folder, video_encoder_folders[model_type], pair_encoding="video_encoder")
    last_block = "model.video_encoder.backbone.encoder.layer.1."
    linear_layers = sorted(name for name, module in model.named_modules()
                           if name.startswith(last_block) and isinstance(module, torch.nn.Linear))
    # MV-CC's recipe: the attention projections of the last block, named alike in both families.
    recipe_targets = [name for name in linear_layers if name.rsplit(".", 1)[-1] in ("query", "key", "value")]
    assert len(recipe_targets) == 3
    # By default: every linear layer of the last block (VideoMAE's `dense` ones, V-JEPA 2's `proj`, `fc1`, `fc2`).
    for modules, expected in ((["query", "key", "value"], recipe_targets), (None, linear_layers)):
        pattern = lora_target_pattern(model.config, ["video_encoder"], modules, last_layers=1)
        peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, parts=["video_encoder"], modules=modules,
                                last_layers=1)
        adapted = sorted({name.split(".lora_")[0] for name, _ in peft_model.named_parameters() if ".lora_" in name})
        assert adapted == [f"base_model.model.{name}" for name in expected], pattern
        model = peft_model.unload()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pair_encoding": "video"}, "expected one of"),
        ({"pair_encoding": "video_encoder", "change_features": "none"}, "needs video_encoder_config"),
        ({"pair_encoding": "video_encoder", "change_features": "none",
          "video_encoder_config": {"model_type": "videomae"}}, "lacks"),
        ({"pair_encoding": "video_encoder", "change_features": "none",
          "video_encoder_config": {"model_type": "vjepa2", "hidden_size": 32, "image_size": 28, "num_frames": 2}},
         r"lacks \['crop_size', 'patch_size', 'frames_per_clip', 'tubelet_size'\]"),
        ({"pair_encoding": "video_encoder", "change_features": "none",
          "video_encoder_config": tiny_video_encoder_config(num_frames=3)}, "tubelet_size dividing it"),
        ({"pair_encoding": "video_encoder", "change_features": "none",
          "video_encoder_config": tiny_video_encoder_config("vjepa2", frames_per_clip=3)},
         r"frames_per_clip=3, tubelet_size=2: expected frames_per_clip >= 2"),
        ({"pair_encoding": "video_encoder", "change_features": "none",
          "video_encoder_config": TimesformerConfig(image_size=28, patch_size=4, num_frames=2)},
         r"model_type 'timesformer': supported video encoders are \['videomae', 'vjepa2'\]"),
        ({"pair_encoding": "video_encoder", "change_features": "difference_integration",
          "video_encoder_config": tiny_video_encoder_config()}, "set change_features='none'"),
        ({"pair_encoding": "images", "video_encoder_config": tiny_video_encoder_config()}, "only read by"),
        ({"pair_encoding": "llava_video", "vision_feature_select_strategy": "default"}, "use 'full'"),
    ],
)
def test_config_rejects_inconsistent_pair_encodings(options, message):
    with pytest.raises(ValueError, match=message):
        RsccConfig(**options)


def test_unsupported_video_encoder_folder_is_refused_naming_the_supported_types(stock_folder, tmp_path):
    TimesformerConfig(image_size=28, patch_size=4, num_frames=8).save_pretrained(tmp_path / "timesformer")
    with pytest.raises(ValueError, match=r"supported video encoders are \['videomae', 'vjepa2'\]"):
        RsccForConditionalGeneration.from_llava_onevision(stock_folder, pair_encoding="video_encoder",
                                                          video_encoder=tmp_path / "timesformer")


def test_video_encoder_option_is_refused_without_the_video_encoding(stock_folder, video_encoder_folders):
    with pytest.raises(ValueError, match="only read with pair_encoding='video_encoder'"):
        RsccForConditionalGeneration.from_llava_onevision(stock_folder, video_encoder=video_encoder_folders["videomae"])
