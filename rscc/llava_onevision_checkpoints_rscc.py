"""rscc models and LLaVA-OneVision checkpoints: the parameter-name renaming they share, and building an rscc model from
a LLaVA-OneVision checkpoint (its weights loaded, rscc's new modules initialised). Like the other remote-code files it
imports only the standard library, torch, transformers and its siblings.
"""

import os

from transformers import AutoConfig, AutoModel, LlavaOnevisionConfig, LlavaOnevisionModel, PreTrainedConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.utils import logging

from .configuration_rscc import VIDEO_ENCODER_FAMILIES, RsccConfig

logger = logging.get_logger(__name__)

# Hub checkpoints of LLaVA-OneVision use the legacy key layout (`language_model.model.*`); rscc checkpoints are
# read and written through the same renaming as stock's, by model type (the captioning model) and by class (the
# model without the language-model head), so both load into, and save as, the stock parameter names.
for rscc_name, stock_name in (
    (RsccConfig.model_type, LlavaOnevisionConfig.model_type),
    ("RsccModel", LlavaOnevisionModel.__name__),
):
    if get_checkpoint_conversion_mapping(rscc_name) is None and get_checkpoint_conversion_mapping(stock_name):
        register_checkpoint_conversion_mapping(rscc_name, get_checkpoint_conversion_mapping(stock_name))

# Submodules that a LLaVA-OneVision checkpoint does not have.
NEW_MODULE_PREFIXES = (
    "model.difference_module.",
    "model.change_head.",
    "model.key_change_perceiver.",
    "model.change_projector.",
    "model.bitemporal_filter.",
    "model.video_encoder.",
)
# Submodules of a LLaVA-OneVision checkpoint that `pair_encoding="video_encoder"` replaces.
REPLACED_BY_VIDEO_ENCODER = ("model.vision_tower.", "model.multi_modal_projector.")
HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")


def rscc_config_from_llava_onevision(
    pretrained_model_name_or_path: str, video_encoder, hub_kwargs: dict, config_overrides: dict
) -> RsccConfig:
    """The [`RsccConfig`] of a LLaVA-OneVision checkpoint's config with `config_overrides` (and, under
    `pair_encoding="video_encoder"`, `video_encoder`'s config; see
    [`RsccForConditionalGeneration.from_llava_onevision`])."""
    base_config = LlavaOnevisionConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
    if base_config.model_type != LlavaOnevisionConfig.model_type:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds a '{base_config.model_type}' model, not 'llava_onevision'; "
            "load rscc checkpoints with RsccForConditionalGeneration.from_pretrained"
        )
    unknown = sorted(set(config_overrides) - set(RsccConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown RsccConfig option(s) {unknown}")
    if video_encoder is not None:
        if config_overrides.get("pair_encoding") != "video_encoder":
            raise ValueError("video_encoder is only read with pair_encoding='video_encoder'")
        config_overrides["video_encoder_config"] = _video_encoder_options(video_encoder, hub_kwargs)
    base_options = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        base_options.pop(key, None)
    return RsccConfig(**{**base_options, **config_overrides})


def _video_encoder_options(video_encoder, hub_kwargs: dict) -> dict:
    """The `video_encoder_config` of a Hub id or folder (its frames per clip set to 2, a pair), a config or a dict."""
    if isinstance(video_encoder, dict):
        return dict(video_encoder)
    if isinstance(video_encoder, PreTrainedConfig):
        return video_encoder.to_dict()
    options = AutoConfig.from_pretrained(video_encoder, **hub_kwargs).to_dict()
    # A pair is two frames. Neither family keeps positions in its weights (VideoMAE's table is sinusoidal and
    # recomputed, V-JEPA 2's rotary positions follow the token index), so an encoder pretrained on 16- or 64-frame
    # clips takes 2-frame ones.
    family = VIDEO_ENCODER_FAMILIES.get(options.get("model_type"))
    if family is not None:  # RsccConfig refuses other model types with the supported ones named
        options[family.num_frames_field] = 2
    return options


def load_pretrained_video_encoder(model, video_encoder, hub_kwargs: dict, loading_info: dict) -> None:
    """Load a Hub id's or folder's video encoder weights into `model`'s encoder, and take them off the missing keys."""
    if not isinstance(video_encoder, (str, os.PathLike)):
        return
    pretrained = AutoModel.from_pretrained(video_encoder, **hub_kwargs)
    loaded = {
        f"model.video_encoder.backbone.{name}"
        for name in model.model.video_encoder.load_pretrained_backbone(pretrained)
    }
    loading_info["missing_keys"] = set(loading_info["missing_keys"]) - loaded


def new_parameters_report(model, pretrained_model_name_or_path: str, loading_info: dict) -> dict:
    """Check that only rscc's new modules were missing from the checkpoint, and report them.

    Returns:
        `dict` with `new_parameters` (names), `num_new_parameters` and `num_loaded_parameters`.
    """
    config = model.config
    new_names = sorted(loading_info["missing_keys"])
    stray = [name for name in new_names if not name.startswith(NEW_MODULE_PREFIXES)]
    replaced = REPLACED_BY_VIDEO_ENCODER if config.pair_encoding == "video_encoder" else ()
    problems = {
        "missing base weights": stray,
        "unexpected weights": sorted(
            name for name in loading_info["unexpected_keys"] if not replaced or not name.startswith(replaced)
        ),
        "weights of another shape": [str(entry) for entry in loading_info["mismatched_keys"]],
    }
    problems = {kind: names for kind, names in problems.items() if names}
    if problems:
        raise ValueError(f"{pretrained_model_name_or_path} does not match the rscc architecture: {problems}")
    parameters = dict(model.named_parameters())
    num_new = sum(parameters[name].numel() for name in new_names if name in parameters)
    report = {
        "new_parameters": new_names,
        "num_new_parameters": num_new,
        "num_loaded_parameters": sum(p.numel() for p in parameters.values()) - num_new,
    }
    logger.warning(
        f"Loaded LLaVA-OneVision weights from {pretrained_model_name_or_path} "
        f"({report['num_loaded_parameters'] / 1e6:.1f}M parameters). Newly initialised: {len(new_names)} tensors, "
        f"{num_new / 1e6:.1f}M parameters, all under {', '.join(p.rstrip('.') for p in NEW_MODULE_PREFIXES)} "
        "(the difference module's and the bi-temporal filters' output scales are zero-initialised and the change "
        "head acts only through the mask filter: outputs equal the base model's until trained or filtered"
        + (f", except that visual_tokens={config.visual_tokens!r} shows the language model change tokens)."
           if "change" in config.visual_segments else ").")
    )
    return report


__all__ = ["NEW_MODULE_PREFIXES", "REPLACED_BY_VIDEO_ENCODER", "rscc_config_from_llava_onevision"]
