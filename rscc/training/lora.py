"""LoRA through peft on the transformer blocks of chosen parts, and the other trained parts kept beside an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file
from transformers.utils import logging

from ..configuration_rscc import RsccConfig
from ..modeling_rscc import RsccForConditionalGeneration
from .stages import TRAINED_PARTS_FILE

logger = logging.get_logger(__name__)

# Where LoRA can go: the transformer blocks of a part, and the linear layers in each block adapted by default.
LORA_BLOCKS: dict[str, tuple[str, str, Callable[[RsccConfig], tuple[str, ...]]]] = {
    # part: (blocks' name prefix, config holding num_hidden_layers, the config's default module names)
    "language_model": (
        "model.language_model.layers",
        "text_config",
        lambda config: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "vision_tower": (
        "model.vision_tower.encoder.layers",
        "vision_config",
        lambda config: ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    ),
    # The video encoder of `pair_encoding="video_encoder"`: its blocks' linear layers depend on its model type
    # (`VideoEncoderFamily.block_linear_layers`).
    "video_encoder": (
        "model.video_encoder.backbone.encoder.layer",
        "video_encoder_config",
        lambda config: config.video_encoder_family.block_linear_layers,
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
        parts: Parts to adapt, from `LORA_BLOCKS` (`language_model`, `vision_tower`, `video_encoder`).
        modules: Linear-layer names within a block; defaults to all of a block's linear layers.
        last_layers: Adapt only the last N blocks (MV-CC: the last vision block); all blocks when None.
    """
    alternatives = []
    for part in parts:
        if part not in LORA_BLOCKS:
            raise ValueError(f"LoRA part {part!r}: LoRA can adapt {sorted(LORA_BLOCKS)}")
        prefix, sub_config, default_modules = LORA_BLOCKS[part]
        blocks_config = getattr(config, sub_config)
        if blocks_config is None:
            raise ValueError(f"LoRA part {part!r}: the model has no {sub_config}")
        if isinstance(blocks_config, dict):  # `video_encoder_config` is kept as a dict
            num_layers = blocks_config["num_hidden_layers"]
        else:
            num_layers = blocks_config.num_hidden_layers
        if last_layers is not None and not 1 <= last_layers <= num_layers:
            raise ValueError(f"lora_last_layers={last_layers}: the {part} has {num_layers} blocks")
        first = 0 if last_layers is None else num_layers - last_layers
        layers = "|".join(str(index) for index in range(first, num_layers))
        names = "|".join(modules or default_modules(config))
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
