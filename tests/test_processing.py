import json

import numpy as np
import pytest
import torch
from PIL import Image

from rscc import RsccProcessor
from rscc.processing_rscc import load_image, stretch_to_uint8, to_sentence_case


def test_output_layout(tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs)
    assert inputs["pixel_values"].shape == (4, 1, 3, 28, 28)
    assert inputs["image_sizes"].tolist() == [[256, 256]] * 4
    assert inputs["batch_num_images"].tolist() == [2, 2]
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert "labels" not in inputs


def test_default_prompt_is_ccexpert_inside_chatml(tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs[:1])
    ids = inputs["input_ids"][0].tolist()
    text = tiny_processor.decode([i for i in ids if i != tiny_processor.image_token_id])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "This is the Image1 . This is the second Image2 .\nWhat difference happened from Image1 to Image2?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_labels_supervise_only_the_caption_and_turn_end(tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs, captions=[" a road is built .", "Many houses appear along it"])
    assert inputs["attention_mask"][:, 0].tolist() == [1, 1], "training batches are right-padded"
    for row, expected in zip(range(2), ["A road is built.<|im_end|>", "Many houses appear along it.<|im_end|>"]):
        labels = inputs["labels"][row]
        supervised = labels[labels != -100]
        assert tiny_processor.decode(supervised) == expected
        positions = (labels != -100).nonzero().flatten()
        assert torch.equal(inputs["input_ids"][row, positions], supervised)
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1)), "one contiguous target span"
        assert inputs["attention_mask"][row, positions[-1] + 1 :].sum() == 0, "nothing but padding follows"


def test_to_sentence_case():
    assert to_sentence_case(" the road is built . ") == "The road is built."
    assert to_sentence_case("houses appear") == "Houses appear."
    with pytest.raises(ValueError, match="empty"):
        to_sentence_case(" . ")


@pytest.mark.parametrize(
    "images, message",
    [
        (None, "list of samples, each an ordered list of at least 2"),
        ([], "list of samples, each an ordered list of at least 2"),
        (["a.png", "b.png"], "element 0 is a str, not a list"),
        ([["a.png"]], "element 0 holds 1 image"),
    ],
)
def test_bad_pair_structures(tiny_processor, images, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor(images=images)


def test_missing_file_is_named(tiny_processor, example_pairs, tmp_path):
    missing = tmp_path / "nowhere" / "before.png"
    with pytest.raises(FileNotFoundError, match="images\\[0\\]\\[0\\].*nowhere/before.png"):
        tiny_processor(images=[[missing, example_pairs[0][1]]])


def test_unreadable_image_is_named(tiny_processor, example_pairs, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image file .*broken.png"):
        tiny_processor(images=[[example_pairs[0][0], broken]])


def test_pairs_of_different_sizes_and_kinds_are_resized(tiny_processor):
    pair = [np.zeros((300, 200, 3), np.uint8), torch.rand(3, 64, 96)]
    inputs = tiny_processor(images=[pair])
    assert inputs["pixel_values"].shape == (2, 1, 3, 28, 28)
    assert inputs["image_sizes"].tolist() == [[300, 200], [64, 96]]


def test_modes_are_converted_to_rgb():
    rgba = Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA")
    gray = Image.fromarray(np.full((8, 8), 7, np.uint8), "L")
    assert load_image(rgba).mode == "RGB" and np.asarray(load_image(rgba))[0, 0].tolist() == [200, 200, 200]
    assert np.asarray(load_image(gray))[0, 0].tolist() == [7, 7, 7]
    assert load_image(np.zeros((8, 8, 1), np.uint8)).size == (8, 8)
    assert load_image(np.zeros((4, 8, 8), np.uint8)).mode == "RGB"


def test_sixteen_bit_imagery_is_stretched_between_percentiles(tmp_path):
    values = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "band.png"
    Image.fromarray(values).save(path)
    stretched = np.asarray(load_image(path))[..., 0]
    assert stretched.min() == 0 and stretched.max() == 255
    low, high = np.percentile(values, (2, 98))
    middle = values == values.flat[values.size // 2]
    expected = np.round((values[middle] - low) / (high - low) * 255)
    assert np.abs(stretched[middle].astype(int) - expected).max() <= 1
    assert stretch_to_uint8(np.full((4, 4), 500, np.uint16)).max() == 0


def test_float_images_outside_unit_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0, np.float32))


@pytest.mark.parametrize("prompt, found", [("No images here.", 0), ("One <image> only.", 1), ("<image><image><image>", 3)])
def test_prompts_need_exactly_two_placeholders(tiny_processor, example_pairs, prompt, found):
    with pytest.raises(ValueError, match=f"exactly two '<image>' placeholders .*found {found}"):
        tiny_processor(images=example_pairs[:1], text=prompt)


def test_prompt_and_caption_counts_must_match_pairs(tiny_processor, example_pairs):
    with pytest.raises(ValueError, match="captions: expected one entry per sample \\(2\\), got 1"):
        tiny_processor(images=example_pairs, captions=["A road."])
    with pytest.raises(ValueError, match="text: expected one entry per sample \\(2\\), got 3"):
        tiny_processor(images=example_pairs, text=[tiny_processor.prompt] * 3)


def test_processor_round_trip_keeps_its_options(tiny_processor, tmp_path):
    custom = RsccProcessor(
        image_processor=tiny_processor.image_processor,
        tokenizer=tiny_processor.tokenizer,
        num_image_tokens=tiny_processor.num_image_tokens,
        prompt="Before <image>, after <image>: what changed?",
    )
    custom.save_pretrained(tmp_path)
    reloaded = RsccProcessor.from_pretrained(tmp_path)
    assert reloaded.prompt == custom.prompt
    assert reloaded.num_image_tokens == custom.num_image_tokens
    assert reloaded.tokens_per_image == tiny_processor.tokens_per_image == 7 * 7 + 1


def test_post_process_strips_prompt_and_special_tokens(tiny_processor, example_pairs):
    inputs = tiny_processor(images=example_pairs[:1])
    target = tiny_processor.tokenizer("A road is built.<|im_end|>", add_special_tokens=False)["input_ids"]
    generated = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
    assert tiny_processor.post_process_captions(generated, inputs) == ["A road is built."]


def _write_16_bit(path, values, **profile):
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no georeference: what many image tools write
        bands = values.shape[0]
        with rasterio.open(path, "w", width=values.shape[2], height=values.shape[1], count=bands, dtype=values.dtype,
                           **profile) as raster:
            raster.write(values)
    return path


@pytest.mark.parametrize(
    "file_name, profile",
    [
        ("rgb16.png", {"driver": "PNG"}),  # Pillow decodes it into its high bytes
        ("rgb16.tif", {"driver": "GTiff"}),  # GDAL's pixel-interleaved layout: Pillow cannot identify it
        ("rgb16_bands.tif", {"driver": "GTiff", "interleave": "band"}),  # Pillow: unknown raw mode
        ("rgb16_photometric.tif", {"driver": "GTiff", "photometric": "RGB"}),  # Pillow: high bytes
    ],
)
def test_16_bit_colour_imagery_is_stretched_like_16_bit_grey(tmp_path, file_name, profile):
    rng = np.random.default_rng(0)
    values = rng.integers(800, 11000, size=(3, 40, 50)).astype(np.uint16)  # high bytes 3..42: black if truncated
    image = np.asarray(load_image(_write_16_bit(tmp_path / file_name, values, **profile)))
    expected = np.asarray(load_image(np.moveaxis(values, 0, -1)))
    assert np.array_equal(image, expected)
    assert image.max() == 255 and image.min() == 0


def test_16_bit_colour_png_is_refused_not_truncated_without_rasterio(tmp_path, monkeypatch):
    from rscc import image_processing_rscc
    from rscc.processing_rscc import RsccInputError

    monkeypatch.setattr(image_processing_rscc, "rasterio", None)  # the remote-code copy on a machine without rasterio
    path = _write_16_bit(tmp_path / "rgb16.png", np.full((3, 8, 8), 5000, np.uint16), driver="PNG")
    with pytest.raises(RsccInputError, match="rgb16.png: Pillow reads only the high byte"):
        load_image(path)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8, 3), np.nan, np.float32), "64 of 192 values NaN|192 of 192 values NaN"),
        (np.where(np.eye(8)[..., None] > 0, np.nan, 0.5).repeat(3, -1), "NaN or infinite"),
        (np.zeros((0, 0, 3), np.uint8), "has no pixels"),
        (np.zeros((0, 5), np.uint16), "has no pixels"),
    ],
)
def test_arrays_that_are_not_images_are_refused(array, message):
    from rscc.processing_rscc import RsccInputError

    with pytest.raises(RsccInputError, match=message):
        load_image(array, name="images[0][0]")


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    from rscc.processing_rscc import RsccInputError

    path = tmp_path / "bomb.png"
    Image.new("L", (400, 400)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 160,000 pixels: over twice the limit
    with pytest.raises(RsccInputError, match="bomb.png is too large to decode safely"):
        load_image(path)


def test_post_process_captions_refuses_the_inputs_of_another_batch(tiny_processor, example_pairs):
    from rscc.processing_rscc import RsccInputError

    inputs = tiny_processor(images=example_pairs)
    other = tiny_processor(images=example_pairs[:1])
    generated = torch.cat([inputs["input_ids"], torch.full((2, 3), 5)], dim=1)
    assert len(tiny_processor.post_process_captions(generated, inputs)) == 2
    with pytest.raises(RsccInputError, match="do not start with the prompts of inputs"):
        tiny_processor.post_process_captions(generated, other)
    shifted = torch.cat([inputs["input_ids"][:, 1:], torch.full((2, 4), 5)], dim=1)
    with pytest.raises(RsccInputError, match="do not start with the prompts"):
        tiny_processor.post_process_captions(shifted, {"input_ids": torch.cat([inputs["input_ids"][:1]] * 2)})


def test_image_processor_settings_are_saved_with_the_processor(tiny_processor, tmp_path):
    from rscc import RsccImageProcessor

    custom = RsccProcessor(tiny_processor.image_processor, tiny_processor.tokenizer,
                           num_image_tokens=tiny_processor.num_image_tokens, num_change_classes=3)
    custom.image_processor.high_bit_depth_percentiles = [1.0, 99.0]
    custom.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_processor"]["num_change_classes"] == 3 and "num_change_classes" not in saved
    assert saved["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_rscc.RsccImageProcessor"
    reloaded = RsccProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, RsccImageProcessor) and reloaded.num_change_classes == 3
    assert reloaded.image_processor.high_bit_depth_percentiles == [1.0, 99.0]
    assert tiny_processor.num_change_classes == 2  # the processor given was copied, not changed


def _as_saved_before_the_rscc_image_processor(folder, num_change_classes: int) -> None:
    # Processor folders saved before RsccImageProcessor held LLaVA-OneVision's image processor settings, and
    # `num_change_classes` as a processor option.
    config_file = folder / "processor_config.json"
    saved = json.loads(config_file.read_text())
    image_processor = saved["image_processor"]
    for key in ("num_change_classes", "high_bit_depth_percentiles"):
        del image_processor[key]
    image_processor["image_processor_type"] = "LlavaOnevisionImageProcessor"
    image_processor["auto_map"] = {"AutoProcessor": "processing_rscc.RsccProcessor"}
    saved["num_change_classes"] = num_change_classes
    config_file.write_text(json.dumps(saved))


def test_processor_folders_saved_before_the_rscc_image_processor_load_and_process_alike(tiny_processor, tmp_path):
    from rscc import RsccImageProcessor

    tiny_processor.save_pretrained(tmp_path)
    _as_saved_before_the_rscc_image_processor(tmp_path, num_change_classes=3)
    old = RsccProcessor.from_pretrained(tmp_path)
    assert isinstance(old.image_processor, RsccImageProcessor) and old.num_change_classes == 3
    deep = np.random.default_rng(0).integers(0, 65535, (40, 50, 3), dtype=np.uint16)
    mci = np.zeros((40, 50), np.uint8)
    mci[:10], mci[20:] = 128, 255
    tiny_processor.num_change_classes = 3
    try:
        expected = tiny_processor(images=[[deep, deep[::-1]]], change_masks=[mci])
    finally:
        tiny_processor.num_change_classes = 2
    inputs = old(images=[[deep, deep[::-1]]], change_masks=[mci])
    assert inputs.keys() == expected.keys() and all(torch.equal(inputs[key], expected[key]) for key in inputs)
    assert inputs["change_masks"].unique().tolist() == [0, 1, 2]


def test_loader_decodes_masks_into_the_change_head_classes_and_saves_it(tmp_path):
    from rscc.tiny_checkpoints import make_tiny_checkpoint
    from rscc.loading import load_captioner

    folder = make_tiny_checkpoint(tmp_path / "mci", use_change_head=True, change_head_num_classes=3)
    _as_saved_before_the_rscc_image_processor(folder, num_change_classes=2)  # as the loader used to patch
    _, processor = load_captioner(str(folder))
    assert processor.num_change_classes == 3
    processor.save_pretrained(tmp_path / "saved")
    assert RsccProcessor.from_pretrained(tmp_path / "saved").num_change_classes == 3


# The conversation text rscc models were trained on (Qwen ChatML with the default system message).
CHATML_CONVERSATION = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_the_prompt_goes_through_the_chat_template_into_the_same_text(tiny_processor, example_pairs, tmp_path):
    import json

    from rscc.processing_rscc import RsccProcessor

    assert tiny_processor.conversation_text("Compare <image> <image>.") == CHATML_CONVERSATION.format(
        prompt="Compare <image> <image>."
    )
    # A processor folder saved with the former `conversation_template` loads with the same token ids.
    tiny_processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config.pop("chat_template", None)
    config["conversation_template"] = CHATML_CONVERSATION
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    legacy = RsccProcessor.from_pretrained(tmp_path)
    assert torch.equal(legacy(images=example_pairs)["input_ids"], tiny_processor(images=example_pairs)["input_ids"])
