"""Parts and stages: which parameters train, at which learning-rate multiplier, on which captions and loss.

Every parameter of an rscc model belongs to exactly one part (`PARTS`, by parameter-name prefix); a stage
(`StageSpec`, CCExpert's three in `STAGES`) says which parts train and how.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Every parameter of an rscc model belongs to exactly one part, found by the prefix of its name. `image_newline`
# trains with the language model, as in LLaVA-OneVision's own training code. `change_head` is the change-detection
# head of the change-mask work; a model without it simply has no parameter there. `difference_module` is the
# change-feature module, whichever `change_features` names, with the projector of the change tokens;
# `bitemporal_filter` holds the filters inside the vision tower (Semantic-CC's BCSF), apart from the tower so that they
# train while LoRA adapts the tower. Under `pair_encoding="video_encoder"` the video encoder stands where the vision
# tower was, and its projector is a projector.
PARTS: dict[str, tuple[str, ...]] = {
    "vision_tower": ("model.vision_tower.",),
    "video_encoder": ("model.video_encoder.backbone.",),
    "projector": ("model.multi_modal_projector.", "model.video_encoder.projector."),
    "difference_module": ("model.difference_module.", "model.key_change_perceiver.", "model.change_projector."),
    "change_head": ("model.change_head.",),
    "bitemporal_filter": ("model.bitemporal_filter.",),
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
        optional_parts=("change_head", "bitemporal_filter"),
        caption_mode="flatten",
    ),
    "stage2": StageSpec(
        "stage2",
        "CCExpert stage 2: everything trains, vision tower at 0.2x learning rate",
        trainable_parts=_EVERYTHING,
        optional_parts=("difference_module", "change_head", "bitemporal_filter"),
        lr_scales={"vision_tower": 0.2},
        caption_mode="flatten",
    ),
    "stage3": StageSpec(
        "stage3",
        "CCExpert stage 3: domain fine-tuning, everything trains (vision 0.2x), one random caption per pair per epoch",
        trainable_parts=_EVERYTHING,
        optional_parts=("difference_module", "change_head", "bitemporal_filter"),
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
