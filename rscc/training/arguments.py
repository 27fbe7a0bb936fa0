"""Arguments of a training stage (dataclasses for `HfArgumentParser`) and their parsing from the command line and
a YAML recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

from ..captioning import DEFAULT_MAX_NEW_TOKENS
from .memory import checked_memory_budget
from .stages import ALL_PARTS, STAGES, StageSpec, resolve_stage

logger = logging.get_logger(__name__)


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
        default=None,
        metadata={
            "help": "target of every no-change pair (Change-Agent trains with one such sentence); also saved as the "
            "model's no_change_caption, the caption of its no-change shortcut"
        },
    )
    dataset_cache_dir: Optional[str] = field(default=None, metadata={"help": "`datasets` cache folder"})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read the training split as a stream of its Parquet shards (mixtures larger than memory); needs "
            "--max_steps. random_choice draws each pair's caption from (seed, pair id) for the whole run"
        },
    )


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


def recipe_arguments(path: str) -> list[str]:
    """A YAML recipe as command-line arguments, which `parse_arguments` puts before the real ones, so that one
    `HfArgumentParser` parse converts both and the command line wins (as an `args_file_flag` file would)."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    if values is None:
        return []
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(values).__name__}")
    field_types = {name: kind for cls in ARGUMENT_CLASSES for name, kind in typing.get_type_hints(cls).items()}
    unknown = sorted(key for key in values if key not in field_types)
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {unknown}")
    arguments = []
    for key, value in values.items():
        kind = field_types[key]
        takes_list = list in (typing.get_origin(kind), *map(typing.get_origin, typing.get_args(kind)))
        if value is None or value == [] or value == {}:
            raise ValueError(f"--config {path}: {key} is empty; leave it out to keep the default")
        if isinstance(value, Mapping):
            # A list option reads PART=SCALE entries; any other takes the mapping as JSON.
            words = [f"{name}={entry}" for name, entry in value.items()] if takes_list else [json.dumps(value)]
        elif isinstance(value, list):
            words = [str(entry) for entry in value]
        else:
            words = [str(value).lower() if isinstance(value, bool) else str(value)]
        arguments += [f"--{key}", *words]
    return arguments


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
    recipe = config_path.parse_known_args(argv)[0].config
    argv = (recipe_arguments(recipe) if recipe else []) + argv
    namespace = parser.parse_args(argv)
    if namespace.stage != stage:
        logger.warning(f"training {namespace.stage}, as --config / --stage say, not {stage} (the script's stage)")

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
