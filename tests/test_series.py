"""Samples of N >= 2 dates: processor, model (difference module on date pairs, first-to-last head and masks), mixed N.

Real images only: the 3- and 4-date series are built from the repository's real LEVIR-CC pairs by repeating a date
(`[A, A, B]`: the change happens between the 2nd and 3rd date) or chaining two pairs' images.
"""

import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_video_encoder_config

from rscc import RsccConfig, RsccForConditionalGeneration, RsccProcessor
from rscc.tiny_checkpoints import make_processor, tiny_config
from rscc.cli import main
from rscc.data import DataInputError, build_dataset, load_change_dataset, manifest_dates, manifest_records
from rscc.data.schema import sample_images
from rscc.evaluation import generate_predictions
from rscc.loading import load_model_and_processor
from rscc.training import ChangeCaptionCollator, EpochCaptionDataset, parse_arguments, run_stage
from rscc.difference_integration_rscc import date_pairs
from rscc.processing_rscc import default_prompt
from rscc.video_rscc import processor_options


@pytest.fixture(scope="module")
def series(example_pairs) -> list[list[str]]:
    """A pair, a 3-date series and a 4-date series of real images, oldest first."""
    (a, b), (c, d) = example_pairs
    return [[a, b], [a, a, b], [c, d, a, b]]


def live_model(processor, seed=0, **options) -> RsccForConditionalGeneration:
    """A tiny random model whose difference module is live (output scale 0.5, not the zero of a fresh model)."""
    torch.manual_seed(seed)
    model = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options)).eval()
    if model.model.difference_module is not None:
        with torch.no_grad():
            model.model.difference_module.output_scale.fill_(0.5)
    return model


def test_date_pairs_are_consecutive_dates_and_first_to_last():
    earlier, later, sample = date_pairs(torch.tensor([2, 3, 4]))
    pairs = list(zip(earlier.tolist(), later.tolist(), sample.tolist()))
    assert pairs == [(0, 1, 0), (2, 3, 1), (3, 4, 1), (2, 4, 1), (5, 6, 2), (6, 7, 2), (7, 8, 2), (5, 8, 2)]


def test_processor_takes_mixed_n_with_a_default_prompt_per_n(tiny_processor, series):
    inputs = tiny_processor(images=series, change_masks=[None, None, None])
    assert inputs["batch_num_images"].tolist() == [2, 3, 4]
    assert inputs["pixel_values"].shape[0] == 9 and inputs["change_masks"].shape[0] == 3
    placeholders = (inputs["input_ids"] == tiny_processor.image_token_id).sum(1).tolist()
    assert placeholders == [2 * 50, 3 * 50, 4 * 50]
    assert default_prompt(2) == tiny_processor.prompt
    assert default_prompt(3).count("<image>") == 3 and "from Image1 to Image3" in default_prompt(3)
    with pytest.raises(ValueError, match="text\\[1\\] must contain exactly three '<image>' placeholders"):
        tiny_processor(images=series[:2], text=tiny_processor.prompt)
    with pytest.raises(ValueError, match="element 0 holds 1 image"):
        tiny_processor(images=[series[1][:1]])


def test_a_pair_through_the_n_date_path_is_exactly_the_pair_computation(example_pairs):
    processor = make_processor()
    model = live_model(processor, use_change_head=True, change_filter="multiply", change_mask_source="predicted")
    inputs = processor(images=example_pairs)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                  batch_num_images=inputs["batch_num_images"])
        # The pair computation written out: before = even images, after = odd ones.
        hidden = model.model.vision_tower(inputs["pixel_values"][:, 0], output_hidden_states=True).hidden_states
        levels = [hidden[layer] for layer in model.config.difference_feature_layers]
        last = hidden[model.config.vision_feature_layer]
        changed = (model.model.change_head(last[0::2], last[1::2]).argmax(1) != 0).flatten(1)
        # The filter's changed tokens are the ones the module refines (mask-sparse difference integration).
        before, after, _ = model.model.difference_module([level[0::2] for level in levels],
                                                      [level[1::2] for level in levels], last[0::2], last[1::2],
                                                      kept_tokens=changed)
        projected = model.model.multi_modal_projector(torch.stack([before, after], 1).flatten(0, 1))
        expected = projected * changed.repeat_interleave(2, dim=0)[..., None]
    assert 0 < int(changed.sum()) < changed.numel()  # the filter and the sparse module are both at work
    assert torch.equal(torch.stack(features.pooler_output)[:, :-1], expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"change_filter": "drop", "change_filter_min_tokens": 4}, {"pair_encoding": "llava_video"},
     {"pair_encoding": "llava_video", "change_features": "none", "change_filter": "drop",
      "change_filter_min_tokens": 1}],
    ids=["images", "images-drop", "llava_video", "llava_video-drop"],
)
def test_mixed_n_batched_generation_equals_one_by_one(series, options, single_torch_thread):
    processor = make_processor()
    if options.get("pair_encoding"):
        processor = RsccProcessor(processor.image_processor, processor.tokenizer, num_image_tokens=49,
                                  pair_encoding=options["pair_encoding"])
    model = live_model(processor, use_change_head=True, **options)
    masks = [torch.eye(28, dtype=torch.long), None, torch.ones(28, 28, dtype=torch.long)]
    settings = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        batched = processor.post_process_captions(
            model.generate(**(inputs := processor(images=series, change_masks=masks)), **settings), inputs)
        alone = [processor.post_process_captions(model.generate(**(one := processor(images=[sample], change_masks=[
            mask])), **settings), one)[0] for sample, mask in zip(series, masks)]
    assert batched == alone


def test_change_head_and_mask_describe_first_to_last(series):
    processor = make_processor()
    model = live_model(processor, use_change_head=True, change_filter="multiply")
    mask = torch.zeros(28, 28, dtype=torch.long)
    mask[:4, :4] = 1  # token 0 of the 7x7 grid
    inputs = processor(images=series[1:], change_masks=[mask, None])
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                  batch_num_images=inputs["batch_num_images"],
                                                  change_masks=inputs["change_masks"])
        hidden = model.model.vision_tower(inputs["pixel_values"][:, 0], output_hidden_states=True).hidden_states[-1]
        expected_logits = torch.nn.functional.interpolate(
            model.model.change_head(hidden[[0, 3]], hidden[[2, 6]]), size=(28, 28), mode="bilinear")
    assert torch.allclose(features.change_logits, expected_logits, atol=1e-6)
    # The 3-date sample's mask filters all three dates alike: only token 0 (and the newline) of each is non-zero.
    seen = [bool(row.abs().sum() > 0) for image in features.pooler_output[:3] for row in image[[0, 1, -1]]]
    assert seen == [True, False, True] * 3
    assert all(bool((image.abs().sum(-1) > 0).all()) for image in features.pooler_output[3:])


@pytest.mark.parametrize("model_type, frames_field", [("videomae", "num_frames"), ("vjepa2", "frames_per_clip")])
def test_video_encoder_takes_series_of_its_num_frames_and_refuses_others(series, model_type, frames_field):
    processor = make_processor()
    encoder = tiny_video_encoder_config(model_type, **{frames_field: 4})
    torch.manual_seed(0)
    model = RsccForConditionalGeneration(tiny_config(
        processor.tokenizer, pair_encoding="video_encoder", change_features="none",
        video_encoder_config=encoder.to_dict(), use_change_head=True, change_filter="multiply",
        change_mask_source="predicted")).eval()
    options = processor_options(model.config)
    video = RsccProcessor(processor.image_processor, processor.tokenizer, num_image_tokens=options["num_image_tokens"],
                          pair_encoding="video_encoder", video_tubelet_size=2)
    # Two tubelets of 49 tokens, at the 2nd and 4th dates' placeholders, then the newline token.
    assert video.placeholder_token_counts(4) == [0, 49, 0, 50]
    inputs = video(images=[series[2], series[2][::-1]])
    with torch.no_grad():
        outputs = model(**inputs)
        assert outputs.change_logits.shape == (2, 2, 28, 28)
        generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 2)
    with pytest.raises(ValueError, match=rf"takes {frames_field}=4 dates per sample"):
        model(**video(images=series[:1]))


def test_three_date_series_learns_captions_of_real_pairs(shared_data, single_torch_thread):
    # Series built from two real LEVIR-CC pairs of ../shared/data: [A, A, B] and [A, B, B] carry the pair's change
    # (first to last) and get its first reference caption; [A, A, A] and [B, B, B] show none and get a no-change one.
    root = shared_data / "levir_cc"
    names = ("train_000016.png", "train_000051.png")
    entries = {entry["filename"]: entry for entry in json.loads((root / "LevirCCcaptions.json").read_text())["images"]}
    processor = make_processor()
    model = live_model(processor, seed=3)
    samples, targets = [], []
    for name in names:
        before, after = (str(root / "images" / "train" / side / name) for side in ("A", "B"))
        caption = entries[name]["sentences"][0]["raw"]
        samples += [[before, before, after], [before, after, after], [before] * 3, [after] * 3]
        targets += [caption, caption, "There is no difference.", "There is no difference."]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        batch = [(step * 4 + offset) % len(samples) for offset in range(4)]
        loss = model(**processor(images=[samples[i] for i in batch], captions=[targets[i] for i in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"3-date learning check: caption loss {losses[0]:.3f} -> {sum(losses[-5:]) / 5:.3f} (mean of last 5)")
    assert max(losses[-5:]) < 0.3 * losses[0]


@pytest.fixture(scope="module")
def series_dataset(example_pairs, tmp_path_factory):
    """A dataset built from a CSV manifest of real images: one pair and two 3-date series (the change between the
    1st and 2nd date, or the 2nd and 3rd), rows of different N in one file (`image_1` ... `image_3`)."""
    (a, b), (c, d) = example_pairs
    folder = tmp_path_factory.mktemp("series")
    manifest = folder / "series.csv"
    manifest.write_text(
        "id,image_1,image_2,image_3,caption\n"
        f"pair,{a},{b},,Many buildings are constructed.\n"
        f"late,{c},{c},{d},A road is built.\n"
        f"early,{a},{b},{b},Many buildings are constructed.\n"
    )
    return build_dataset(manifest_records(manifest), folder / "dataset").out_dir


def test_manifest_series_build_into_the_images_column_and_old_datasets_still_load(series_dataset, example_pairs,
                                                                                  tmp_path):
    split = load_change_dataset(series_dataset, split="train")
    rows = {row["id"]: row for row in split}
    assert [len(sample_images(rows[name])) for name in ("pair", "late", "early")] == [2, 3, 3]
    assert rows["pair"]["images"] == [] and len(rows["late"]["images"]) == 1
    # A dataset written before series existed has no `images` column: it loads, its rows are pairs.
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    for shard in (series_dataset / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop(["images"]), old / "data" / shard.name)
    old_rows = list(load_change_dataset(old, split="train"))
    assert "images" not in old_rows[0] and all(len(sample_images(row)) == 2 for row in old_rows)


def test_manifest_rows_each_give_a_pair_or_a_series_read_by_one_function(example_pairs, tmp_path):
    # `rscc data manifest` and `rscc caption MANIFEST` read a row's dates with `manifest_dates`: rows of one file
    # may mix a pair and series of any N, and a row that mixes them, or a series with a gap, is named.
    (a, b), (c, d) = example_pairs
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text(json.dumps({"id": "pair", "before": a, "after": b, "caption": "Houses appear."}) + "\n"
                        + json.dumps({"id": "three", "images": [c, c, d], "caption": "A road is built."}) + "\n")
    records = list(manifest_records(manifest))
    assert [(str(r.before), [str(i) for i in r.images], str(r.after)) for r in records] == [(a, [], b), (c, [c], d)]
    assert manifest_dates(manifest, "line 2", {"image_1": a, "image_2": b, "image_3": ""}) == [a, b]
    with pytest.raises(DataInputError, match="mixed.jsonl: line 7: gives the dates as before, after and as images"):
        manifest_dates(manifest, "line 7", {"before": a, "after": b, "images": [a, b]})
    gap = tmp_path / "gap.csv"
    gap.write_text(f"image_1,image_2,image_3,caption\n{a},,{b},Houses appear.\n")
    with pytest.raises(DataInputError, match="gap.csv: line 2: the series image_1, image_3 has no image_2"):
        list(manifest_records(gap))


def test_stage_trains_on_series_and_evaluation_captions_them(series_dataset, tiny_checkpoint, tmp_path):
    split = load_change_dataset(series_dataset, split="train")
    processor = RsccProcessor.from_pretrained(tiny_checkpoint)
    batch = ChangeCaptionCollator(processor)([EpochCaptionDataset(split, "flatten", seed=0)[i] for i in range(3)])
    assert sorted(batch["batch_num_images"].tolist()) == [2, 3, 3]
    trainer = run_stage(parse_arguments("stage2", [
        "--model_name_or_path", str(tiny_checkpoint), "--dataset_name_or_path", str(series_dataset),
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "3",
        "--logging_steps", "1", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--save_strategy", "no"]))
    assert all(entry["loss"] > 0 for entry in trainer.state.log_history if "loss" in entry)
    model = RsccForConditionalGeneration.from_pretrained(tmp_path / "out")
    predictions = generate_predictions(model, processor, split, batch_size=3, max_new_tokens=3, progress=False)
    assert sorted(predictions) == ["early", "late", "pair"]


def test_caption_cli_captions_a_series_of_rasters(tiny_checkpoint, series, capsys):
    assert main(["caption", *series[2], "--model", str(tiny_checkpoint), "--max-new-tokens", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == series[2] and isinstance(printed["caption"], str)


def test_an_images_checkpoint_loaded_as_llava_video_gets_the_video_prompt_layout(tiny_checkpoint, series):
    model, processor = load_model_and_processor(str(tiny_checkpoint), {"pair_encoding": "llava_video"})
    assert processor.pair_encoding == "llava_video" and processor.placeholder_token_counts(3) == [16, 16, 17]
    with torch.no_grad():
        assert model(**processor(images=series)).logits.shape[0] == 3


@pytest.mark.parametrize("options", [dict(visual_tokens="change"), dict(bitemporal_filter_layers=[1]),
                                     dict(change_features="key_change", use_change_head=True)],
                         ids=["change-tokens", "bitemporal-filter", "key-change"])
def test_pair_only_options_refuse_series_and_video_encodings(series, options):
    processor = make_processor()
    model = live_model(processor, **options)
    inputs = processor(images=series[:1])  # a pair: accepted
    assert inputs["batch_num_images"].tolist() == [2]
    three = make_processor()
    with pytest.raises(ValueError, match=r"batch_num_images=\[3\]: .* take \(before, after\) pairs only"):
        model(**three(images=series[1:2]))
    with pytest.raises(ValueError, match="use pair_encoding='images'"):
        RsccConfig(**{**model.config.to_dict(), "pair_encoding": "llava_video"})
    if "visual_tokens" in options:
        processor.set_visual_tokens("change")
        with pytest.raises(ValueError, match="a sample of 3 dates, but visual_tokens='change' takes"):
            processor(images=series[1:2])
