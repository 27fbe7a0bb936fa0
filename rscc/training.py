"""Staged training on the Hugging Face Trainer: stages as data, recipes as YAML, DeepSpeed ZeRO through `--deepspeed`.

A stage says which parts of the model train (`PARTS` names them by parameter-name prefix), at which learning-rate
multiplier per part, how captions are drawn per epoch, and which loss drives it. `STAGES` holds CCExpert's three:

    stage1  projector + difference module (+ change head when the model has one); one example per caption
    stage2  everything, vision tower at 0.2x learning rate; one example per caption
    stage3  everything, vision tower at 0.2x; one random caption per pair per epoch (domain fine-tuning)

A recipe (`train/recipes/*.yaml`) picks a stage, may override its fields, and sets `TrainingArguments`; a stage's
output folder is a complete rscc checkpoint (model + processor), the next stage's `--model_name_or_path`.
The scripts `train/stage{1,2,3}.py` only call [`main`] with their stage's name.

Under ZeRO-3 the model is built before `TrainingArguments` exists (DeepSpeed would otherwise initialise every
sub-model partitioned), so [`parse_arguments`] returns the training arguments as keyword arguments and
[`run_stage`] builds `TrainingArguments` after the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch._functorch.config
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint
from transformers.utils import logging

from .configuration_rscc import RsccConfig
from .data import caption_view, load_change_dataset
from .evaluation import (
    ScoringFunction,
    default_scoring_function,
    generate_predictions,
    numeric_metrics,
    reference_captions,
    write_predictions,
)
from .inference import DEFAULT_MAX_NEW_TOKENS, match_change_classes
from .modeling_rscc import RsccForConditionalGeneration
from .processing_rscc import RsccProcessor

logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Parts and stages
# --------------------------------------------------------------------------------------------------------------------

# Every parameter of an rscc model belongs to exactly one part, found by the prefix of its name. `image_newline`
# trains with the language model, as in LLaVA-OneVision's own training code. `change_head` is the change-detection
# head of the change-mask work; a model without it simply has no parameter there.
PARTS: dict[str, tuple[str, ...]] = {
    "vision_tower": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.",),
    "difference_module": ("model.difference_module.",),
    "change_head": ("model.change_head.",),
    "language_model": ("model.language_model.", "model.image_newline", "lm_head."),
}
# peft's LoRA parameters (lora_A, lora_B, lora_magnitude_vector, ...) form a part of their own, whatever they adapt.
LORA_PART = "lora_adapters"
LORA_MARKER = ".lora_"
ALL_PARTS = (*PARTS, LORA_PART)
PEFT_PREFIX = "base_model.model."

CAPTION_MODES = ("flatten", "random_choice")
OBJECTIVES = ("combined", "change")
# Loss terms a model output may carry besides `loss`; logged when present.
LOSS_TERMS = ("caption_loss", "change_loss")
TRAINED_PARTS_FILE = "trained_parts.safetensors"
# The dynamic-weight-averaging loss history of a checkpoint (training state, saved with the optimizer's).
ADAPTER_FOLDER = "adapter"
STAGE_RECORD_FILE = "rscc_stage.json"


@dataclass(frozen=True)
class StageSpec:
    """What one training stage trains and how.

    Args:
        name: The stage's name.
        description: One line for logs and the stage record.
        trainable_parts: Parts that train; each must have parameters in the model (an error names a missing one).
        optional_parts: Parts that train when the model has them and are skipped (and reported) otherwise, such
            as the change head, which only models built with change-mask support have.
        lr_scales: Learning-rate multiplier per trained part (others train at the base rate), e.g.
            `{"vision_tower": 0.2}`.
        caption_mode: `"flatten"` (one example per reference caption) or `"random_choice"` (one example per pair
            with a caption re-drawn each epoch from (seed, epoch)).
        objective: `"combined"`: the model's `loss` (caption loss, plus the change loss when the model computes
            one); `"change"`: the change-detection loss alone (`outputs.change_loss`).
    """

    name: str
    description: str
    trainable_parts: tuple[str, ...]
    optional_parts: tuple[str, ...] = ()
    lr_scales: Mapping[str, float] = field(default_factory=dict)
    caption_mode: str = "flatten"
    objective: str = "combined"

    def __post_init__(self):
        named = [*self.trainable_parts, *self.optional_parts, *self.lr_scales]
        unknown = sorted({part for part in named if part not in ALL_PARTS})
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown part(s) {unknown}; parts are {list(ALL_PARTS)}")
        both = sorted(set(self.trainable_parts) & set(self.optional_parts))
        if both:
            raise ValueError(f"stage {self.name!r}: part(s) {both} are listed as both trainable and optional")
        untrained = sorted(set(self.lr_scales) - set(self.trainable_parts) - set(self.optional_parts))
        if untrained:
            raise ValueError(
                f"stage {self.name!r}: lr_scales names part(s) {untrained}, which the stage does not train"
            )
        bad_scales = {part: scale for part, scale in self.lr_scales.items() if not scale > 0}
        if bad_scales:
            raise ValueError(f"stage {self.name!r}: learning-rate multipliers must be positive, got {bad_scales}")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"stage {self.name!r}: caption_mode {self.caption_mode!r} is not one of {CAPTION_MODES}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.name!r}: objective {self.objective!r} is not one of {OBJECTIVES}")
        if not self.trainable_parts and not self.optional_parts:
            raise ValueError(f"stage {self.name!r} trains no part")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "lr_scales": dict(self.lr_scales)}


_EVERYTHING = ("vision_tower", "projector", "language_model")
STAGES: dict[str, StageSpec] = {
    "stage1": StageSpec(
        "stage1",
        "CCExpert stage 1: align the new modules; projector + difference module (+ change head), rest frozen",
        trainable_parts=("projector", "difference_module"),
        optional_parts=("change_head",),
        caption_mode="flatten",
    ),
    "stage2": StageSpec(
        "stage2",
        "CCExpert stage 2: everything trains, vision tower at 0.2x learning rate",
        trainable_parts=_EVERYTHING,
        optional_parts=("difference_module", "change_head"),
        lr_scales={"vision_tower": 0.2},
        caption_mode="flatten",
    ),
    "stage3": StageSpec(
        "stage3",
        "CCExpert stage 3: domain fine-tuning, everything trains (vision 0.2x), one random caption per pair per epoch",
        trainable_parts=_EVERYTHING,
        optional_parts=("difference_module", "change_head"),
        lr_scales={"vision_tower": 0.2},
        caption_mode="random_choice",
    ),
}


def resolve_stage(name: str, **overrides) -> StageSpec:
    """`STAGES[name]` with the fields in `overrides` (those not None) replaced.

    Overriding `trainable_parts` without `optional_parts` drops the stage's optional parts, so an explicit list
    means exactly those parts; overriding `trainable_parts` keeps only the `lr_scales` of parts still trained.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {sorted(STAGES)}")
    stage = STAGES[name]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if "trainable_parts" in overrides:
        overrides["trainable_parts"] = tuple(overrides["trainable_parts"])
        overrides.setdefault("optional_parts", ())
        if "lr_scales" not in overrides:
            kept = set(overrides["trainable_parts"]) | set(overrides["optional_parts"])
            overrides["lr_scales"] = {part: scale for part, scale in stage.lr_scales.items() if part in kept}
    if "optional_parts" in overrides:
        overrides["optional_parts"] = tuple(overrides["optional_parts"])
    return dataclasses.replace(stage, **overrides)


def part_of(name: str) -> Optional[str]:
    """The part a parameter belongs to, from its name in an rscc model or in a peft wrapper of one."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX) :]
    if LORA_MARKER in name:
        return LORA_PART
    for part, prefixes in PARTS.items():
        if name.startswith(prefixes):
            return part
    return None


def parameter_parts(model: torch.nn.Module) -> dict[str, str]:
    """`{parameter name: part}` for every parameter; a parameter of no part is an error naming it."""
    parts, orphans = {}, []
    for name, _ in model.named_parameters():
        part = part_of(name)
        if part is None:
            orphans.append(name)
        parts[name] = part
    if orphans:
        raise ValueError(
            f"{len(orphans)} parameter(s) belong to no training part (first: {orphans[:3]}); add their name prefix "
            "to rscc.training.PARTS"
        )
    return parts


@dataclass
class TrainableReport:
    """What [`configure_trainable`] did: parameter count and state per part."""

    stage: str
    parameters: dict[str, int]
    trainable_parts: list[str]
    absent_parts: list[str]
    num_trainable: int
    num_total: int

    def __str__(self) -> str:
        lines = [f"stage {self.stage}: {self.num_trainable:,} of {self.num_total:,} parameters train"]
        for part, count in self.parameters.items():
            lines.append(f"  {part:<18} {count:>14,}  {'trains' if part in self.trainable_parts else 'frozen'}")
        if self.absent_parts:
            lines.append(f"  not in this model (skipped): {', '.join(self.absent_parts)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def configure_trainable(model: torch.nn.Module, stage: StageSpec) -> TrainableReport:
    """Freeze every parameter, then unfreeze those of the stage's parts.

    A trainable part without parameters in `model` is an error (a stage asking to train a module the model lacks is
    almost always a wrong model or a wrong stage); an optional one is skipped and listed in `absent_parts`.

    Args:
        model: An rscc model, or a peft model wrapping one (its LoRA parameters are the `lora_adapters` part).
        stage: The stage.
    """
    parts = parameter_parts(model)
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        counts[parts[name]] = counts.get(parts[name], 0) + parameter.numel()
    missing = [part for part in stage.trainable_parts if not counts.get(part)]
    if missing:
        where = {part: list(PARTS.get(part, (f"*{LORA_MARKER}*",))) for part in missing}
        raise ValueError(
            f"stage {stage.name!r} trains part(s) {missing}, but the model has no parameter there ({where}); "
            "load a model that has them, or set the stage's trainable_parts"
        )
    absent = [part for part in stage.optional_parts if not counts.get(part)]
    trained = [part for part in (*stage.trainable_parts, *stage.optional_parts) if counts.get(part)]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(parts[name] in trained)
    num_trainable = sum(counts[part] for part in trained)
    return TrainableReport(
        stage=stage.name,
        parameters={part: counts[part] for part in ALL_PARTS if part in counts},
        trainable_parts=trained,
        absent_parts=absent,
        num_trainable=num_trainable,
        num_total=sum(counts.values()),
    )


def optimizer_parameter_groups(
    model: torch.nn.Module,
    stage: StageSpec,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: set[str],
) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: one per (part, decay or not), each at its part's rate.

    Each group carries its `part` name, so logs can report the learning rate per part.
    """
    parts = parameter_parts(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part, decays = parts[name], name in decay_parameter_names
        group = groups.setdefault(
            (part, decays),
            {
                "params": [],
                "part": part,
                "lr": learning_rate * stage.lr_scales.get(part, 1.0),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------------------
# LoRA (peft)
# --------------------------------------------------------------------------------------------------------------------

# Where LoRA can go: the transformer blocks of a part, and the linear layers in each block adapted by default.
LORA_BLOCKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # part: (blocks' name prefix, config holding num_hidden_layers, default module names)
    "language_model": (
        "model.language_model.layers",
        "text_config",
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "vision_tower": (
        "model.vision_tower.encoder.layers",
        "vision_config",
        ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    ),
}


def lora_target_pattern(
    config: RsccConfig, parts: list[str], modules: Optional[list[str]] = None, last_layers: Optional[int] = None
) -> str:
    """A peft `target_modules` regular expression for the linear layers of some blocks of some parts.

    The expression is anchored to the blocks of each part, so a LoRA on the language model never lands on the
    difference module's or the vision tower's projections of the same name.

    Args:
        config: The model's config (for the number of blocks).
        parts: Parts to adapt, from `LORA_BLOCKS` (`language_model`, `vision_tower`).
        modules: Linear-layer names within a block; defaults to all of a block's linear layers.
        last_layers: Adapt only the last N blocks (MV-CC: the last vision block); all blocks when None.
    """
    alternatives = []
    for part in parts:
        if part not in LORA_BLOCKS:
            raise ValueError(f"LoRA part {part!r}: LoRA can adapt {sorted(LORA_BLOCKS)}")
        prefix, sub_config, default_modules = LORA_BLOCKS[part]
        num_layers = getattr(config, sub_config).num_hidden_layers
        if last_layers is not None and not 1 <= last_layers <= num_layers:
            raise ValueError(f"lora_last_layers={last_layers}: the {part} has {num_layers} blocks")
        first = 0 if last_layers is None else num_layers - last_layers
        layers = "|".join(str(index) for index in range(first, num_layers))
        names = "|".join(modules or default_modules)
        alternatives.append(rf"{prefix.replace('.', chr(92) + '.')}\.({layers})\.(.+\.)?({names})")
    return "|".join(f"(?:{alternative})" for alternative in alternatives)


def apply_lora(model, *, r: int, alpha: float, dropout: float, parts: list[str], modules=None, last_layers=None):
    """Wrap `model` in a peft LoRA model (adapters on the blocks given by [`lora_target_pattern`]).

    Returns:
        The `peft.PeftModel`; run [`configure_trainable`] on it afterwards to choose what else trains.
    """
    from peft import LoraConfig, get_peft_model

    pattern = lora_target_pattern(model.config, parts, modules, last_layers)
    peft_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    return get_peft_model(model, peft_config)


def checked_memory_budget(budget: float) -> float:
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"activation_memory_budget {budget}: expected a fraction in [0, 1]")
    return budget


def compile_layers(model: torch.nn.Module, activation_memory_budget: Optional[float] = None) -> int:
    """Compile every transformer layer of `model` in place (regional compilation: one graph per layer type, reused by
    all its layers, so compilation stays short and gradient checkpointing keeps working). Returns how many.

    Args:
        activation_memory_budget: Fraction (0 to 1) of a compiled layer's saved activations to keep; the compiler
            recomputes the rest in the backward pass, cheapest first (element-wise work before matrix products).
            A finer alternative to gradient checkpointing, which recomputes a checkpointed layer whole. It is
            PyTorch's process-wide `torch._functorch.config.activation_memory_budget`, read when a layer first
            compiles, so it applies to every compilation in the process. None leaves it as it is (1.0 by default).
    """
    if activation_memory_budget is not None:
        torch._functorch.config.activation_memory_budget = checked_memory_budget(activation_memory_budget)
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


def load_trained_parts(model: torch.nn.Module, folder) -> bool:
    """Copy the non-adapter weights a LoRA run saved next to its adapter (`trained_parts.safetensors`) into `model`.

    Returns:
        Whether the folder had such a file.
    """
    path = Path(folder) / TRAINED_PARTS_FILE
    if not path.is_file():
        return False
    tensors = load_file(str(path))
    parameters = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(parameters))
    if unknown:
        raise ValueError(f"{path}: weights {unknown[:3]} are not parameters of this model")
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor)
    return True


def merge_lora(model) -> RsccForConditionalGeneration:
    """Fold a peft model's LoRA adapters into its base weights and return the plain rscc model."""
    return model.merge_and_unload()


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


class EpochCaptionDataset(torch.utils.data.Dataset):
    """A caption view of a split ([`rscc.data.caption_view`]) that follows the training epoch.

    In `random_choice` mode each epoch draws one caption per pair from (seed, epoch), so a rerun, and a run resumed
    from a checkpoint, see the same captions in the same epoch. [`CaptionRedrawCallback`] calls `set_epoch`.
    """

    def __init__(self, pairs, mode: str, seed: int, no_change_caption: Optional[str] = None):
        self.pairs, self.mode, self.seed, self.no_change_caption = pairs, mode, seed, no_change_caption
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch == self.epoch or (self.mode == "flatten" and self.epoch is not None):
            return  # a flattened view is the same every epoch
        self.epoch = epoch
        self.view = caption_view(
            self.pairs, self.mode, seed=self.seed, epoch=epoch, no_change_caption=self.no_change_caption
        )

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> dict:
        return self.view[int(index)]


class CaptionRedrawCallback(TrainerCallback):
    """Sets the training dataset's epoch at the start of each epoch, before the epoch's data loader starts.

    `state.epoch` then holds the number of finished epochs (also after resuming from a checkpoint), which is the
    index of the epoch about to run.
    """

    def __init__(self, dataset: EpochCaptionDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Epoch boundaries are exact (k steps / k steps); the margin only guards a float sum just below an integer.
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class TaskLossWeighting(TrainerCallback, ExportableState):
    """Combines the caption and change-detection losses under the weightings that need more than one batch
    (`change_loss_weighting` `"dwa"` or `"normalized"`; the model's own `loss` is the fixed weighting).

    `"dwa"` (KCFI's dynamic weight averaging): `w_k = 2 exp(r_k / T) / sum_i exp(r_i / T)`, `r_k` the ratio of task k's
    loss at the two previous steps (both weights 1 for the first two). A step is an optimizer step: the losses of its
    micro-batches, averaged over them and over the processes of a distributed run (so every process weights alike),
    make one history entry at `on_step_end`. The history is kept in checkpoints (`trainer_state.json`), so a resumed run
    weights as the uninterrupted one. `"normalized"` (Change-Agent): each loss divided by its own detached value.

    Args:
        weighting (`str`): `"dwa"` or `"normalized"`.
        temperature (`float`, *optional*, defaults to 2.0): `T` of `"dwa"`.
        history (`list[list[float]]`, *optional*): the (caption, change) losses of the last two steps, oldest first.
    """

    def __init__(self, weighting: str, temperature: float = 2.0, history: Optional[list] = None):
        if weighting not in ("dwa", "normalized"):
            raise ValueError(f"weighting={weighting!r}: expected 'dwa' or 'normalized' (the model applies 'fixed')")
        self.weighting = weighting
        self.temperature = temperature
        self.history = [list(losses) for losses in history or []][-2:]
        self.step_losses: list[torch.Tensor] = []

    def combine(self, caption_loss: torch.Tensor, change_loss: torch.Tensor, training: bool) -> torch.Tensor:
        """The weighted loss; in training, the losses are also recorded for the step's history entry."""
        tiny = torch.finfo(torch.float32).tiny
        if self.weighting == "normalized":
            return sum(loss / loss.detach().clamp_min(tiny) for loss in (caption_loss, change_loss))
        losses = torch.stack([caption_loss, change_loss.to(caption_loss.dtype)])
        if len(self.history) < 2:
            weights = torch.ones_like(losses)
        else:
            before_previous, previous = torch.tensor(self.history, dtype=torch.float32, device=losses.device)
            rates = previous / before_previous.clamp_min(tiny)
            weights = len(losses) * torch.softmax(rates / self.temperature, dim=0).to(losses.dtype)
        if training:
            self.step_losses.append(losses.detach().float())
        return (weights * losses).sum()

    def on_step_end(self, args, state, control, **kwargs):
        if self.weighting != "dwa":
            return
        recorded = self.step_losses
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # Sums and a count: a process without both losses this step still takes part in the all-reduce.
        totals = torch.zeros(3, device=recorded[0].device if recorded else args.device)
        if recorded:
            totals[:2] = torch.stack(recorded).sum(dim=0)
            totals[2] = len(recorded)
        recorded.clear()
        if distributed:
            torch.distributed.all_reduce(totals)
        if totals[2] > 0:
            self.history = [*self.history, (totals[:2] / totals[2]).tolist()][-2:]

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run's trainer_state.json holds the history of the checkpoint.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.history = [list(losses) for losses in saved["attributes"]["history"]]

    def state(self) -> dict:
        return {
            "args": {"weighting": self.weighting, "temperature": self.temperature},
            "attributes": {"history": self.history},
        }


class ChangeCaptionCollator:
    """Turns examples of a caption view into a training batch with the processor (pairs + target captions).

    Change masks are passed on (`change_masks=`) only when the processor's `__call__` takes that argument, so the
    same collator serves processors with and without change-mask support.
    """

    def __init__(self, processor):
        self.processor = processor
        self.passes_change_masks = "change_masks" in inspect.signature(processor.__call__).parameters

    def __call__(self, examples: list[dict]):
        pairs = [[example["before"], example["after"]] for example in examples]
        captions = [example["caption"] for example in examples]
        extra = {}
        if self.passes_change_masks:
            extra["change_masks"] = [example.get("change_mask") for example in examples]
        return self.processor(images=pairs, captions=captions, **extra)


def load_split(path_or_repo: str, split: str, max_samples: Optional[int] = None, cache_dir: Optional[str] = None):
    """One split of a change-captioning dataset; a missing split is an error naming the splits there are."""
    splits = load_change_dataset(path_or_repo, cache_dir=cache_dir)
    if split not in splits:
        raise ValueError(f"dataset {path_or_repo} has no split {split!r}; it has {sorted(splits)}")
    dataset = splits[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def load_model_and_processor(
    model_name_or_path: str, config_overrides: Optional[dict] = None, dtype: torch.dtype = torch.float32
) -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """Load the model to train and its processor from an rscc checkpoint or a LLaVA-OneVision one.

    The kind is read from the config's `model_type`. A LLaVA-OneVision checkpoint gets a new difference module
    (zero-initialised output scale, so training starts from the base model's outputs).

    Args:
        config_overrides: [`RsccConfig`] options; an option this rscc version does not know is an error.
        dtype: Weights dtype (float32, or the DeepSpeed mixed-precision dtype).
    """
    config_overrides = dict(config_overrides or {})
    unknown = sorted(set(config_overrides) - set(RsccConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"model_config_overrides: {unknown} are not RsccConfig options"
        )
    model_type = AutoConfig.from_pretrained(model_name_or_path).model_type
    if model_type == "rscc":
        model = RsccForConditionalGeneration.from_pretrained(model_name_or_path, dtype=dtype, **config_overrides)
        processor = RsccProcessor.from_pretrained(model_name_or_path)
    elif model_type == "llava_onevision":
        model = RsccForConditionalGeneration.from_llava_onevision(
            model_name_or_path, from_pretrained_kwargs={"dtype": dtype}, **config_overrides
        )
        processor = RsccProcessor.from_llava_onevision(model_name_or_path)
    else:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path} holds a '{model_type}' model; expected an rscc or a "
            "llava_onevision checkpoint"
        )
    return model, match_change_classes(model, processor)


def deepspeed_config_of(training_kwargs: dict) -> Optional[dict]:
    """The DeepSpeed config named by the training arguments (a path or a dict), or None."""
    config = training_kwargs.get("deepspeed")
    if config is None or isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed {config}: no such file")
    return json.loads(path.read_text())


def weights_dtype(training_kwargs: dict) -> torch.dtype:
    """DeepSpeed keeps fp32 master weights itself and runs the model in its mixed-precision dtype, so load in that
    dtype; without DeepSpeed the Trainer autocasts fp32 weights."""
    if deepspeed_config_of(training_kwargs) is None:
        return torch.float32
    if training_kwargs.get("bf16"):
        return torch.bfloat16
    return torch.float16 if training_kwargs.get("fp16") else torch.float32


# --------------------------------------------------------------------------------------------------------------------
# Validation by generation
# --------------------------------------------------------------------------------------------------------------------


class GenerationValidation:
    """Validation by generation: caption the validation split, score the captions, return the metrics.

    [`RsccTrainer`] calls it from its evaluation loop, so its metrics are logged as `eval_<metric>`, reach the
    callbacks, and can drive `metric_for_best_model` / `load_best_model_at_end`. (A `TrainerCallback` could not:
    `on_evaluate` runs after the Trainer has logged the metrics.) With several processes each captions a shard of
    equal length (the last pair repeated where needed, since ZeRO-3 needs every rank in every forward); predictions
    are gathered and de-duplicated by pair id before scoring on the main process.

    Args:
        processor: The model's processor.
        dataset: The validation split.
        scoring_function: `(predictions {id: caption}, references {id: [captions]}) -> report`; the report's numeric
            entries become metrics. Defaults to `rscc.metrics.evaluate_captions` with `convention`.
        convention: Scoring convention of the default scoring function.
        batch_size: Pairs per `generate` call.
        max_new_tokens: Caption length limit.
        predictions_dir: Where to write `validation-step<N>.jsonl` files, if anywhere.
        generate_kwargs: Passed to `generate` (e.g. `num_beams`).
    """

    def __init__(
        self,
        processor,
        dataset,
        scoring_function: Optional[ScoringFunction] = None,
        convention: str = "ccexpert",
        batch_size: int = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        predictions_dir=None,
        generate_kwargs: Optional[dict] = None,
    ):
        self.processor = processor
        self.dataset = dataset
        self.references = reference_captions(dataset)
        self.scoring_function = scoring_function or default_scoring_function(convention)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.predictions_dir = None if predictions_dir is None else Path(predictions_dir)
        self.generate_kwargs = dict(generate_kwargs or {})

    def _shard(self, index: int, count: int):
        indices = list(range(index, len(self.dataset), count))
        length = math.ceil(len(self.dataset) / count)
        indices += [len(self.dataset) - 1] * (length - len(indices))
        return self.dataset.select(indices)

    def __call__(self, model, accelerator, step: int) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list, gather_object

        shard = self._shard(accelerator.process_index, accelerator.num_processes)
        local = generate_predictions(
            model,
            self.processor,
            shard,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            progress=accelerator.is_local_main_process,
            **self.generate_kwargs,
        )
        gathered = gather_object([local]) if accelerator.num_processes > 1 else [local]
        merged = {}
        for predictions in gathered:
            merged.update(predictions)
        predictions = {identifier: merged[identifier] for identifier in self.references}
        metrics = [None]
        if accelerator.is_main_process:
            if self.predictions_dir is not None:
                write_predictions(predictions, self.predictions_dir / f"validation-step{step}.jsonl")
            metrics[0] = numeric_metrics(self.scoring_function(predictions, self.references))
        if accelerator.num_processes > 1:
            broadcast_object_list(metrics, from_process=0)
        return metrics[0]


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


class RsccTrainer(Trainer):
    """The Trainer with stage-aware optimizer groups, loss-term / per-part learning-rate / throughput logging,
    validation by generation, LoRA checkpoints that keep the other trained parts, and the loss weightings that need
    more than one batch ([`TaskLossWeighting`], a callback whose history is kept in checkpoints).

    Args:
        stage: The [`StageSpec`] being trained (learning-rate multipliers and objective).
        generation_validation: A [`GenerationValidation`] run at each evaluation, or None for the Trainer's
            loss-only evaluation.
        validation_loss: With `generation_validation`, also compute the loss on the evaluation dataset.
        *args, **kwargs: As for `Trainer`.
    """

    def __init__(
        self,
        *args,
        stage: StageSpec,
        generation_validation: Optional[GenerationValidation] = None,
        validation_loss: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.generation_validation = generation_validation
        self.validation_loss = validation_loss
        if stage.objective == "change":
            # The change loss is a per-batch mean, not normalised over the accumulated batch's tokens.
            self.loss_is_scaled_for_ga = False
        # Per-process sums since the last log, on the loss's device so recording never waits for the device:
        # [samples, caption_loss sum, present, change_loss sum, present]. Started at the first micro-batch of a
        # (resumed) run.
        self._interval = None
        self._interval_start = None
        self._interval_step = None
        self._step_learning_rates: dict[str, float] = {}
        config = self.model.config
        if getattr(config, "change_loss_weighting", "fixed") != "fixed":
            self.add_callback(TaskLossWeighting(config.change_loss_weighting, config.change_loss_dwa_temperature))

    # ---- optimizer --------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = optimizer_parameter_groups(
                opt_model,
                self.stage,
                self.args.learning_rate,
                self.args.weight_decay,
                set(self.get_decay_parameter_names(opt_model)),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if self._offloads_optimizer():
                # ZeRO-Offload steps the optimizer on the CPU: DeepSpeed's CPU Adam does that fast, and DeepSpeed
                # refuses a torch optimizer there.
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer_cls = DeepSpeedCPUAdam
                optimizer_kwargs = {
                    "lr": self.args.learning_rate,
                    "betas": (self.args.adam_beta1, self.args.adam_beta2),
                    "eps": self.args.adam_epsilon,
                    "adamw_mode": True,
                }
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _offloads_optimizer(self) -> bool:
        if not self.is_deepspeed_enabled:
            return False
        zero = self.accelerator.state.deepspeed_plugin.hf_ds_config.config.get("zero_optimization", {})
        return (zero.get("offload_optimizer") or {}).get("device", "none") == "cpu"

    # ---- loss and logs ----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and inputs.get("labels") is not None:
            # Training needs no logits over the image positions: the LM head runs on the caption window only.
            inputs = {**inputs, "labelled_logits_only": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        terms = {name: outputs.get(name) for name in LOSS_TERMS} if isinstance(outputs, Mapping) else {}
        # Looked up each time: restoring callback states from a checkpoint replaces the callback object.
        weighting = next((c for c in self.callback_handler.callbacks if isinstance(c, TaskLossWeighting)), None)
        if weighting is not None and None not in terms.values():
            # The Trainer may have scaled the model's loss (tokens averaged across processes); the weighted loss
            # takes the same scale.
            scale = loss.detach() / outputs["loss"].detach().clamp_min(torch.finfo(torch.float32).tiny)
            loss = scale * weighting.combine(terms["caption_loss"], terms["change_loss"], training=model.training)
        if self.stage.objective == "change":
            if terms.get("change_loss") is None:
                raise ValueError(
                    f"stage {self.stage.name!r} trains on the change loss alone, but the model returned no "
                    "change_loss; it needs a change head (use_change_head) and change masks in the dataset"
                )
            loss = terms["change_loss"]
        if model.training:
            self._record_interval(inputs, terms, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _record_interval(self, inputs, terms: dict, num_items_in_batch) -> None:
        device = inputs["input_ids"].device
        if self._interval is None or self._interval_step is None:
            self._interval = torch.zeros(1 + 2 * len(LOSS_TERMS), dtype=torch.float32, device=device)
            self._interval_start, self._interval_step = time.perf_counter(), self.state.global_step
        # The rates this optimizer step uses (the scheduler moves them after the step, before the Trainer logs).
        self._step_learning_rates = {}
        for group in self.optimizer.param_groups:
            if group.get("part") is not None:
                self._step_learning_rates.setdefault(group["part"], group["lr"])
        # Loss terms are accumulated as the Trainer accumulates `loss`: a term normalised over the whole accumulated
        # batch adds up over its micro-batches, a per-batch mean is divided by the accumulation steps first.
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        divisor = 1.0 if scaled else float(self.current_gradient_accumulation_steps)
        self._interval[0] += inputs["input_ids"].shape[0]
        for index, name in enumerate(LOSS_TERMS):
            value = terms.get(name)
            if value is not None:
                self._interval[1 + 2 * index] += value.detach().float().to(device) / divisor
                self._interval[2 + 2 * index] += 1.0 / divisor

    def train(self, *args, **kwargs):
        self._interval_step = None
        return super().train(*args, **kwargs)

    def log(self, logs: dict, start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._interval is not None:
            logs.update(self._interval_logs())
        super().log(logs, start_time)

    def _interval_logs(self) -> dict:
        totals = self._interval
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        totals = totals.cpu()
        steps = max(self.state.global_step - self._interval_step, 1)
        now = time.perf_counter()
        logs = {"samples_per_second": round(totals[0].item() / max(now - self._interval_start, 1e-9), 3)}
        for index, name in enumerate(LOSS_TERMS):
            if totals[2 + 2 * index] > 0:
                # Sum over the interval's micro-batches, averaged over processes and optimizer steps.
                logs[name] = totals[1 + 2 * index].item() / self.accelerator.num_processes / steps
        logs.update({f"learning_rate/{part}": rate for part, rate in self._step_learning_rates.items()})
        logs["peak_memory_mb"] = peak_memory_mb(self.args.device)
        self._interval.zero_()
        self._interval_start, self._interval_step = now, self.state.global_step
        return logs

    # ---- validation -------------------------------------------------------------------------------------------
    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        if self.generation_validation is None or description != "Evaluation":
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        metrics = {}
        if self.validation_loss:
            metrics.update(
                super().evaluation_loop(dataloader, description, True, ignore_keys, metric_key_prefix).metrics
            )
        scores = self.generation_validation(self.model, self.accelerator, self.state.global_step)
        metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return EvalLoopOutput(
            predictions=None, label_ids=None, metrics=metrics, num_samples=len(self.generation_validation.dataset)
        )

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if not _is_peft(self.model) or not self.args.should_save:
            return
        # peft saves only the adapters; the other parts this stage trains go next to them.
        names = [n for n, p in self.model.named_parameters() if p.requires_grad and part_of(n) != LORA_PART]
        if names:
            source = self.model.state_dict() if state_dict is None else state_dict
            tensors = {name: source[name].detach().cpu().contiguous() for name in names}
            save_file(tensors, os.path.join(output_dir or self.args.output_dir, TRAINED_PARTS_FILE), {"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if _is_peft(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_trained_parts(model, resume_from_checkpoint)
        else:
            load_saved_weights(model, resume_from_checkpoint)

    def _load_best_model(self):
        if self.is_deepspeed_enabled or _is_peft(self.model):
            # DeepSpeed reloads its own engine checkpoint; peft reloads the adapter.
            super()._load_best_model()
            if _is_peft(self.model):
                load_trained_parts(self.model, self.state.best_model_checkpoint)
        else:
            logger.info(f"Loading the best model from {self.state.best_model_checkpoint} ({self.state.best_metric})")
            load_saved_weights(self.model, self.state.best_model_checkpoint)


def load_saved_weights(model: torch.nn.Module, folder) -> None:
    """Load the weights of a checkpoint folder written by `save_pretrained` into `model`, in place.

    rscc checkpoints are written in LLaVA-OneVision's Hub key layout and renamed on load by `from_pretrained`; the
    Trainer's own reload reads raw keys, which match no parameter (it would silently keep the current weights).
    """
    saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size (RSS) on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "rscc checkpoint (a previous stage's output) or LLaVA-OneVision checkpoint: folder or Hub id"}
    )
    model_config_overrides: Optional[str] = field(
        default=None,
        metadata={
            "help": "RsccConfig options as a JSON object (a mapping in YAML), e.g. '{\"difference_num_blocks\": 2}'"
        },
    )

    compile_layers: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each transformer layer (vision, difference module, language model): fused "
            "element-wise work and fewer kernel launches; the first steps pay the compilation. Not with ZeRO-3"
        },
    )

    activation_memory_budget: Optional[float] = field(
        default=None,
        metadata={
            "help": "with --compile_layers, instead of --activation_checkpointing: fraction (0-1) of each layer's "
            "saved activations to keep; the compiler recomputes the rest, element-wise work first, so most of the "
            "memory is saved for a few percent more compute (README, training speed)"
        },
    )

    def __post_init__(self):
        if isinstance(self.model_config_overrides, str):
            self.model_config_overrides = json.loads(self.model_config_overrides)
        if self.model_config_overrides is not None and not isinstance(self.model_config_overrides, dict):
            raise ValueError(f"model_config_overrides must be a mapping, got {self.model_config_overrides!r}")
        if self.activation_memory_budget is not None:
            if not self.compile_layers:
                raise ValueError("--activation_memory_budget applies to compiled layers; add --compile_layers true")
            checked_memory_budget(self.activation_memory_budget)


@dataclass
class DataArguments:
    dataset_name_or_path: str = field(
        metadata={"help": "dataset in rscc's format: folder built by `rscc data`, or Hub id"}
    )
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    validation_split: str = field(
        default="validation", metadata={"help": "split for validation by generation (when --eval_strategy is set)"}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N training pairs"})
    max_validation_samples: Optional[int] = field(default=None, metadata={"help": "validate on the first N pairs"})
    no_change_caption: Optional[str] = field(
        default=None, metadata={"help": "target of every no-change pair (Change-Agent trains with one such sentence)"}
    )
    dataset_cache_dir: Optional[str] = field(default=None, metadata={"help": "`datasets` cache folder"})


@dataclass
class StageArguments:
    stage: str = field(default="stage1", metadata={"help": f"stage of rscc.training.STAGES: {', '.join(STAGES)}"})
    trainable_parts: Optional[list[str]] = field(
        default=None, metadata={"help": f"override the stage's trained parts, from {', '.join(ALL_PARTS)}"}
    )
    optional_parts: Optional[list[str]] = field(
        default=None, metadata={"help": "override the parts trained only when the model has them"}
    )
    lr_scales: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "override the learning-rate multipliers, as PART=SCALE (a mapping in YAML), e.g. vision_tower=0.2"
        },
    )
    caption_mode: Optional[str] = field(default=None, metadata={"help": "override: flatten or random_choice"})
    objective: Optional[str] = field(default=None, metadata={"help": "override: combined or change"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains without adapters"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_parts: list[str] = field(
        default_factory=lambda: ["language_model"], metadata={"help": "parts whose blocks get adapters"}
    )
    lora_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "linear layers adapted in each block (default: all of a block's)"}
    )
    lora_last_layers: Optional[int] = field(default=None, metadata={"help": "adapt only the last N blocks"})

    def __post_init__(self):
        if isinstance(self.lr_scales, (list, tuple)):
            scales = {}
            for entry in self.lr_scales:
                part, separator, value = str(entry).partition("=")
                if not separator:
                    raise ValueError(f"lr_scales entry {entry!r}: expected PART=SCALE, e.g. vision_tower=0.2")
                scales[part.strip()] = float(value)
            self.lr_scales = scales
        elif isinstance(self.lr_scales, Mapping):
            self.lr_scales = {part: float(scale) for part, scale in self.lr_scales.items()}

    def resolve(self) -> StageSpec:
        return resolve_stage(
            self.stage,
            trainable_parts=self.trainable_parts,
            optional_parts=self.optional_parts,
            lr_scales=self.lr_scales,
            caption_mode=self.caption_mode,
            objective=self.objective,
        )


@dataclass
class ValidationArguments:
    validation_max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "caption length limit"})
    validation_num_beams: int = field(default=1, metadata={"help": "beams for validation captions (1: greedy)"})
    validation_convention: str = field(default="ccexpert", metadata={"help": "caption scoring convention"})
    validation_scoring_function: Optional[str] = field(
        default=None,
        metadata={
            "help": "MODULE:FUNCTION scoring (predictions, references) -> {metric: value}, instead of "
            "rscc.metrics.evaluate_captions"
        },
    )
    validation_loss: bool = field(default=False, metadata={"help": "also compute the loss on the validation split"})
    save_validation_predictions: bool = field(
        default=True, metadata={"help": "write each validation's captions to OUTPUT_DIR/predictions/*.jsonl"}
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, StageArguments, ValidationArguments, TrainingArguments)


@dataclass
class StageRunArguments:
    """Parsed arguments of one stage run; `training` holds `TrainingArguments` keyword arguments (see module doc)."""

    model: ModelArguments
    data: DataArguments
    stage: StageArguments
    validation: ValidationArguments
    training: dict


def _config_defaults(parser: HfArgumentParser, path: str) -> dict:
    """Read a recipe YAML file into parser defaults, converting strings to each option's type."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(values).__name__}")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(key for key in values if key not in actions or key == "config")
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {unknown}")
    for key, value in values.items():
        converter = actions[key].type
        # YAML reads `1e-5` as a string; argparse converts command-line strings, so do the same here.
        if isinstance(value, str) and callable(converter) and converter is not str:
            values[key] = converter(value)
    return values


def parse_arguments(stage: str, argv: Optional[list[str]] = None) -> StageRunArguments:
    """Parse a stage script's command line (and its `--config` YAML recipe; the command line wins).

    Args:
        stage: Default `--stage` of the calling script.
        argv: Arguments; defaults to `sys.argv[1:]`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", help="YAML recipe of option: value pairs; command-line options override it")
    parser.set_defaults(stage=stage)
    config_path = argparse.ArgumentParser(add_help=False)
    config_path.add_argument("--config")
    known, _ = config_path.parse_known_args(argv)
    if known.config:
        values = _config_defaults(parser, known.config)
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    namespace = parser.parse_args(argv)

    def build(cls):
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})

    training = {}
    for training_field in dataclasses.fields(TrainingArguments):
        if not training_field.init:
            continue
        value = getattr(namespace, training_field.name)
        default = (
            training_field.default_factory()
            if training_field.default_factory is not dataclasses.MISSING
            else training_field.default
        )
        if value != default:
            training[training_field.name] = value
    return StageRunArguments(
        build(ModelArguments), build(DataArguments), build(StageArguments), build(ValidationArguments), training
    )


# --------------------------------------------------------------------------------------------------------------------
# One stage, end to end
# --------------------------------------------------------------------------------------------------------------------


def import_scoring_function(spec: str) -> ScoringFunction:
    """The function named by `MODULE:FUNCTION` (e.g. `my_metrics:score`)."""
    module_name, separator, function_name = spec.partition(":")
    if not separator or not module_name or not function_name:
        raise ValueError(f"--validation_scoring_function {spec!r}: expected MODULE:FUNCTION")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ValueError(f"--validation_scoring_function {spec!r}: {module_name} has no function {function_name}")
    return function


def _configure_cpu_deepspeed_processes(training_kwargs: dict) -> None:
    """Let several CPU processes run DeepSpeed (the CPU tests; GPU launches never get here).

    accelerate 1.15 gives a CPU-only DeepSpeed launch no process-group backend, so every rank takes itself for the
    only one (world size 1, wrong DeepSpeed batch sizes) while DeepSpeed sees them all. Setting up the process state
    with gloo first, and letting `TrainingArguments` reuse it, gives every rank the true world size.
    """
    if (
        training_kwargs.get("deepspeed") is None
        or torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true"
        or int(os.environ.get("WORLD_SIZE", "1")) < 2
    ):
        return
    from accelerate import PartialState

    PartialState(backend="gloo")
    config = training_kwargs.get("accelerator_config") or {}
    if isinstance(config, str):
        config = json.loads(Path(config).read_text())
    training_kwargs["accelerator_config"] = {**config, "use_configured_state": True}


def _resume_path(value: Optional[str], output_dir: str) -> Optional[str]:
    if value is None:
        return None
    if value.lower() in ("last", "latest", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder")
    return value


def run_stage(
    arguments: StageRunArguments,
    scoring_function: Optional[ScoringFunction] = None,
    callbacks: Optional[list] = None,
) -> RsccTrainer:
    """Train one stage: load the model, set what trains, train (validating by generation), save the output folder.

    The output folder is a complete rscc checkpoint (model safetensors, config, processor) plus `rscc_stage.json`
    (the stage, what trained, the inputs); a LoRA run also keeps its adapter (peft format, safetensors) and any
    other trained weights under `adapter/`, and saves the merged model as the checkpoint.

    Args:
        arguments: From [`parse_arguments`].
        scoring_function: Validation scorer; defaults to `--validation_scoring_function`, else
            `rscc.metrics.evaluate_captions`.
        callbacks: Extra `TrainerCallback`s.

    Returns:
        The trainer after training.
    """
    stage = arguments.stage.resolve()
    stage_args, data_args, validation_args = arguments.stage, arguments.data, arguments.validation
    training_kwargs = dict(arguments.training)
    use_lora = stage_args.lora_r > 0
    if use_lora and stage.objective == "change":
        raise ValueError("LoRA adapts the caption path; a change-loss-only stage takes no adapters")
    if LORA_PART in (*stage.trainable_parts, *stage.optional_parts) and not use_lora:
        raise ValueError(f"stage {stage.name!r} trains {LORA_PART} but --lora_r is 0; set a LoRA rank")
    doubly_trained = sorted(set(stage_args.lora_parts) & set(stage.trainable_parts)) if use_lora else []
    if doubly_trained:
        raise ValueError(f"LoRA adapts {doubly_trained}, which the stage also trains in full; drop them from "
                         "trainable_parts (train the adapters) or from lora_parts (train the weights)")
    ds_config = deepspeed_config_of(training_kwargs)
    uses_zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    if use_lora and uses_zero3:
        raise ValueError("LoRA runs use ZeRO-2 (train/deepspeed/zero2.json): merging adapters into ZeRO-3-partitioned "
                         "weights is not supported")
    if arguments.model.compile_layers and uses_zero3:
        raise ValueError("--compile_layers does not work under ZeRO-3, whose hooks gather each layer's partitioned "
                         "weights; use ZeRO-2 (train/deepspeed/zero2.json) or leave it off")
    if arguments.model.activation_memory_budget is not None and (
        training_kwargs.get("activation_checkpointing") or training_kwargs.get("gradient_checkpointing")
    ):
        raise ValueError("--activation_memory_budget replaces --activation_checkpointing, which would recompute each "
                         "checkpointed layer whole as well; set one of them")

    # Model first: under ZeRO-3, TrainingArguments switches DeepSpeed's partitioned initialisation on. Seeded, so the
    # modules a LLaVA-OneVision checkpoint lacks start the same in every run (the Trainer seeds only later).
    set_seed(training_kwargs.get("seed", TrainingArguments.seed))
    model, processor = load_model_and_processor(
        arguments.model.model_name_or_path, arguments.model.model_config_overrides, weights_dtype(training_kwargs)
    )
    if use_lora:
        if LORA_PART not in stage.trainable_parts:
            stage = dataclasses.replace(stage, trainable_parts=(*stage.trainable_parts, LORA_PART))
        model = apply_lora(
            model,
            r=stage_args.lora_r,
            alpha=stage_args.lora_alpha,
            dropout=stage_args.lora_dropout,
            parts=stage_args.lora_parts,
            modules=stage_args.lora_modules,
            last_layers=stage_args.lora_last_layers,
        )
    report = configure_trainable(model, stage)
    if arguments.model.compile_layers:
        compile_layers(model, arguments.model.activation_memory_budget)
    if int(os.environ.get("RANK", "0")) == 0:  # what trains, once per run rather than once per process
        logger.warning(str(report))

    evaluates = str(training_kwargs.get("eval_strategy", "no")) != "no"
    if evaluates:
        training_kwargs.setdefault("metric_for_best_model", "S_m")
    # The caption view's own columns are an index; the collator needs the pair columns it returns.
    training_kwargs["remove_unused_columns"] = False
    _configure_cpu_deepspeed_processes(training_kwargs)
    training_args = TrainingArguments(**training_kwargs)
    resume = _resume_path(training_args.resume_from_checkpoint, training_args.output_dir)

    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_pairs = load_split(
        data_args.dataset_name_or_path, data_args.train_split, data_args.max_train_samples, data_args.dataset_cache_dir
    )
    train_dataset = EpochCaptionDataset(train_pairs, stage.caption_mode, seed, data_args.no_change_caption)
    eval_dataset, validation = None, None
    if evaluates:
        validation_pairs = load_split(
            data_args.dataset_name_or_path,
            data_args.validation_split,
            data_args.max_validation_samples,
            data_args.dataset_cache_dir,
        )
        eval_dataset = EpochCaptionDataset(validation_pairs, "random_choice", seed, data_args.no_change_caption)
        if scoring_function is None and validation_args.validation_scoring_function:
            scoring_function = import_scoring_function(validation_args.validation_scoring_function)
        validation = GenerationValidation(
            processor,
            validation_pairs,
            scoring_function=scoring_function,
            convention=validation_args.validation_convention,
            batch_size=training_args.per_device_eval_batch_size,
            max_new_tokens=validation_args.validation_max_new_tokens,
            predictions_dir=(
                Path(training_args.output_dir) / "predictions" if validation_args.save_validation_predictions else None
            ),
            generate_kwargs={"num_beams": validation_args.validation_num_beams},
        )

    trainer = RsccTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ChangeCaptionCollator(processor),
        processing_class=processor,
        callbacks=[CaptionRedrawCallback(train_dataset), *(callbacks or [])],
        stage=stage,
        generation_validation=validation,
        validation_loss=validation_args.validation_loss,
    )
    trainer.train(resume_from_checkpoint=resume)
    save_stage_output(trainer, processor, arguments, stage, report)
    return trainer


def save_stage_output(trainer: RsccTrainer, processor, arguments: StageRunArguments, stage, report) -> Path:
    """Write the stage's output folder: a complete rscc checkpoint, the stage record, and LoRA adapters if any."""
    output_dir = Path(trainer.args.output_dir)
    if _is_peft(trainer.model):
        trainer.save_model(str(output_dir / ADAPTER_FOLDER))
        if trainer.args.should_save:
            merged = merge_lora(trainer.accelerator.unwrap_model(trainer.model))
            merged.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(str(output_dir))
    if trainer.args.should_save:
        record = {
            "stage": stage.to_dict(),
            "trainable": report.to_dict(),
            "model_name_or_path": arguments.model.model_name_or_path,
            "model_config_overrides": arguments.model.model_config_overrides,
            "dataset_name_or_path": arguments.data.dataset_name_or_path,
            "train_split": arguments.data.train_split,
            "lora": dataclasses.asdict(arguments.stage) if arguments.stage.lora_r else None,
            "global_step": trainer.state.global_step,
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
            "best_metric": trainer.state.best_metric,
        }
        (output_dir / STAGE_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return output_dir


def main(stage: str, argv: Optional[list[str]] = None) -> RsccTrainer:
    """Entry point of `train/stage{1,2,3}.py`: parse the command line (and `--config`), run the stage."""
    return run_stage(parse_arguments(stage, argv))


__all__ = [
    "PARTS",
    "LORA_PART",
    "STAGES",
    "StageSpec",
    "resolve_stage",
    "part_of",
    "configure_trainable",
    "TrainableReport",
    "optimizer_parameter_groups",
    "lora_target_pattern",
    "apply_lora",
    "merge_lora",
    "compile_layers",
    "load_trained_parts",
    "load_saved_weights",
    "EpochCaptionDataset",
    "CaptionRedrawCallback",
    "TaskLossWeighting",
    "ChangeCaptionCollator",
    "load_split",
    "load_model_and_processor",
    "GenerationValidation",
    "RsccTrainer",
    "ModelArguments",
    "DataArguments",
    "StageArguments",
    "ValidationArguments",
    "StageRunArguments",
    "parse_arguments",
    "import_scoring_function",
    "run_stage",
    "save_stage_output",
    "main",
]
