"""Configuration of rscc models: LLaVA-OneVision plus CCExpert's difference-aware integration."""

import math
from dataclasses import dataclass, field

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
# What the language model sees of a pair, one placeholder segment each (KCFI's ablation: 2, 1 or 3 `<image>` tokens).
VISUAL_TOKEN_SEGMENTS = {
    "pair": ("before", "after"),
    "change": ("change",),
    "pair+change": ("before", "after", "change"),
}
CHANGE_FEATURES = ("none", "difference_integration", "key_change")
PAIR_ENCODINGS = ("images", "llava_video", "video_encoder")


@dataclass(frozen=True)
class VideoEncoderFamily:
    """What rscc needs to know of one `model_type` of video encoder (`pair_encoding="video_encoder"`), whose config
    names the same geometry differently from family to family.

    Args:
        frame_size_field: Config field of the (square) frame side in pixels.
        num_frames_field: Config field of the frames per clip: the dates per sample of an rscc model.
        input_name: Keyword of the frames, `(batch, num_frames, channels, height, width)`, in the model's forward.
        block_linear_layers: Names of the linear layers of each encoder block (`backbone.encoder.layer.N`), the LoRA
            targets by default.
        forward_options: Further keyword arguments of the forward that gives the encoder's features alone.
        unused_submodules: Submodules of the transformers model that rscc never runs, not built into (or loaded
            into) the rscc model, so that they leave no dead parameters.
    """

    frame_size_field: str
    num_frames_field: str
    input_name: str
    block_linear_layers: tuple[str, ...]
    forward_options: dict = field(default_factory=dict)
    unused_submodules: tuple[str, ...] = ()

    @property
    def required_fields(self) -> tuple[str, ...]:
        """The geometry a `video_encoder_config` of this family must describe."""
        return ("hidden_size", self.frame_size_field, "patch_size", self.num_frames_field, "tubelet_size")


# Video encoders rscc supports, by `model_type`: 3-D patch embeddings whose tubelets span consecutive dates.
VIDEO_ENCODER_FAMILIES = {
    # `dense` names VideoMAE's attention output and both MLP layers.
    "videomae": VideoEncoderFamily(
        frame_size_field="image_size",
        num_frames_field="num_frames",
        input_name="pixel_values",
        block_linear_layers=("query", "key", "value", "dense"),
    ),
    # V-JEPA 2's predictor only serves its self-supervised pretraining (it predicts masked tokens).
    "vjepa2": VideoEncoderFamily(
        frame_size_field="crop_size",
        num_frames_field="frames_per_clip",
        input_name="pixel_values_videos",
        block_linear_layers=("query", "key", "value", "proj", "fc1", "fc2"),
        forward_options={"skip_predictor": True},
        unused_submodules=("predictor",),
    ),
}


def check_video_encoder_config(encoder) -> None:
    """Refuse a `video_encoder_config` (of `pair_encoding="video_encoder"`) that is not a dict of a supported family
    describing its geometry, with a tubelet size that divides its frames per clip (at least 2)."""
    if not isinstance(encoder, dict):
        raise ValueError(
            "pair_encoding='video_encoder' needs video_encoder_config (the config of a video encoder of model "
            f"type {list(VIDEO_ENCODER_FAMILIES)}, or its dict); got {type(encoder).__name__}"
        )
    family = VIDEO_ENCODER_FAMILIES.get(encoder.get("model_type"))
    if family is None:
        raise ValueError(
            f"video_encoder_config has model_type {encoder.get('model_type')!r}: supported video encoders are "
            f"{list(VIDEO_ENCODER_FAMILIES)}"
        )
    missing = [name for name in family.required_fields if name not in encoder]
    if missing:
        raise ValueError(
            f"video_encoder_config of model_type {encoder['model_type']!r} lacks {missing}: expected "
            f"{list(family.required_fields)}"
        )
    frames_field = family.num_frames_field
    num_frames = encoder[frames_field]
    if num_frames < 2 or num_frames % encoder["tubelet_size"]:
        raise ValueError(
            f"video_encoder_config: {frames_field}={num_frames}, tubelet_size={encoder['tubelet_size']}: "
            f"expected {frames_field} >= 2 (the dates of a sample) and a tubelet_size dividing it"
        )


@strict
class RsccConfig(LlavaOnevisionConfig):
    r"""
    Configuration of [`RsccForConditionalGeneration`]: a [`LlavaOnevisionConfig`] (SigLIP vision tower, projector,
    Qwen2 language model) with the options of the bi-temporal difference-integration module, the change-mask token
    filter and the change-detection head.

    Args:
        change_features (`str`, *optional*):
            The change-feature module, which compares the SigLIP features of the dates of each sample.
            `"difference_integration"` (the default for SigLIP encodings): CCExpert's; its refined images enter the
            image features through a zero-initialised residual, its change tokens are the level-gated mean of its
            change tokens. `"key_change"`: KCFI's key change feature perceiver; at each level of
            `difference_feature_layers` a flow field estimated from both dates warps each date's features, the
            residuals (warped minus original) give `|residual_before - residual_after|`, and a linear layer fuses the
            levels. The image features stay stock; the key change features feed the change tokens and, in place of
            `|A - B|`, the change head. It needs a consumer: `visual_tokens` with change tokens or `use_change_head`.
            `"none"` (the default, and the only setting, under `pair_encoding="video_encoder"`, whose encoder fuses
            the dates itself): no module; with every other option at its default the model then computes exactly what
            LLaVA-OneVision computes. Configs saved with the former `use_difference_integration=False` load as
            `"none"`.
        difference_feature_layers (`list[int]`, *optional*, defaults to `[-10, -7, -4, -1]`):
            Vision hidden-state indices (as in `hidden_states[i]`, negative from the end) of the levels the
            change-feature module reads. The default is CCExpert's four levels on the 26-layer SigLIP tower of
            llava-hf.
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
            In `rscc.captioning.describe_changes`, a pair whose predicted mask has no changed pixel skips the language model and gets
            `no_change_caption`. Saves the whole generation cost of such pairs, at the price of trusting the head:
            a change the head misses can no longer be described, and the caption of unchanged pairs is always the
            same sentence. Needs `use_change_head`.
        no_change_caption (`str`, *optional*, defaults to `"The scene is the same as before."`):
            The caption the shortcut gives (one of LEVIR-CC's canonical no-change sentences).
        visual_tokens (`str`, *optional*, defaults to `"pair"`):
            What the language model sees of a pair, each segment `num_image_tokens + 1` tokens (grid and newline)
            in place of one `<image>` placeholder of the prompt. `"pair"`: the before then the after image (2
            placeholders). `"change"`: only the pair's change tokens, the change features projected to the language
            model (1 placeholder: 730 tokens a pair instead of 1,460; KCFI's best setting). `"pair+change"`: both
            images then the change tokens (3 placeholders). The change filter applies to every segment alike. Needs
            a change-feature module (`change_features` other than `"none"`) unless `"pair"`.
        key_change_hidden_size (`int`, *optional*, defaults to 256):
            Width of the hidden layer of the key change perceiver's flow estimator (two 3x3 convolutions per level).
        bitemporal_filter_layers (`list[int]`, *optional*, defaults to `[]`):
            Vision hidden-state indices (1 to `num_hidden_layers`, or negative from the end) after whose encoder
            layer a bi-temporal change semantic filter (Semantic-CC's BCSF) runs on both images of each pair: spatial
            and channel gates computed from both dates, then feed-forward layers, added to the hidden states through
            a zero-initialised per-channel scale (at initialisation the model equals stock). Empty: no filter.
        bitemporal_filter_mlp_ratio (`float`, *optional*, defaults to 0.25):
            Width of the filters' feed-forward layers relative to the vision hidden size; 0.25 keeps four filters
            at about 2% of the vision tower's FLOPs.
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
            (a `PreTrainedConfig` is converted): a `model_type` of `VIDEO_ENCODER_FAMILIES` (`"videomae"`,
            `"vjepa2"`) with `hidden_size`, the frame size (`image_size`, V-JEPA 2's `crop_size`), `patch_size`, the
            frames per clip (`num_frames`, V-JEPA 2's `frames_per_clip`) and a `tubelet_size` dividing them. The
            model then takes samples of exactly that many dates (2 for pairs).

    Example:

    ```python
    >>> from rscc import RsccConfig, RsccForConditionalGeneration

    >>> config = RsccConfig()  # LLaVA-OneVision-0.5B-like dimensions
    >>> model = RsccForConditionalGeneration(config)
    ```"""

    model_type = "rscc"

    change_features: str | None = None
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
    visual_tokens: str = "pair"
    key_change_hidden_size: int = 256
    bitemporal_filter_layers: list[int] | None = None
    bitemporal_filter_mlp_ratio: float = 0.25
    pair_encoding: str = "images"
    video_encoder_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs):
        # Configs saved before `change_features` took "none" said so with `use_difference_integration=False`.
        if kwargs.pop("use_difference_integration", True) is False:
            self.change_features = "none"
        if self.change_features is None:
            self.change_features = "none" if self.pair_encoding == "video_encoder" else "difference_integration"
        if isinstance(self.video_encoder_config, PreTrainedConfig):
            self.video_encoder_config = self.video_encoder_config.to_dict()
        if self.difference_feature_layers is None:
            self.difference_feature_layers = list(CCEXPERT_FEATURE_LAYERS)
        self.difference_feature_layers = list(self.difference_feature_layers)
        self.bitemporal_filter_layers = list(self.bitemporal_filter_layers or [])
        super().__post_init__(**kwargs)

        self.validate_rscc_options()

    def validate_rscc_options(self) -> None:
        """Refuse every invalid option and combination of options, each in one place, in order: option values, the
        pair encoding, the change filter and head, the change-feature modules.

        A strict-dataclass validator: besides `__post_init__` (which raises the `ValueError` itself), `validate()` runs
        it, which `save_pretrained` calls, so a config edited after construction is checked before it is saved.
        """
        for name, allowed in (
            ("pair_encoding", PAIR_ENCODINGS),
            ("change_features", CHANGE_FEATURES),
            ("visual_tokens", VISUAL_TOKEN_SEGMENTS),
            ("change_filter", CHANGE_FILTERS),
            ("change_mask_source", CHANGE_MASK_SOURCES),
            ("change_loss_weighting", CHANGE_LOSS_WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {list(allowed)}")
        self._check_pair_encoding()
        self._check_change_options()
        self._check_change_feature_options()
        self._check_difference_integration()

    def _check_difference_integration(self) -> None:
        if self.change_features == "none":
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
        check_video_encoder_config(self.video_encoder_config)
        if self.change_features != "none":
            raise ValueError(
                f"change_features={self.change_features!r} with pair_encoding='video_encoder': the video encoder "
                "fuses the dates itself and has no per-date SigLIP features; set change_features='none'"
            )

    def _check_change_feature_options(self) -> None:
        if self.visual_tokens != "pair" and self.change_features == "none":
            raise ValueError(
                f"visual_tokens={self.visual_tokens!r} shows the language model change tokens, which come from the "
                "change-feature module: set change_features='difference_integration' or 'key_change'"
            )
        if self.change_features == "key_change":
            if self.visual_tokens == "pair" and not self.use_change_head:
                raise ValueError(
                    "change_features='key_change' feeds the change tokens and the change head, and this model has "
                    "neither: set visual_tokens='change' or 'pair+change', or use_change_head=True"
                )
        options = self.pairs_only_options
        if options and self.pair_encoding != "images":
            raise ValueError(
                f"{', '.join(options)} with pair_encoding={self.pair_encoding!r}: change tokens, key change features "
                "and the bi-temporal filter work on the SigLIP grid of each image; use pair_encoding='images'"
            )
        if self.key_change_hidden_size < 1:
            raise ValueError(f"key_change_hidden_size={self.key_change_hidden_size}: expected at least 1")
        if not self.bitemporal_filter_mlp_ratio > 0:
            raise ValueError(f"bitemporal_filter_mlp_ratio={self.bitemporal_filter_mlp_ratio}: expected > 0")
        num_layers = self.vision_config.num_hidden_layers
        if not all(1 <= abs(index) <= num_layers for index in self.bitemporal_filter_layers):
            raise ValueError(
                f"bitemporal_filter_layers={self.bitemporal_filter_layers}: expected hidden-state indices of encoder "
                f"layer outputs, 1..{num_layers} or -{num_layers}..-1"
            )
        if len(set(self.bitemporal_filter_encoder_layers)) != len(self.bitemporal_filter_layers):
            raise ValueError(f"bitemporal_filter_layers={self.bitemporal_filter_layers}: a layer is listed twice")
        if self.visual_tokens != "pair" and (
            self.vision_feature_select_strategy != "full" or not isinstance(self.vision_feature_layer, int)
        ):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}, vision_feature_layer="
                f"{self.vision_feature_layer}: change tokens are made on the full token grid of one vision layer; "
                "use 'full' and a single index"
            )

    @property
    def visual_segments(self) -> tuple[str, ...]:
        """The segments the language model sees per pair, in order, each in place of one `<image>` placeholder."""
        return VISUAL_TOKEN_SEGMENTS[self.visual_tokens]

    @property
    def bitemporal_filter_encoder_layers(self) -> list[int]:
        """0-based indices of the encoder layers followed by a bi-temporal filter, in the order listed."""
        num_layers = self.vision_config.num_hidden_layers
        return [index - 1 if index > 0 else num_layers + index for index in self.bitemporal_filter_layers]

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
            frame_size = self.video_encoder_config[self.video_encoder_family.frame_size_field]
            return frame_size // self.video_encoder_config["patch_size"]
        return self.vision_grid_size

    @property
    def pairs_only_options(self) -> list[str]:
        """The options set that compare a before and an after SigLIP grid, as `name=value` labels: they take
        `pair_encoding="images"` and samples of exactly two dates."""
        options = {
            f"visual_tokens={self.visual_tokens!r}": self.visual_tokens != "pair",
            "change_features='key_change'": self.change_features == "key_change",
            f"bitemporal_filter_layers={self.bitemporal_filter_layers}": bool(self.bitemporal_filter_layers),
        }
        return [option for option, used in options.items() if used]

    @property
    def video_encoder_family(self) -> VideoEncoderFamily:
        """The [`VideoEncoderFamily`] of `video_encoder_config`'s model type (`pair_encoding="video_encoder"` only)."""
        return VIDEO_ENCODER_FAMILIES[self.video_encoder_config["model_type"]]

    @property
    def video_num_frames(self) -> int:
        """Frames per clip of the video encoder: the dates of every sample (`pair_encoding="video_encoder"` only)."""
        return self.video_encoder_config[self.video_encoder_family.num_frames_field]


RsccConfig.register_for_auto_class()

__all__ = ["RsccConfig"]
