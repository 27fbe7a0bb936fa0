"""Configuration of rscc models: LLaVA-OneVision plus CCExpert's difference-aware integration."""

import math

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig, PreTrainedConfig

from .compat_rscc import check_transformers_version

check_transformers_version()

# CCExpert reads SigLIP hidden states [-11, -8, -5, -2] of the 27-layer tower; the llava-hf checkpoints keep 26
# layers (the last one was never used), so the same four layers are [-10, -7, -4, -1] there.
CCEXPERT_FEATURE_LAYERS = (-10, -7, -4, -1)
# Label of change-mask pixels nobody labelled (all of them for a pair given no mask), and of unsupervised caption
# positions: the value torch's cross-entropy ignores.
IGNORE_INDEX = -100
CHANGE_FILTERS = ("none", "multiply", "drop")
CHANGE_MASK_SOURCES = ("input", "predicted")
CHANGE_LOSS_WEIGHTINGS = ("fixed", "dwa", "normalized")
PAIR_ENCODINGS = ("images", "llava_video", "video_encoder")
# Geometry a `video_encoder_config` must describe (the VideoMAE family's names).
VIDEO_ENCODER_FIELDS = ("model_type", "hidden_size", "image_size", "patch_size", "num_frames", "tubelet_size")


@strict
class RsccConfig(LlavaOnevisionConfig):
    r"""
    Configuration of [`RsccForConditionalGeneration`]: a [`LlavaOnevisionConfig`] (SigLIP vision tower, projector,
    Qwen2 language model) with the options of the bi-temporal difference-integration module, the change-mask token
    filter and the change-detection head.

    Args:
        use_difference_integration (`bool`, *optional*, defaults to `True`):
            Whether the image features of each (before, after) pair pass through the difference-integration
            module before the projector. When `False` the model computes exactly what LLaVA-OneVision computes.
        difference_feature_layers (`list[int]`, *optional*, defaults to `[-10, -7, -4, -1]`):
            Vision hidden-state indices (as in `hidden_states[i]`, negative from the end) of the levels the
            module refines. The default is CCExpert's four levels on the 26-layer SigLIP tower of llava-hf.
        difference_num_blocks (`int`, *optional*, defaults to 2):
            Number of change-aware transformer blocks, shared by all levels.
        difference_num_heads (`int`, *optional*, defaults to 9):
            Attention heads of those blocks; must divide the vision hidden size (1152 / 9 = 128 in CCExpert).
        difference_mlp_ratio (`float`, *optional*, defaults to 4.0):
            Width of the blocks' MLP relative to the vision hidden size.
        difference_layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the blocks' layer norms.
        change_filter (`str`, *optional*, defaults to `"none"`):
            How a change mask filters the vision tokens of both images of a pair (MV-CC). `"none"`: not at all.
            `"multiply"`: unchanged tokens become zero vectors and stay in the sequence (MV-CC's released code).
            `"drop"`: unchanged tokens are removed, so the language model computes a shorter sequence; the
            `change_filter_min_tokens` context tokens and each image's newline token are always kept. A mask is
            binarised (any non-zero class is change) and sampled at the centre of each vision token.
        change_mask_source (`str`, *optional*, defaults to `"input"`):
            Where the filter's mask comes from. `"input"`: the `change_masks` given to the model; pairs without one
            are not filtered. `"predicted"`: the change head's own prediction (self-guided), except for pairs whose
            mask is given (teacher forcing in training). Needs `use_change_head`.
        change_filter_min_tokens (`int`, *optional*, defaults to 16):
            Context floor of `"drop"`: the tokens of a uniform `sqrt(n) x sqrt(n)` sub-grid of each image are kept
            whatever the mask says, so a pair with little or no change still shows the language model a coarse view
            of the scene (and captions can place a change relative to its surroundings). A square number, at
            most the tokens of one image; 0 keeps only changed tokens. `"multiply"` has no floor (MV-CC has none).
        use_change_head (`bool`, *optional*, defaults to `False`):
            Whether the model has a change-detection head predicting a mask from the two images' vision features
            (`change_logits` in the output; trained when `change_masks` are given).
        change_head_num_classes (`int`, *optional*, defaults to 2):
            Classes of the head, class 0 being "no change": 2 for change / no change, 3 for LEVIR-MCI's
            background / road / building.
        change_head_hidden_size (`int`, *optional*, defaults to 256):
            Width of the head's hidden layers.
        change_loss_weighting (`str`, *optional*, defaults to `"fixed"`):
            How the caption and change-detection losses combine when both are present. `"fixed"`:
            `caption + change_loss_weight * change` (Semantic-CC, weight 0.5). `"dwa"`: dynamic weight averaging
            (KCFI): `w_k = 2 exp(r_k / T) / sum_i exp(r_i / T)` with `r_k` the ratio of task k's loss at the two
            previous training steps (both weights 1 for the first two steps; under rscc's Trainer a step is an
            optimizer step, its micro-batches' losses averaged). `"normalized"`: each loss divided by its
            own detached value (Change-Agent), so both tasks get gradients of the same scale.
        change_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the change-detection loss under `"fixed"` weighting.
        change_loss_dwa_temperature (`float`, *optional*, defaults to 2.0):
            Temperature `T` of `"dwa"` weighting. 2.0 is the DWA paper's; KCFI uses 0.2, which makes the weights
            swing with the noise of per-step loss ratios.
        change_dice_weight (`float`, *optional*, defaults to 0.0):
            Weight of a soft Dice term (over the change classes) added to the change head's cross-entropy; helps
            when changed pixels are rare.
        no_change_shortcut (`bool`, *optional*, defaults to `False`):
            In `rscc.inference`, a pair whose predicted mask has no changed pixel skips the language model and gets
            `no_change_caption`. Saves the whole generation cost of such pairs, at the price of trusting the head:
            a change the head misses can no longer be described, and the caption of unchanged pairs is always the
            same sentence. Needs `use_change_head`.
        no_change_caption (`str`, *optional*, defaults to `"The scene is the same as before."`):
            The caption the shortcut gives (one of LEVIR-CC's canonical no-change sentences).
        pair_encoding (`str`, *optional*, defaults to `"images"`):
            How a sample (a pair, or a series of N dates) reaches the language model. `"images"`: each date through
            SigLIP, its full token grid and a newline token (730 tokens per image at 384 px). `"llava_video"`:
            LLaVA-OneVision's own video path, the dates as frames through SigLIP, each frame's projected grid pooled
            2x2 (bilinear) and one newline token per sample (N x 196 + 1 tokens at 384 px: 393 for a pair); no new
            weights. `"video_encoder"` (MV-CC): a spatiotemporal encoder whose tubelets span consecutive dates
            (`video_encoder_config`) replaces SigLIP and the difference module, with a new projector to the language
            model; its tokens plus one newline token. The change filter and head work on the grid the language model
            sees (the pooled grid for `"llava_video"`, the encoder's grid for `"video_encoder"`).
        video_encoder_config (`dict`, *optional*):
            Config of the video encoder of `pair_encoding="video_encoder"`, as `PreTrainedConfig.to_dict()` gives it
            (a `PreTrainedConfig` is converted): a VideoMAE-family encoder (`model_type`, `hidden_size`,
            `image_size`, `patch_size`, `num_frames`, `tubelet_size` dividing `num_frames`). The model then takes
            samples of exactly `num_frames` dates (2 for pairs).

    Example:

    ```python
    >>> from rscc import RsccConfig, RsccForConditionalGeneration

    >>> config = RsccConfig()  # LLaVA-OneVision-0.5B-like dimensions
    >>> model = RsccForConditionalGeneration(config)
    ```"""

    model_type = "rscc"

    use_difference_integration: bool = True
    difference_feature_layers: list[int] | None = None
    difference_num_blocks: int = 2
    difference_num_heads: int = 9
    difference_mlp_ratio: float = 4.0
    difference_layer_norm_eps: float = 1e-6
    change_filter: str = "none"
    change_mask_source: str = "input"
    change_filter_min_tokens: int = 16
    use_change_head: bool = False
    change_head_num_classes: int = 2
    change_head_hidden_size: int = 256
    change_loss_weighting: str = "fixed"
    change_loss_weight: float = 0.5
    change_loss_dwa_temperature: float = 2.0
    change_dice_weight: float = 0.0
    no_change_shortcut: bool = False
    no_change_caption: str = "The scene is the same as before."
    pair_encoding: str = "images"
    video_encoder_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_pair_encoding()
        if self.difference_feature_layers is None:
            self.difference_feature_layers = list(CCEXPERT_FEATURE_LAYERS)
        self.difference_feature_layers = list(self.difference_feature_layers)
        self._check_change_options()
        if not self.use_difference_integration:
            return
        num_hidden_states = self.vision_config.num_hidden_layers + 1
        for index in self.difference_feature_layers:
            if not -num_hidden_states <= index < num_hidden_states:
                raise ValueError(
                    f"difference_feature_layers={self.difference_feature_layers}: index {index} is outside the "
                    f"{num_hidden_states} vision hidden states (embeddings + {num_hidden_states - 1} layers)"
                )
        if not self.difference_feature_layers:
            raise ValueError("difference_feature_layers is empty; give at least one vision hidden-state index")
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer}: difference integration adds its output to one "
                "vision layer, so vision_feature_layer must be a single index"
            )
        width = self.vision_config.hidden_size
        if self.difference_num_blocks < 1:
            raise ValueError(f"difference_num_blocks={self.difference_num_blocks}: expected at least 1")
        if self.difference_num_heads < 1 or width % self.difference_num_heads:
            raise ValueError(
                f"difference_num_heads={self.difference_num_heads} must divide the vision hidden size {width}"
            )

    def _check_change_options(self) -> None:
        for name, allowed in (
            ("change_filter", CHANGE_FILTERS),
            ("change_mask_source", CHANGE_MASK_SOURCES),
            ("change_loss_weighting", CHANGE_LOSS_WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {list(allowed)}")
        uses_predicted_mask = {
            "change_mask_source": self.change_mask_source == "predicted",
            "no_change_shortcut": self.no_change_shortcut,
        }
        for name, uses_prediction in uses_predicted_mask.items():
            if uses_prediction and not self.use_change_head:
                raise ValueError(f"{name}={getattr(self, name)!r} uses the predicted mask: set use_change_head=True")
        if self.change_head_num_classes < 2:
            raise ValueError(f"change_head_num_classes={self.change_head_num_classes}: expected at least 2")
        if self.change_head_hidden_size < 1:
            raise ValueError(f"change_head_hidden_size={self.change_head_hidden_size}: expected at least 1")
        if self.change_loss_dwa_temperature <= 0:
            raise ValueError(f"change_loss_dwa_temperature={self.change_loss_dwa_temperature}: expected > 0")
        if self.change_loss_weight < 0 or self.change_dice_weight < 0:
            raise ValueError(
                f"change_loss_weight={self.change_loss_weight}, change_dice_weight={self.change_dice_weight}: "
                "weights must be >= 0"
            )
        if self.change_filter == "none" and not self.use_change_head:
            return
        # The filter and the head work on the square token grid of one vision layer.
        if self.vision_feature_select_strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: the change filter and head "
                "need the full token grid; use 'full'"
            )
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer}: the change filter and head read one vision layer, "
                "so vision_feature_layer must be a single index"
            )
        side = math.isqrt(self.change_filter_min_tokens) if self.change_filter_min_tokens >= 0 else -1
        grid = self.token_grid_size
        if side * side != self.change_filter_min_tokens or side > grid:
            raise ValueError(
                f"change_filter_min_tokens={self.change_filter_min_tokens}: expected a square number (0, 1, 4, 9, "
                f"16, ...) of at most {grid**2} (the {grid}x{grid} tokens of one image)"
            )

    def _check_pair_encoding(self) -> None:
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding={self.pair_encoding!r}: expected one of {list(PAIR_ENCODINGS)}")
        if isinstance(self.video_encoder_config, PreTrainedConfig):
            self.video_encoder_config = self.video_encoder_config.to_dict()
        if self.pair_encoding == "llava_video" and self.vision_feature_select_strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: pair_encoding='llava_video' "
                "pools each frame's square token grid; use 'full'"
            )
        if self.pair_encoding != "video_encoder":
            if self.video_encoder_config is not None:
                raise ValueError(
                    f"video_encoder_config is set but pair_encoding={self.pair_encoding!r}; it is only read by "
                    "pair_encoding='video_encoder'"
                )
            return
        encoder = self.video_encoder_config
        if not isinstance(encoder, dict):
            raise ValueError(
                "pair_encoding='video_encoder' needs video_encoder_config (a VideoMAE-family config or its dict); "
                f"got {type(encoder).__name__}"
            )
        missing = [name for name in VIDEO_ENCODER_FIELDS if name not in encoder]
        if missing:
            raise ValueError(
                f"video_encoder_config of model_type {encoder.get('model_type')!r} lacks {missing}: expected a "
                f"VideoMAE-family config with {list(VIDEO_ENCODER_FIELDS)}"
            )
        if encoder["num_frames"] < 2 or encoder["num_frames"] % encoder["tubelet_size"]:
            raise ValueError(
                f"video_encoder_config: num_frames={encoder['num_frames']}, tubelet_size={encoder['tubelet_size']}: "
                "expected num_frames >= 2 (the dates of a sample) and a tubelet_size dividing it"
            )
        if self.use_difference_integration:
            raise ValueError(
                "use_difference_integration=True with pair_encoding='video_encoder': the video encoder fuses the "
                "dates itself and has no per-date SigLIP features; set use_difference_integration=False"
            )

    @property
    def vision_grid_size(self) -> int:
        """Side of the square grid of vision tokens per image (27 for SigLIP at 384 px with 14 px patches)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def token_grid_size(self) -> int:
        """Side of the square token grid the language model sees per frame (`pair_encoding="images"`: the vision grid;
        `"llava_video"`: that grid pooled 2x2, 14 at 384 px; `"video_encoder"`: the encoder's patch grid), on which
        change masks filter the tokens."""
        if self.pair_encoding == "llava_video":
            return math.ceil(self.vision_grid_size / 2)
        if self.pair_encoding == "video_encoder":
            return self.video_encoder_config["image_size"] // self.video_encoder_config["patch_size"]
        return self.vision_grid_size


RsccConfig.register_for_auto_class()

__all__ = ["RsccConfig"]
