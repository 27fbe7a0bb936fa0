"""Tests of staged training (rscc.training, train/) and generation-based evaluation (rscc.evaluation).

CPU, tiny random models, real LEVIR-CC pairs from ../shared/data. In-process runs use the plain Trainer; the
DeepSpeed runs go through `accelerate launch` in a subprocess (1 process here, 2 in the slow-marked test).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
import torch
import torch._functorch.config
import yaml
from safetensors.torch import load_file
from transformers import (
    LlavaOnevisionForConditionalGeneration,
    TrainerCallback,
    VideoMAEModel,
)

from rscc import RsccForConditionalGeneration, RsccProcessor
from rscc.tiny_checkpoints import TINY_DIFFERENCE_OPTIONS, make_processor, tiny_config
from rscc.compat_rscc import given_cache
from rscc.data import build_dataset, caption_view, levir_cc_records, load_change_dataset, manifest_records
from rscc.evaluation import generate_predictions, read_predictions, reference_captions
from conftest import VIDEO_ENCODER_TYPES
from test_remote_code import HIDE_RSCC_AND_GENERATE, run_without_rscc
from rscc.training import (
    LORA_PART,
    PARTS,
    STAGES,
    CaptionRedrawCallback,
    ChangeCaptionCollator,
    EpochCaptionDataset,
    StageSpec,
    TaskLossWeighting,
    apply_lora,
    compile_layers,
    configure_trainable,
    load_model_and_processor,
    lora_target_pattern,
    parse_arguments,
    part_of,
    resolve_stage,
    run_stage,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES = REPO_ROOT / "train" / "recipes"
REAL_PAIRS = ("train_000016.png", "train_000051.png", "train_000054.png")
# Options every in-process run shares: tiny batches, no progress bars, no worker processes.
QUICK = ["--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
         "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--save_strategy", "no"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is far too small to split across threads: on a busy 2-core machine two threads run a training
    step about 10x slower than one (they wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def levir_folder(shared_data, tmp_path_factory) -> Path:
    """A dataset in rscc's format: the 3 real LEVIR-CC pairs as `train` (with LEVIR-CD masks standing in for
    LEVIR-MCI labels) and again, under another source name, as `validation`."""
    temp = tmp_path_factory.mktemp("levir")
    root = temp / "root"
    masks = sorted((shared_data / "levir_cd_samples" / "label").glob("*.png"))[: len(REAL_PAIRS)]
    for side in ("A", "B"):
        (root / "images" / "train" / side).mkdir(parents=True)
        for name in REAL_PAIRS:
            shutil.copy(shared_data / "levir_cc" / "images" / "train" / side / name, root / "images" / "train" / side)
    (root / "images" / "train" / "label").mkdir()
    for name, mask in zip(REAL_PAIRS, masks):
        shutil.copy(mask, root / "images" / "train" / "label" / name)
    entries = [entry for entry in json.loads((shared_data / "levir_cc" / "LevirCCcaptions.json").read_text())["images"]
               if entry["filename"] in REAL_PAIRS]
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": entries}))
    with open(temp / "validation.jsonl", "w") as file:
        for entry in entries:
            file.write(json.dumps({
                "id": Path(entry["filename"]).stem,
                "before": str(root / "images" / "train" / "A" / entry["filename"]),
                "after": str(root / "images" / "train" / "B" / entry["filename"]),
                "captions": [sentence["raw"] for sentence in entry["sentences"]],
            }) + "\n")
    records = chain(levir_cc_records(root),
                    manifest_records(temp / "validation.jsonl", split="validation", source="levir_cc_validation"))
    return build_dataset(records, temp / "dataset").out_dir


@pytest.fixture(scope="module")
def unused_parameters(tiny_checkpoint, levir_folder) -> set:
    """Parameters that get no gradient from a training batch (e.g. SigLIP's post-layernorm, which LLaVA-OneVision
    never reads): training cannot move them, so 'trainable parameters changed' excludes them."""
    model = RsccForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = RsccProcessor.from_pretrained(tiny_checkpoint)
    view = EpochCaptionDataset(load_change_dataset(levir_folder, split="train"), "flatten", seed=0)
    model(**ChangeCaptionCollator(processor)([view[0], view[1]])).loss.backward()
    return {name for name, parameter in model.named_parameters() if parameter.grad is None}


def arguments(stage: str, model, dataset, output_dir, *options):
    return parse_arguments(stage, ["--model_name_or_path", str(model), "--dataset_name_or_path", str(dataset),
                                   "--output_dir", str(output_dir), *QUICK, *map(str, options)])


def weights(folder) -> dict:
    return RsccForConditionalGeneration.from_pretrained(folder).state_dict()


def assert_trained_exactly(before: dict, after: dict, trained_parts, unused: set) -> None:
    """Frozen parameters bit-identical; every trainable one that gets a gradient changed."""
    for name, value in before.items():
        part = part_of(name)
        if part in trained_parts and name not in unused:
            assert not torch.equal(value, after[name]), f"{name} ({part}) should have trained"
        elif part not in trained_parts:
            assert torch.equal(value, after[name]), f"{name} ({part}) should be frozen"


def scorer(values):
    """A scoring function returning the given S_m values in turn, with the report shape of rscc.metrics."""
    calls = []

    def score(predictions, references):
        assert set(predictions) == set(references) and all(isinstance(c, str) for c in predictions.values())
        calls.append(dict(predictions))
        return {"convention": "test", "S_m": values[len(calls) - 1], "BLEU-4": 1.0, "subsets": {"change": 2.0}}

    score.calls = calls
    return score


# ---------------------------------------------------------------------------------------------------------------------
# Stages as data
# ---------------------------------------------------------------------------------------------------------------------


def test_stage_table_follows_ccexpert_and_every_parameter_has_a_part(tiny_model):
    assert STAGES["stage1"].trainable_parts == ("projector", "difference_module")
    assert "change_head" in STAGES["stage1"].optional_parts
    assert STAGES["stage2"].lr_scales == {"vision_tower": 0.2} == STAGES["stage3"].lr_scales
    assert (STAGES["stage2"].caption_mode, STAGES["stage3"].caption_mode) == ("flatten", "random_choice")
    parts = {part_of(name) for name, _ in tiny_model.named_parameters()}
    assert parts == {"vision_tower", "projector", "difference_module", "language_model"}
    assert part_of("model.image_newline") == "language_model"
    assert part_of("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == LORA_PART
    assert part_of("base_model.model.model.multi_modal_projector.linear_1.weight") == "projector"
    assert part_of("model.change_head.classifier.weight") == "change_head"
    with pytest.raises(ValueError, match="unknown part"):
        StageSpec("bad", "", trainable_parts=("vision",))
    with pytest.raises(ValueError, match="does not train"):
        resolve_stage("stage1", lr_scales={"vision_tower": 0.2})
    with pytest.raises(ValueError, match="unknown stage"):
        resolve_stage("stage4")
    # An explicit part list means exactly those parts; scales of parts no longer trained are dropped.
    assert resolve_stage("stage2", trainable_parts=["projector"]) == StageSpec(
        "stage2", STAGES["stage2"].description, trainable_parts=("projector",))


def test_configure_trainable_rejects_a_missing_part_and_skips_optional_ones():
    processor = make_processor()
    model = RsccForConditionalGeneration(tiny_config(processor.tokenizer, change_features="none"))
    with pytest.raises(ValueError, match="difference_module"):
        configure_trainable(model, STAGES["stage1"])
    report = configure_trainable(model, STAGES["stage2"])
    assert report.absent_parts == ["difference_module", "change_head", "bitemporal_filter"]
    assert report.num_trainable == report.num_total == sum(p.numel() for p in model.parameters())
    report = configure_trainable(model, resolve_stage("stage1", trainable_parts=["projector"]))
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name, _ in model.named_parameters() if name.startswith(PARTS["projector"])}
    assert "projector   " in str(report) and report.num_trainable == 2 * 32 * 32 + 2 * 32


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def test_collator_passes_change_masks_only_to_processors_that_take_them(tiny_processor, levir_folder):
    view = EpochCaptionDataset(load_change_dataset(levir_folder, split="train"), "random_choice", seed=0)
    examples = [view[0], view[1]]
    assert all(example["change_mask"] is not None for example in examples)
    batch = ChangeCaptionCollator(tiny_processor)(examples)
    assert batch["labels"].shape == batch["input_ids"].shape and (batch["labels"] != -100).any()

    class MaskProcessor(RsccProcessor):
        def __call__(self, images=None, text=None, captions=None, change_masks=None, **kwargs):
            self.received = change_masks
            return super().__call__(images=images, text=text, captions=captions, **kwargs)

    masked = MaskProcessor(tiny_processor.image_processor, tiny_processor.tokenizer,
                           num_image_tokens=tiny_processor.num_image_tokens)
    ChangeCaptionCollator(masked)(examples)
    assert [mask.size for mask in masked.received] == [(256, 256), (256, 256)]


def test_processor_decodes_masks_into_the_change_head_classes(tiny_checkpoint, levir_folder):
    # LEVIR-CD's 255 is a building: the last class of a 3-class (LEVIR-MCI) head, "change" of a 2-class one.
    view = EpochCaptionDataset(load_change_dataset(levir_folder, split="train"), "flatten", seed=0)
    for num_classes in (3, 2):
        model, processor = load_model_and_processor(
            str(tiny_checkpoint), {"use_change_head": True, "change_head_num_classes": num_classes})
        assert processor.num_change_classes == num_classes
        masks = ChangeCaptionCollator(processor)([view[0], view[5]])["change_masks"]
        assert masks.max().item() == num_classes - 1


def test_random_choice_redraws_captions_per_epoch_from_seed_and_epoch(levir_folder):
    pairs = load_change_dataset(levir_folder, split="train")
    dataset = EpochCaptionDataset(pairs, "random_choice", seed=3)
    callback = CaptionRedrawCallback(dataset)
    draws = {}
    for epoch, state_epoch in ((0, 0.0), (1, 1.0), (2, 2.0), (1, 1.5)):  # 1.5: resumed in the middle of epoch 1
        callback.on_epoch_begin(None, type("State", (), {"epoch": state_epoch})(), None)
        captions = [dataset[index]["caption"] for index in range(len(dataset))]
        expected = caption_view(pairs, "random_choice", seed=3, epoch=epoch)
        assert captions == [expected[index]["caption"] for index in range(len(expected))]
        draws.setdefault(epoch, captions)
        assert draws[epoch] == captions
    assert len({tuple(captions) for captions in draws.values()}) > 1
    assert len(EpochCaptionDataset(pairs, "flatten", seed=3)) == 15  # 3 pairs x 5 captions


# ---------------------------------------------------------------------------------------------------------------------
# Stages end to end (plain Trainer)
# ---------------------------------------------------------------------------------------------------------------------


def test_three_stages_chain_and_train_exactly_their_parts(stock_folder, levir_folder, tmp_path, unused_parameters):
    # Stage 1 from a stock LLaVA-OneVision checkpoint: the difference module is added (zero output scale).
    stage1 = tmp_path / "stage1"
    trainer = run_stage(arguments("stage1", stock_folder, levir_folder, stage1, "--max_steps", "2",
                                  "--model_config_overrides", json.dumps(TINY_DIFFERENCE_OPTIONS)))
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(stock_folder).state_dict()
    after1 = weights(stage1)
    for name, value in stock.items():
        if part_of(name) in ("vision_tower", "language_model"):
            assert torch.equal(value, after1[name]), name
    assert not torch.equal(stock["model.multi_modal_projector.linear_1.weight"],
                           after1["model.multi_modal_projector.linear_1.weight"])
    assert after1["model.difference_module.output_scale"].abs().sum() > 0  # moved from its zero start
    record = json.loads((stage1 / "rscc_stage.json").read_text())
    assert record["trainable"]["trainable_parts"] == ["projector", "difference_module"]
    assert record["trainable"]["absent_parts"] == ["change_head", "bitemporal_filter"]
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(entry["samples_per_second"] > 0 and entry["peak_memory_mb"] > 0 for entry in losses)
    assert {"learning_rate/projector", "learning_rate/difference_module"} <= set(losses[0])

    # Stage 2 from stage 1's folder, with the Trainer's gradient-checkpointing flag: everything trains.
    stage2 = tmp_path / "stage2"
    trainer = run_stage(arguments("stage2", stage1, levir_folder, stage2, "--max_steps", "2",
                                  "--gradient_checkpointing", "true"))
    assert trainer.model.is_activation_checkpointing
    assert_trained_exactly(after1, weights(stage2), set(PARTS), unused_parameters)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][0]
    assert logged["learning_rate/vision_tower"] == pytest.approx(0.2 * logged["learning_rate/language_model"])
    assert logged["learning_rate/projector"] == logged["learning_rate/language_model"] == logged["learning_rate"]

    # Stage 3 from stage 2's folder, training only the difference module this time (a stage override).
    stage3 = tmp_path / "stage3"
    run_stage(arguments("stage3", stage2, levir_folder, stage3, "--max_steps", "2",
                        "--trainable_parts", "difference_module"))
    assert_trained_exactly(weights(stage2), weights(stage3), {"difference_module"}, unused_parameters)
    assert RsccProcessor.from_pretrained(stage3).tokenizer.get_vocab() == make_processor().tokenizer.get_vocab()


class EpochRecorder(TrainerCallback):
    """Records the caption-draw epoch of the training dataset at every step."""

    def __init__(self):
        self.epochs = []

    def on_step_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.epochs.append(train_dataloader.dataset.epoch)


class StopAt(TrainerCallback):
    """Ends training after `step` steps, as an interruption would (the checkpoint of that step is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


KCFI_DWA = {"use_change_head": True, "change_head_num_classes": 2, "change_loss_weighting": "dwa",
            "change_loss_dwa_temperature": 0.2}


@pytest.mark.parametrize("model_options", [{}, KCFI_DWA], ids=["captions", "kcfi_dwa"])
def test_resumed_run_reaches_the_same_parameters(model_options, tiny_checkpoint, levir_folder, tmp_path):
    # Batch 1 over 3 pairs: 3 steps per epoch; the interruption at step 4 is inside epoch 1, whose captions are a
    # new random draw, so resuming must restore the data order and the epoch's captions as well as the weights.
    # Under DWA, step 5's loss weights come from the losses of steps 3 and 4, which the checkpoint must keep.
    options = ["--max_steps", "5", "--per_device_train_batch_size", "1", "--save_strategy", "steps",
               "--save_steps", "4", "--seed", "7", "--model_config_overrides", json.dumps(model_options)]
    straight_epochs, resumed_epochs = EpochRecorder(), EpochRecorder()
    run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "straight", *options),
              callbacks=[straight_epochs])
    run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "resumed", *options), callbacks=[StopAt(4)])
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()
    trainer = run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "resumed", *options,
                                  "--resume_from_checkpoint", "last"), callbacks=[resumed_epochs])
    assert trainer.state.global_step == 5
    assert (straight_epochs.epochs, resumed_epochs.epochs) == ([0, 0, 0, 1, 1], [1])  # step 5 uses epoch 1's draw
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)  # bit-identical
    interrupted = weights(tmp_path / "resumed" / "checkpoint-4")
    assert any(not torch.equal(interrupted[name], resumed[name]) for name in resumed)  # step 5 did train


class DwaRecorder:
    """Records, for each training forward with both losses, its optimizer step, the loss history its weights came
    from, and its (caption, change) losses (wraps `TaskLossWeighting.combine`)."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.step = 0
        combine = TaskLossWeighting.combine
        recorder = self

        def recording(weighting, caption_loss, change_loss, training):
            if training:
                history = [torch.tensor(losses) for losses in weighting.history]
                recorder.calls.append((recorder.step, history, torch.stack([caption_loss, change_loss]).detach()))
            return combine(weighting, caption_loss, change_loss, training)

        monkeypatch.setattr(TaskLossWeighting, "combine", recording)


class StepCounter(TrainerCallback):
    def __init__(self, recorder: DwaRecorder):
        self.recorder = recorder

    def on_step_begin(self, args, state, control, **kwargs):
        self.recorder.step = state.global_step


def test_dwa_step_is_the_optimizer_step_under_gradient_accumulation(
    tiny_checkpoint, levir_folder, tmp_path, monkeypatch
):
    # 3 pairs, 1 a micro-batch, 2 micro-batches a step: steps of 2, 1 (the epoch's end) and 2 forwards.
    recorder = DwaRecorder(monkeypatch)
    run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "out", "--max_steps", "3",
                        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                        "--model_config_overrides", json.dumps(KCFI_DWA)), callbacks=[StepCounter(recorder)])
    steps = {}
    for step, history, losses in recorder.calls:
        steps.setdefault(step, []).append((history, losses))
    assert [len(forwards) for forwards in steps.values()] == [2, 1, 2]
    step_means = []
    for step, forwards in steps.items():
        first_history = forwards[0][0]
        assert all(len(history) == len(first_history) and all(map(torch.equal, history, first_history))
                   for history, _ in forwards), "the forwards of one step share its weights"
        assert len(first_history) == min(step, 2)
        for recorded, expected in zip(reversed(first_history), reversed(step_means)):
            torch.testing.assert_close(recorded, expected)
        step_means.append(torch.stack([losses for _, losses in forwards]).mean(dim=0))


class LanguageLayerInputs(TrainerCallback):
    """Records the KV cache the first language-model layer receives in each training forward."""

    def __init__(self):
        self.caches = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.model.language_model.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: self.caches.append(given_cache(kwargs)), with_kwargs=True)


def test_training_forward_builds_no_kv_cache(tiny_checkpoint, levir_folder, tmp_path):
    # The Trainer sets `config.use_cache` from `--use_cache` (False): without gradient checkpointing, which drops the
    # cache itself, every training forward would otherwise build a KV cache inside each (compiled) layer.
    recorder = LanguageLayerInputs()
    run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "out", "--max_steps", "2"),
              callbacks=[recorder])
    assert len(recorder.caches) == 2 and all(cache is None for cache in recorder.caches)


def test_validation_metric_is_logged_and_keeps_the_best_checkpoint(tiny_checkpoint, levir_folder, tmp_path):
    score = scorer([5.0, 9.0, 1.0])
    output = tmp_path / "run"
    trainer = run_stage(
        arguments("stage2", tiny_checkpoint, levir_folder, output, "--max_steps", "3", "--eval_strategy", "steps",
                  "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end",
                  "true", "--validation_max_new_tokens", "4", "--per_device_eval_batch_size", "2"),
        scoring_function=score,
    )
    evaluations = [entry for entry in trainer.state.log_history if "eval_S_m" in entry]
    assert [(entry["step"], entry["eval_S_m"]) for entry in evaluations] == [(1, 5.0), (2, 9.0), (3, 1.0)]
    assert evaluations[0]["eval_subsets/change"] == 2.0 and "eval_convention" not in evaluations[0]
    assert trainer.args.metric_for_best_model == "S_m" and trainer.state.best_metric == 9.0
    assert trainer.state.best_model_checkpoint == str(output / "checkpoint-2")
    best, last, final = weights(output / "checkpoint-2"), weights(output / "checkpoint-3"), weights(output)
    assert all(torch.equal(best[name], final[name]) for name in best)
    assert any(not torch.equal(last[name], final[name]) for name in best)
    # The validation captions of each evaluation are kept, keyed by pair id.
    assert read_predictions(output / "predictions" / "validation-step2.jsonl") == score.calls[1]
    assert set(score.calls[1]) == {Path(name).stem for name in REAL_PAIRS}


# ---------------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_run_trains_adapters_and_named_parts_only_and_merges_exactly(
    tiny_checkpoint, levir_folder, tmp_path, example_pairs, tiny_processor
):
    # Semantic-CC's captioning step: LoRA r16/alpha32/dropout 0.05 on the language model, plus the projector;
    # validation picks step 1, so the best-model reload of adapters and projector is exercised too.
    output = tmp_path / "lora"
    trainer = run_stage(
        arguments("stage2", tiny_checkpoint, levir_folder, output, "--max_steps", "2", "--trainable_parts",
                  "projector", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--lora_parts",
                  "language_model", "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps",
                  "--save_steps", "1", "--load_best_model_at_end", "true", "--validation_max_new_tokens", "3"),
        scoring_function=scorer([9.0, 1.0]),
    )
    assert trainer.state.best_model_checkpoint == str(output / "checkpoint-1")
    best = output / "checkpoint-1"
    assert sorted(load_file(str(best / "trained_parts.safetensors"))) == [
        f"base_model.model.model.multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("bias", "weight")
    ]
    adapter = output / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "trained_parts.safetensors"} <= {
        path.name for path in adapter.iterdir()}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (16, 32, 0.05)
    adapter_weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert adapter_weights and all(".language_model.layers." in name for name in adapter_weights)
    # The final adapter and parts are the best checkpoint's, not the last step's.
    assert all(torch.equal(tensor, load_file(str(best / "adapter_model.safetensors"))[name])
               for name, tensor in adapter_weights.items())

    base, merged = weights(tiny_checkpoint), weights(output)
    adapted = {name.replace("base_model.model.", "").split(".lora_")[0] + ".weight" for name in adapter_weights}
    for name, value in base.items():
        if name.startswith(PARTS["projector"]):
            assert torch.equal(merged[name], load_file(str(best / "trained_parts.safetensors"))[
                "base_model.model." + name])
        elif name in adapted:
            assert not torch.equal(value, merged[name]), f"{name}: adapter not merged"
        else:
            assert torch.equal(value, merged[name]), f"{name} should be frozen"

    # Merged weights compute what base weights + adapter (+ trained parts) compute.
    from peft import PeftModel

    from rscc.training import load_trained_parts

    with_adapter = PeftModel.from_pretrained(RsccForConditionalGeneration.from_pretrained(tiny_checkpoint), adapter)
    assert load_trained_parts(with_adapter, adapter)
    inputs = tiny_processor(images=example_pairs, captions=["A road is built.", "Houses appear."])
    with torch.no_grad():
        expected = with_adapter.eval()(**inputs).logits
        actual = RsccForConditionalGeneration.from_pretrained(output).eval()(**inputs).logits
    assert (expected - actual).abs().max().item() <= 1e-5


def test_lora_targets_stay_inside_their_part(tiny_model):
    pattern = lora_target_pattern(tiny_model.config, ["vision_tower"], last_layers=1)
    peft_model = apply_lora(tiny_model, r=4, alpha=8, dropout=0.0, parts=["vision_tower"], last_layers=1)
    adapted = {name.split(".lora_A")[0].replace("base_model.model.", "")
               for name, _ in peft_model.named_parameters() if ".lora_A." in name}
    assert adapted == {f"model.vision_tower.encoder.layers.3.{module}" for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")}
    assert "layers\\.(3)" in pattern
    report = configure_trainable(peft_model, resolve_stage("stage3", trainable_parts=[LORA_PART]))
    assert report.trainable_parts == [LORA_PART]
    assert all(part_of(name) == LORA_PART for name, p in peft_model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="blocks"):
        lora_target_pattern(tiny_model.config, ["vision_tower"], last_layers=5)
    with pytest.raises(ValueError, match="LoRA can adapt"):
        lora_target_pattern(tiny_model.config, ["difference_module"])


# ---------------------------------------------------------------------------------------------------------------------
# Recipes, arguments, errors
# ---------------------------------------------------------------------------------------------------------------------


def tiny_model_options(recipe_options: dict) -> dict:
    """A recipe's model options for the 4-layer tiny vision tower: the recipes name layers of SigLIP's 26."""
    options = dict(recipe_options)
    if "bitemporal_filter_layers" in options:
        options["bitemporal_filter_layers"] = [1, 2, 3, 4]
    return options


MASK_RECIPES = {  # recipe -> a change-mask option it sets
    "mvcc.yaml": "change_filter",
    "semantic_cc_stage1_change_detection.yaml": "use_change_head",
    "semantic_cc_stage2_captioning.yaml": "change_loss_weight",
    "semantic_cc_stage3_joint.yaml": "change_loss_weight",
    "kcfi.yaml": "use_change_head",
    "series_llava_video.yaml": "pair_encoding",
}
# Built from a LLaVA-OneVision checkpoint with a video encoder (tested by the accelerate run of mvcc_video.yaml).
VIDEO_ENCODER_RECIPES = {"mvcc_video.yaml"}


def test_recipes_parse_and_their_model_options_build_the_model(tiny_checkpoint, levir_folder, tmp_path):
    recipes = sorted(path.name for path in RECIPES.glob("*.yaml"))
    ccexpert = {"ccexpert_stage1.yaml", "ccexpert_stage2.yaml", "ccexpert_stage3.yaml"}
    assert set(MASK_RECIPES) | VIDEO_ENCODER_RECIPES | ccexpert == set(recipes)
    resolved = {}
    for recipe in recipes:
        parsed = parse_arguments("stage1", ["--config", str(RECIPES / recipe), "--model_name_or_path", "unused",
                                            "--dataset_name_or_path", "unused"])
        resolved[recipe] = (parsed.stage.resolve(), parsed)
        deepspeed = parsed.training.get("deepspeed")
        assert deepspeed is None or (REPO_ROOT / deepspeed).is_file(), recipe
    stage3, parsed3 = resolved["ccexpert_stage3.yaml"]
    assert (stage3.name, dict(stage3.lr_scales), stage3.caption_mode) == (
        "stage3", {"vision_tower": 0.2}, "random_choice")
    assert parsed3.training["learning_rate"] == 1e-5 and parsed3.training["metric_for_best_model"] == "S_m"
    kcfi, parsed_kcfi = resolved["kcfi.yaml"]
    assert dict(kcfi.lr_scales) == {"vision_tower": 0.1}
    assert "language_model" not in kcfi.trainable_parts and "projector" not in kcfi.trainable_parts
    assert parsed_kcfi.model.model_config_overrides["visual_tokens"] == "change"
    assert parsed_kcfi.model.model_config_overrides["change_features"] == "key_change"
    semantic1, parsed_semantic1 = resolved["semantic_cc_stage1_change_detection.yaml"]
    assert semantic1.objective == "change"
    assert semantic1.trainable_parts == ("change_head", "difference_module", "bitemporal_filter")
    assert (parsed_semantic1.stage.lora_parts, parsed_semantic1.stage.lora_r) == (["vision_tower"], 16)
    assert parsed_semantic1.model.model_config_overrides["bitemporal_filter_layers"] == [7, 13, 20, 26]
    _, mvcc = resolved["mvcc.yaml"]
    assert (mvcc.stage.lora_r, mvcc.stage.lora_parts, mvcc.stage.lora_last_layers) == (4, ["vision_tower"], 1)
    _, semantic2 = resolved["semantic_cc_stage2_captioning.yaml"]
    assert (semantic2.stage.lora_r, semantic2.stage.lora_alpha, semantic2.stage.lora_dropout) == (16, 32, 0.05)
    mvcc_video_stage, mvcc_video = resolved["mvcc_video.yaml"]
    assert mvcc_video_stage.trainable_parts == ("projector", "language_model")
    assert (mvcc_video.stage.lora_r, mvcc_video.stage.lora_parts, mvcc_video.stage.lora_modules,
            mvcc_video.stage.lora_last_layers) == (4, ["video_encoder"], ["query", "key", "value"], 1)
    assert mvcc_video.model.model_config_overrides["pair_encoding"] == "video_encoder"

    for recipe, option in MASK_RECIPES.items():
        parsed = parse_arguments("stage1", ["--config", str(RECIPES / recipe), "--model_name_or_path",
                                            str(tiny_checkpoint), "--dataset_name_or_path", str(levir_folder)])
        overrides = tiny_model_options(parsed.model.model_config_overrides)
        model, _ = load_model_and_processor(str(tiny_checkpoint), overrides)
        assert option in overrides and all(getattr(model.config, key) == value for key, value in overrides.items())
        assert model.config.use_change_head == (model.model.change_head is not None)


def test_command_line_wins_over_the_recipe_and_empty_recipe_values_are_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: from-recipe\nlearning_rate: 1.0e-4\nlr_scales: {vision_tower: 0.1}\n"
                      "bf16: true\nmodel_config_overrides: {change_filter: multiply}\n")
    parsed = parse_arguments("stage2", ["--config", str(recipe), "--dataset_name_or_path", "data",
                                        "--learning_rate", "3e-4", "--lr_scales", "projector=0.5"])
    assert parsed.model.model_name_or_path == "from-recipe" and parsed.stage.stage == "stage2"
    assert parsed.training["learning_rate"] == 3e-4 and parsed.training["bf16"] is True
    assert parsed.stage.lr_scales == {"projector": 0.5}
    assert parsed.model.model_config_overrides == {"change_filter": "multiply"}
    recipe.write_text("optional_parts: []\n")
    with pytest.raises(ValueError, match="optional_parts is empty"):
        parse_arguments("stage2", ["--config", str(recipe)])


def test_bad_arguments_fail_with_messages_naming_them(tiny_checkpoint, levir_folder, tmp_path):
    with pytest.raises(ValueError, match="no split 'val'"):
        run_stage(arguments("stage1", tiny_checkpoint, levir_folder, tmp_path / "a", "--eval_strategy", "steps",
                            "--validation_split", "val", "--validation_scoring_function", "json:dumps"))
    with pytest.raises(ValueError, match="unknown option"):
        recipe = tmp_path / "typo.yaml"
        recipe.write_text("learning_rte: 1.0e-5\n")
        parse_arguments("stage1", ["--config", str(recipe)])
    with pytest.raises(ValueError, match="PART=SCALE"):
        arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "b", "--lr_scales", "vision_tower")
    with pytest.raises(ValueError, match="also trains in full"):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "c", "--lora_r", "4"))
    with pytest.raises(ValueError, match="lora_r is 0"):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "d", "--trainable_parts", LORA_PART))
    if importlib.util.find_spec("rscc.metrics") is None:
        with pytest.raises(ImportError, match="rscc.metrics"):  # before any training step
            run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "e", "--eval_strategy", "steps"))
    with pytest.raises(ValueError, match="compile_layers does not work under ZeRO-3"):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "g", "--compile_layers", "true",
                            "--deepspeed", REPO_ROOT / "train" / "deepspeed" / "zero3.json"))
    with pytest.raises(ValueError, match="no checkpoint"):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "f", "--resume_from_checkpoint",
                            "last"))
    with pytest.raises(ValueError, match="add --compile_layers true"):
        arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "h", "--activation_memory_budget", "0.5")
    with pytest.raises(ValueError, match=r"activation_memory_budget 1.5: expected a fraction in \[0, 1\]"):
        arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "h", "--compile_layers", "true",
                  "--activation_memory_budget", "1.5")
    with pytest.raises(ValueError, match="replaces --activation_checkpointing"):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "h", "--compile_layers", "true",
                            "--activation_memory_budget", "0.5", "--activation_checkpointing", "true"))


def test_generate_predictions_writes_jsonl_in_dataset_order(tiny_model, tiny_processor, levir_folder, tmp_path):
    split = load_change_dataset(levir_folder, split="validation")
    tiny_model.train()
    predictions = generate_predictions(tiny_model, tiny_processor, split, batch_size=2, max_new_tokens=4,
                                       output_file=tmp_path / "out" / "predictions.jsonl", progress=False)
    assert tiny_model.training  # mode restored
    assert list(predictions) == list(split["id"]) == list(reference_captions(split))
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": k, "caption": v} for k, v in predictions.items()]
    from rscc.captioning import caption_samples

    pairs = [[row["before"], row["after"]] for row in split]
    expected = caption_samples(tiny_model, tiny_processor, pairs, batch_size=2, max_new_tokens=4)
    assert list(predictions.values()) == expected
    with pytest.raises(ValueError, match="occur more than once"):
        from datasets import concatenate_datasets

        generate_predictions(tiny_model, tiny_processor, concatenate_datasets([split, split]), progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# DeepSpeed through accelerate launch
# ---------------------------------------------------------------------------------------------------------------------

SCORING_MODULE = '''
def score(predictions, references):
    assert set(predictions) == set(references), (sorted(predictions), sorted(references))
    return {"S_m": float(len(predictions)), "pairs": float(len(predictions))}
'''


def accelerate_launch(tmp_path, script, accelerate_config, num_processes, *options) -> None:
    """Run a stage script of train/ under `accelerate launch` with a shipped accelerate config."""
    (tmp_path / "scoring_for_test.py").write_text(SCORING_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [Path(sys.executable).parent / "accelerate", "launch", "--config_file",
               REPO_ROOT / "train" / "accelerate" / accelerate_config, "--num_processes", str(num_processes),
               "--main_process_port", "0", REPO_ROOT / "train" / script, *options, "--logging_steps", "1",
               "--learning_rate", "1e-3", "--dataloader_num_workers", "0", "--disable_tqdm", "true"]
    result = subprocess.run([str(part) for part in command], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def launch(tmp_path, accelerate_config, num_processes, zero, *options):
    """Run train/stage2.py under `accelerate launch` with a shipped accelerate config and DeepSpeed config."""
    output = tmp_path / f"out-{zero}-{num_processes}"
    accelerate_launch(tmp_path, "stage2.py", accelerate_config, num_processes,
                      "--deepspeed", REPO_ROOT / "train" / "deepspeed" / f"{zero}.json", "--output_dir", output,
                      "--save_strategy", "steps", "--save_steps", "2", *options)
    return output, json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]


def check_deepspeed_run(output, log_history, zero, before):
    engine_files = {path.name for path in (output / "checkpoint-2" / "global_step2").iterdir()}
    expected = "zero_pp_rank_0_mp_rank_00_model_states.pt" if zero != "zero2" else "mp_rank_00_model_states.pt"
    assert expected in engine_files, engine_files  # the engine really ran this ZeRO stage
    logged = [entry for entry in log_history if "loss" in entry][0]
    # The optimizer's per-part groups survive DeepSpeed: the vision tower still steps at 0.2x.
    assert logged["learning_rate/vision_tower"] == pytest.approx(0.2 * logged["learning_rate/language_model"])
    after = weights(output)
    assert any(not torch.equal(before[name], after[name]) for name in before if part_of(name) == "vision_tower")


def test_compile_layers_compiles_every_transformer_layer(tiny_model):
    config = tiny_model.config
    expected = (config.vision_config.num_hidden_layers + config.text_config.num_hidden_layers
                + config.difference_num_blocks)
    assert compile_layers(tiny_model) == expected
    assert all(layer._compiled_call_impl is not None for layer in tiny_model.model.language_model.layers)


@pytest.mark.slow
@pytest.mark.parametrize("memory_saving", [["--activation_checkpointing", "true"],
                                           ["--activation_memory_budget", "0.2"]], ids=["checkpointing", "budget"])
def test_compiled_layers_train_like_eager_ones(memory_saving, tiny_checkpoint, levir_folder, tmp_path):
    options = ["--max_steps", "2", "--per_device_train_batch_size", "2"]
    run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "eager", *options))
    # The budget is process-wide and read at compilation: fresh compilations, and the default restored afterwards.
    torch._dynamo.reset()
    with torch._functorch.config.patch(activation_memory_budget=1.0):
        run_stage(arguments("stage2", tiny_checkpoint, levir_folder, tmp_path / "compiled", *options, *memory_saving,
                            "--compile_layers", "true"))
    eager, compiled, start = weights(tmp_path / "eager"), weights(tmp_path / "compiled"), weights(tiny_checkpoint)
    assert any(not torch.equal(start[name], compiled[name]) for name in start)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_accelerate_launch_with_deepspeed_one_process(zero, tiny_checkpoint, levir_folder, tmp_path):
    output, log_history = launch(
        tmp_path, "single_gpu.yaml", 1, zero, "--model_name_or_path", tiny_checkpoint, "--dataset_name_or_path",
        levir_folder, "--max_steps", "2", "--per_device_train_batch_size", "2")
    check_deepspeed_run(output, log_history, zero, weights(tiny_checkpoint))


@pytest.mark.parametrize("model_type", VIDEO_ENCODER_TYPES)
def test_video_encoder_model_learns_captions_of_real_pairs(stock_folder, video_encoder_folders, levir_folder, tmp_path,
                                                           model_type):
    # MV-CC's recipe at tiny size, in process: LoRA r4 on the encoder's last block, projector and language model train.
    overrides = {"pair_encoding": "video_encoder", "video_encoder": str(video_encoder_folders[model_type]),
                 "change_filter": "multiply"}
    trainer = run_stage(arguments(
        "stage2", stock_folder, levir_folder, tmp_path / "out", "--trainable_parts", "projector", "language_model",
        "--lora_r", "4", "--lora_alpha", "8", "--lora_parts", "video_encoder", "--lora_modules", "query", "key",
        "value", "--lora_last_layers", "1", "--model_config_overrides", json.dumps(overrides), "--max_steps", "150",
        "--learning_rate", "3e-3"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"video_encoder ({model_type}) learning check: caption loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert len(losses) == 150 and max(losses[-10:]) < 0.5 * losses[0]


@pytest.mark.slow
def test_mvcc_video_recipe_trains_under_accelerate_and_the_output_captions_as_remote_code_and_from_the_cli(
    stock_folder, video_encoder_folders, levir_folder, tmp_path
):
    video_encoder_folder = video_encoder_folders["videomae"]
    overrides = {"pair_encoding": "video_encoder", "video_encoder": str(video_encoder_folder),
                 "change_filter": "multiply", "change_mask_source": "input"}
    output, log_history = launch(
        tmp_path, "single_gpu.yaml", 1, "zero2", "--config", RECIPES / "mvcc_video.yaml", "--model_name_or_path",
        stock_folder, "--dataset_name_or_path", levir_folder, "--model_config_overrides", json.dumps(overrides),
        "--bf16", "false", "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_strategy", "no",
        "--load_best_model_at_end", "false")
    assert [entry["loss"] for entry in log_history if "loss" in entry]
    assert "video_rscc.py" in os.listdir(output)
    trained = RsccForConditionalGeneration.from_pretrained(output)
    assert trained.config.pair_encoding == "video_encoder" and trained.config.change_filter == "multiply"
    # LoRA r4 on the last block's query / key / value, merged: those weights moved, the rest of the encoder did not.
    start = VideoMAEModel.from_pretrained(video_encoder_folder).state_dict()
    moved = {name for name, value in trained.model.video_encoder.backbone.state_dict().items()
             if not torch.equal(value, start[name])}
    assert moved == {f"encoder.layer.1.attention.attention.{name}.weight" for name in ("query", "key", "value")}

    pair = [str(levir_folder.parent / "root" / "images" / "train" / side / REAL_PAIRS[0]) for side in ("A", "B")]
    result = run_without_rscc(HIDE_RSCC_AND_GENERATE, [str(output), *pair], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["captions"]) == 2 and not report["rscc_imported"]
    cli = subprocess.run([sys.executable, str(REPO_ROOT / "rscc_console.py"), "caption", "--model", str(output), *pair,
                          "--max-new-tokens", "3", "--json"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert isinstance(json.loads(cli.stdout)["caption"], str)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_accelerate_launch_with_deepspeed_two_processes_validates_by_generation(
    zero, tiny_checkpoint, levir_folder, tmp_path
):
    # Two ranks caption the 3 validation pairs in shards of 2 (one pair repeated); scoring sees each id once.
    output, log_history = launch(
        tmp_path, "8gpu.yaml", 2, zero, "--model_name_or_path", tiny_checkpoint, "--dataset_name_or_path",
        levir_folder, "--max_steps", "2", "--per_device_train_batch_size", "1", "--eval_strategy", "steps",
        "--eval_steps", "2", "--validation_max_new_tokens", "3", "--per_device_eval_batch_size", "1",
        "--validation_scoring_function", "scoring_for_test:score")
    check_deepspeed_run(output, log_history, zero, weights(tiny_checkpoint))
    assert [entry["eval_pairs"] for entry in log_history if "eval_pairs" in entry] == [3.0]
    assert len(read_predictions(output / "predictions" / "validation-step2.jsonl")) == 3


@pytest.mark.java
@pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH (METEOR)")
def test_default_validation_scorer_gives_plain_metric_names():
    from rscc.evaluation import default_scoring_function

    scores = default_scoring_function()(
        {"a": "a road is built", "b": "there is no difference"},
        {"a": ["a road is built .", "houses appear"], "b": ["there is no difference", "no change has occurred"]},
    )
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S_m", "change_decision_accuracy"} <= set(scores)
    assert scores["change_decision_accuracy"] == 100.0 and scores["S_m"] > 0


class SeenCaptions(TrainerCallback):
    """Counts the training steps that ran."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_streaming_stage_trains_from_the_parquet_stream(tiny_checkpoint, levir_folder, tmp_path):
    # 3 pairs streamed one a step: the stream is re-read for the steps past its end.
    steps = SeenCaptions()
    trainer = run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "streamed", "--streaming", "true",
                                  "--max_steps", "4", "--per_device_train_batch_size", "1"), callbacks=[steps])
    assert steps.steps == 4 and trainer.state.global_step == 4
    before, after = weights(tiny_checkpoint), weights(tmp_path / "streamed")
    assert any(not torch.equal(before[name], after[name]) for name in before), "the streamed steps trained"
    with pytest.raises(ValueError, match="--max_steps"):
        run_stage(arguments("stage3", tiny_checkpoint, levir_folder, tmp_path / "unbounded", "--streaming", "true"))


# A recipe's real-run settings that a two-step CPU run replaces (validation, bf16, loading the best checkpoint).
TINY_RECIPE_RUN = ("--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--eval_strategy",
                   "no", "--load_best_model_at_end", "false", "--save_strategy", "steps", "--save_steps", "2")


def launch_recipe(tmp_path, recipe: str, script: str, model, dataset, *options) -> Path:
    """Train a shipped recipe for two steps under `accelerate launch` (its own ZeRO-2 config); the output folder."""
    output = tmp_path / Path(recipe).stem
    accelerate_launch(tmp_path, script, "single_gpu.yaml", 1, "--config", RECIPES / recipe, "--model_name_or_path",
                      model, "--dataset_name_or_path", dataset, "--output_dir", output, *TINY_RECIPE_RUN, *options)
    assert (output / "checkpoint-2" / "global_step2" / "mp_rank_00_model_states.pt").is_file(), "ZeRO-2 ran"
    return output


def recipe_model_options(recipe: str) -> list[str]:
    options = yaml.safe_load((RECIPES / recipe).read_text())["model_config_overrides"]
    return ["--model_config_overrides", json.dumps({**tiny_model_options(options), **TINY_DIFFERENCE_OPTIONS})]


def assert_loads_as_remote_code(folder, tmp_path, pair) -> None:
    assert (folder / "change_features_rscc.py").is_file()
    result = run_without_rscc(HIDE_RSCC_AND_GENERATE, [str(folder), *pair], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not json.loads(result.stdout.strip().splitlines()[-1])["rscc_imported"]


@pytest.mark.slow
def test_kcfi_and_semantic_cc_recipes_build_train_under_zero2_and_reload_as_remote_code(stock_folder, levir_folder,
                                                                                        tmp_path):
    """From a LLaVA-OneVision folder: KCFI (key change features only, frozen LM, DWA) in one stage; Semantic-CC
    (BCSF + encoder LoRA for change detection, then captioning, then joint) in three chained stages."""
    pair = [str(levir_folder.parent / "root" / "images" / "train" / side / REAL_PAIRS[0]) for side in ("A", "B")]
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(stock_folder).state_dict()

    kcfi = launch_recipe(tmp_path, "kcfi.yaml", "stage3.py", stock_folder, levir_folder,
                         *recipe_model_options("kcfi.yaml"))
    model = RsccForConditionalGeneration.from_pretrained(kcfi)
    assert (model.config.visual_tokens, model.config.change_features) == ("change", "key_change")
    assert RsccProcessor.from_pretrained(kcfi).visual_tokens == "change"
    trained = model.state_dict()
    assert all(torch.equal(stock[name], trained[name]) for name in stock if part_of(name) == "language_model")
    assert any(not torch.equal(stock[name], trained[name]) for name in stock if part_of(name) == "vision_tower")
    assert_loads_as_remote_code(kcfi, tmp_path, pair)

    semantic1 = launch_recipe(tmp_path, "semantic_cc_stage1_change_detection.yaml", "stage1.py", stock_folder,
                              levir_folder, *recipe_model_options("semantic_cc_stage1_change_detection.yaml"))
    after1 = weights(semantic1)
    assert all(after1[f"model.bitemporal_filter.{index}.output_scale"].abs().sum() > 0 for index in range(4))
    assert any(not torch.equal(stock[name], after1[name]) for name in stock if part_of(name) == "vision_tower"), (
        "the encoder's LoRA is merged into its weights")
    semantic2 = launch_recipe(tmp_path, "semantic_cc_stage2_captioning.yaml", "stage2.py", semantic1, levir_folder)
    semantic3 = launch_recipe(tmp_path, "semantic_cc_stage3_joint.yaml", "stage3.py", semantic2, levir_folder)
    after3 = weights(semantic3)
    assert all(torch.equal(after1[name], after3[name]) for name in after1 if part_of(name) == "bitemporal_filter")
    assert_loads_as_remote_code(semantic3, tmp_path, pair)
