"""rscc models: LLaVA-OneVision with CCExpert's difference-aware integration of the two images of a pair.

The stock LLaVA-OneVision parameter names are kept, so a LLaVA-OneVision checkpoint loads unchanged; the new
module lives under `model.difference_module` and enters through a zero-initialised scale, so a freshly built
model computes exactly what the stock model computes until training moves that scale.
"""

import math

import torch
from torch import nn
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionPreTrainedModel
from transformers.utils import logging

from .configuration_rscc import RsccConfig

logger = logging.get_logger(__name__)

# Hub checkpoints of LLaVA-OneVision use the legacy key layout (`language_model.model.*`); rscc checkpoints are
# read and written through the same renaming, so both load into the stock parameter names.
if get_checkpoint_conversion_mapping(RsccConfig.model_type) is None:
    register_checkpoint_conversion_mapping(
        RsccConfig.model_type, get_checkpoint_conversion_mapping(LlavaOnevisionConfig.model_type)
    )


def sine_position_embedding_2d(grid_size: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of a square token grid, row-major.

    Args:
        grid_size (`int`): side of the grid (27 for SigLIP-384).
        dim (`int`): embedding width, a multiple of 4.

    Returns:
        `torch.Tensor` of shape `(grid_size * grid_size, dim)`.
    """
    if dim % 4:
        raise ValueError(f"sine position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    coordinates = torch.arange(grid_size, device=device, dtype=torch.float32)
    angles = coordinates[:, None] * frequencies[None, :]
    axis_embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    rows = axis_embedding[:, None, :].expand(grid_size, grid_size, 2 * quarter)
    columns = axis_embedding[None, :, :].expand(grid_size, grid_size, 2 * quarter)
    return torch.cat([rows, columns], dim=-1).reshape(grid_size * grid_size, dim).to(dtype)


class RsccAttention(nn.Module):
    """Multi-head attention whose queries and keys carry position/role embeddings and whose values do not."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries (`torch.Tensor` of shape `(batch, query_len, dim)`)
            keys (`torch.Tensor` of shape `(batch, key_len, dim)`)
            values (`torch.Tensor` of shape `(batch, key_len, dim)`)

        Returns:
            `torch.Tensor` of shape `(batch, query_len, dim)`.
        """
        batch, query_len, dim = queries.shape

        def split_heads(states):
            return states.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attended = nn.functional.scaled_dot_product_attention(
            split_heads(self.q_proj(queries)), split_heads(self.k_proj(keys)), split_heads(self.v_proj(values))
        )
        return self.o_proj(attended.transpose(1, 2).reshape(batch, query_len, dim))


class RsccChangeInit(nn.Module):
    """CCExpert's initial difference tokens.

    s1 = sigmoid(L([A; B])), s2 = sigmoid(L([B; A])) with one shared L, then D = L'([A*s1; B*s2; A*s1 - B*s2]).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(2 * dim, dim)
        self.fuse_proj = nn.Linear(3 * dim, dim)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        weighted_before = before * torch.sigmoid(self.gate_proj(torch.cat([before, after], dim=-1)))
        weighted_after = after * torch.sigmoid(self.gate_proj(torch.cat([after, before], dim=-1)))
        return self.fuse_proj(torch.cat([weighted_before, weighted_after, weighted_before - weighted_after], dim=-1))


class RsccChangeAwareBlock(GradientCheckpointingLayer):
    """One change-aware transformer block (post-norm), as in CCExpert's released code.

    1. change tokens self-attend; 2. change tokens attend to [before; after; change]; 3. MLP on change tokens;
    4. each image attends to [itself; change] (shared weights for both images), residual and norm.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        heads = config.difference_num_heads
        eps = config.difference_layer_norm_eps
        self.self_attn = RsccAttention(dim, heads)
        self.self_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.change_to_images_attn = RsccAttention(dim, heads)
        self.change_to_images_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, int(dim * config.difference_mlp_ratio))
        self.act = ACT2FN["gelu"]
        self.fc2 = nn.Linear(int(dim * config.difference_mlp_ratio), dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.images_to_change_attn = RsccAttention(dim, heads)
        self.images_norm = nn.LayerNorm(dim, eps=eps)

    def forward(
        self,
        change: torch.Tensor,
        before: torch.Tensor,
        after: torch.Tensor,
        position_embedding: torch.Tensor,
        role_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            change, before, after (`torch.Tensor` of shape `(batch, num_tokens, dim)`):
                Change tokens and the tokens of the two images.
            position_embedding (`torch.Tensor` of shape `(num_tokens, dim)`): 2-D position of each token.
            role_embedding (`torch.Tensor` of shape `(3, dim)`): learned before / after / change flags.

        Returns:
            The updated `(change, before, after)`, same shapes.
        """
        role_before, role_after, role_change = role_embedding
        change_keys = change + position_embedding + role_change
        change = self.self_attn_norm(change + self.self_attn(change_keys, change_keys, change))

        change_queries = change + position_embedding + role_change
        before_keys = before + position_embedding + role_before
        after_keys = after + position_embedding + role_after
        context_keys = torch.cat([before_keys, after_keys, change_queries], dim=1)
        context_values = torch.cat([before, after, change], dim=1)
        change = self.change_to_images_norm(
            change + self.change_to_images_attn(change_queries, context_keys, context_values)
        )
        change = self.mlp_norm(change + self.fc2(self.act(self.fc1(change))))

        change_keys = change + position_embedding + role_change
        before = self.images_norm(
            before
            + self.images_to_change_attn(
                before_keys, torch.cat([before_keys, change_keys], 1), torch.cat([before, change], 1)
            )
        )
        after = self.images_norm(
            after
            + self.images_to_change_attn(
                after_keys, torch.cat([after_keys, change_keys], 1), torch.cat([after, change], 1)
            )
        )
        return change, before, after


class RsccDifferenceIntegration(nn.Module):
    """CCExpert's difference-aware integration over several vision levels, entering through a zero-init scale.

    Every level runs through the same blocks (weights shared across levels, levels batched together). A gate per
    level and pair, sigmoid(MLP(mean-pooled [A; B; change])), weighs the refined image tokens of the levels; the
    weighted mean is added to the raw features of `vision_feature_layer` after multiplication by `output_scale`,
    a per-channel vector initialised to zero.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.grid_size = config.vision_grid_size
        self.change_init = RsccChangeInit(dim)
        self.blocks = nn.ModuleList([RsccChangeAwareBlock(config) for _ in range(config.difference_num_blocks)])
        self.role_embedding = nn.Parameter(torch.zeros(3, dim))
        self.level_gate = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.output_scale = nn.Parameter(torch.zeros(dim))

    def forward(
        self,
        before_levels: list[torch.Tensor],
        after_levels: list[torch.Tensor],
        before_features: torch.Tensor,
        after_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            before_levels, after_levels (`list[torch.Tensor]`, each of shape `(num_pairs, num_tokens, dim)`):
                Vision hidden states of the levels in `config.difference_feature_layers`.
            before_features, after_features (`torch.Tensor` of shape `(num_pairs, num_tokens, dim)`):
                The features the stock model projects (`vision_feature_layer`).

        Returns:
            `(before, after)`: the features to project, shapes as `before_features`.
        """
        num_levels = len(before_levels)
        num_pairs, num_tokens, dim = before_features.shape
        if num_tokens != self.grid_size**2:
            raise ValueError(
                f"difference integration expects {self.grid_size}x{self.grid_size}={self.grid_size**2} vision tokens "
                f"per image, got {num_tokens}; use vision_feature_select_strategy='full'"
            )
        before = torch.cat(before_levels, dim=0)
        after = torch.cat(after_levels, dim=0)
        position_embedding = sine_position_embedding_2d(self.grid_size, dim, before.device, before.dtype)
        change = self.change_init(before, after)
        for index, block in enumerate(self.blocks):
            if index:
                # From the second block on, the change queries are refreshed from the updated images.
                change = change + self.change_init(before, after)
            change, before, after = block(change, before, after, position_embedding, self.role_embedding)

        pooled = torch.cat([before.mean(1), after.mean(1), change.mean(1)], dim=-1)
        gates = torch.sigmoid(self.level_gate(pooled)).view(num_levels, num_pairs, 1, 1)
        normaliser = gates.sum(0) + 1e-6
        fused_before = (gates * before.view(num_levels, num_pairs, num_tokens, dim)).sum(0) / normaliser
        fused_after = (gates * after.view(num_levels, num_pairs, num_tokens, dim)).sum(0) / normaliser
        return (
            before_features + self.output_scale * fused_before,
            after_features + self.output_scale * fused_after,
        )


class RsccPreTrainedModel(LlavaOnevisionPreTrainedModel):
    config: RsccConfig
    config_class = RsccConfig
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "RsccChangeAwareBlock"]
    # Pair validation reads `batch_num_images` on the host.
    _can_compile_fullgraph = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, with `auto_map` entries so the folder loads with `trust_remote_code=True`.

        A class registers for one Auto class only, so `AutoModel` is added here; it maps to the captioning model.
        """
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"modeling_rscc.{RsccForConditionalGeneration.__name__}",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RsccDifferenceIntegration):
            init.normal_(module.role_embedding, mean=0.0, std=self.config.get_text_config().initializer_range)
            init.zeros_(module.output_scale)


class RsccModel(RsccPreTrainedModel, LlavaOnevisionModel):
    """[`LlavaOnevisionModel`] whose image features of each (before, after) pair go through difference integration.

    Every sample must hold exactly two images, before then after (`batch_num_images` all 2) when
    `config.use_difference_integration` is set.
    """

    def __init__(self, config: RsccConfig):
        super().__init__(config)
        self.difference_module = RsccDifferenceIntegration(config) if config.use_difference_integration else None
        # LlavaOnevisionModel.__init__ already ran post_init; run it again so the new module is initialised too
        # (modules initialised once are skipped).
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(num_images, num_patches, channels, height, width)` or
                `(num_images, channels, height, width)`): the images, before and after of each pair in turn.
                Only the base view (`[:, 0]`) is used, as LLaVA-OneVision does for multi-image samples.
            image_sizes (`torch.Tensor` of shape `(num_images, 2)`): original (height, width) of each image.
            batch_num_images (`torch.LongTensor` of shape `(batch_size,)`): images per sample; all must be 2.

        Returns:
            [`BaseModelOutputWithPooling`] whose `pooler_output` is a list of `(num_tokens + 1, text_hidden)`
            tensors, one per image (grid tokens then the newline token).
        """
        if self.difference_module is None:
            return super().get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                **kwargs,
            )
        vision_feature_layer = (
            self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        )
        vision_feature_select_strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        vision_aspect_ratio = vision_aspect_ratio or self.config.vision_aspect_ratio
        if batch_num_images is None or any(int(n) != 2 for n in batch_num_images):
            found = None if batch_num_images is None else [int(n) for n in batch_num_images]
            raise ValueError(
                "difference integration needs exactly two images (before, after) per sample; got "
                f"batch_num_images={found}. Build inputs with RsccProcessor(images=[[before, after], ...])."
            )
        if pixel_values.dim() == 5:
            pixel_values = pixel_values[:, 0]
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")

        kwargs.pop("return_dict", None)
        wanted_layers = sorted({vision_feature_layer, *self.config.difference_feature_layers})
        kwargs["output_hidden_states"] = kwargs.get("output_hidden_states") or wanted_layers
        vision_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        first_token = 1 if vision_feature_select_strategy == "default" else 0

        def select(layer):
            return vision_outputs.hidden_states[layer][:, first_token:]

        levels = [select(layer) for layer in self.config.difference_feature_layers]
        features = select(vision_feature_layer)
        before, after = self.difference_module(
            [level[0::2] for level in levels], [level[1::2] for level in levels], features[0::2], features[1::2]
        )
        features = torch.stack([before, after], dim=1).flatten(0, 1)
        projected = self.multi_modal_projector(features)
        image_features, _ = self.pack_image_features(
            [image[None] for image in projected],
            image_sizes,
            image_newline=self.image_newline,
            vision_aspect_ratio=vision_aspect_ratio,
        )
        vision_outputs.pooler_output = image_features
        return vision_outputs


class RsccForConditionalGeneration(RsccPreTrainedModel, LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision for change captioning: [`RsccModel`] plus the language-model head.

    Example:

    ```python
    >>> from rscc import RsccForConditionalGeneration, RsccProcessor

    >>> model = RsccForConditionalGeneration.from_llava_onevision("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    >>> processor = RsccProcessor.from_llava_onevision("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    >>> inputs = processor(images=[["before.png", "after.png"]], return_tensors="pt")
    >>> processor.post_process_captions(model.generate(**inputs, max_new_tokens=40), inputs)
    ```"""

    def __init__(self, config: RsccConfig):
        # Skip LlavaOnevisionForConditionalGeneration.__init__, which would build a stock LlavaOnevisionModel.
        super(LlavaOnevisionForConditionalGeneration, self).__init__(config)
        self.model = RsccModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_llava_onevision(
        cls,
        pretrained_model_name_or_path: str,
        *,
        output_loading_info: bool = False,
        from_pretrained_kwargs: dict | None = None,
        **config_overrides,
    ):
        """Build an rscc model from a LLaVA-OneVision checkpoint: base weights loaded, new modules initialised.

        Args:
            pretrained_model_name_or_path (`str`): Hub id or folder of a `llava_onevision` checkpoint.
            output_loading_info (`bool`, *optional*): also return the report of new weights.
            from_pretrained_kwargs (`dict`, *optional*): passed to `from_pretrained` (`dtype`, `device_map`,
                `revision`, `attn_implementation`, ...).
            **config_overrides: [`RsccConfig`] options, e.g. `difference_num_blocks=2`.

        Returns:
            The model, or `(model, report)` where `report` maps `new_parameters` (names), `num_new_parameters`
            and `num_loaded_parameters`.
        """
        from_pretrained_kwargs = dict(from_pretrained_kwargs or {})
        hub_kwargs = {
            key: from_pretrained_kwargs[key]
            for key in ("revision", "cache_dir", "token", "local_files_only")
            if key in from_pretrained_kwargs
        }
        base_config = LlavaOnevisionConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if base_config.model_type != LlavaOnevisionConfig.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a '{base_config.model_type}' model, not 'llava_onevision'; "
                "load rscc checkpoints with RsccForConditionalGeneration.from_pretrained"
            )
        unknown = sorted(set(config_overrides) - set(RsccConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown RsccConfig option(s) {unknown}")
        base_options = base_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map"):
            base_options.pop(key, None)
        config = RsccConfig(**{**base_options, **config_overrides})
        model, loading_info = cls.from_pretrained(
            pretrained_model_name_or_path, config=config, output_loading_info=True, **from_pretrained_kwargs
        )
        new_names = sorted(loading_info["missing_keys"])
        stray = [name for name in new_names if not name.startswith("model.difference_module.")]
        problems = {
            "missing base weights": stray,
            "unexpected weights": sorted(loading_info["unexpected_keys"]),
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
            f"{num_new / 1e6:.1f}M parameters, all under model.difference_module (zero-initialised output scale: "
            "outputs equal the base model until trained)."
        )
        return (model, report) if output_loading_info else model


RsccForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["RsccPreTrainedModel", "RsccModel", "RsccForConditionalGeneration"]
