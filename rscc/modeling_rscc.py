"""rscc models: LLaVA-OneVision with CCExpert's difference-aware integration of the two images of a pair (or KCFI's
key change features), an MV-CC change-mask token filter, a change-detection head and Semantic-CC's bi-temporal filter
inside the vision tower (KCFI's and Semantic-CC's modules in `change_features_rscc.py`).

The stock LLaVA-OneVision parameter names are kept, so a LLaVA-OneVision checkpoint loads unchanged; the new
modules live under `NEW_MODULE_PREFIXES`. The difference module and the bi-temporal filters enter through
zero-initialised scales and the head only acts through the filter, so a freshly built model that shows the language
model the two images (`visual_tokens="pair"`) computes exactly what the stock model computes until training moves
those scales or a mask filters the tokens.
"""

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    PreTrainedConfig,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    LlavaOnevisionModelOutputWithPast,
    LlavaOnevisionPreTrainedModel,
)
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .change_features_rscc import RsccBitemporalFilter, RsccChangeProjector, RsccKeyChangePerceiver
from .compat_rscc import given_cache
from .configuration_rscc import IGNORE_INDEX, VIDEO_ENCODER_FAMILIES, RsccConfig
from .video_rscc import RsccVideoChangeHead, RsccVideoEncoder

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


@dataclass
class RsccImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`RsccModel.get_image_features`].

    pooler_output (`list[torch.Tensor]`):
        One `(tokens, text_hidden_size)` tensor per entry: under `pair_encoding="images"`, one per image of each
        sample (before then after for a pair), or for `visual_tokens` other than `"pair"` one per segment of
        `config.visual_segments` of each pair, each the projected grid tokens then the newline token; under a video
        encoding, one per sample: the tokens of every frame (or tubelet) then one newline token. Under
        `change_filter="multiply"` the unchanged grid tokens are zero.
    change_logits (`torch.FloatTensor` of shape `(num_pairs, change_head_num_classes, height, width)`, *optional*):
        The change head's logits at the resolution of `pixel_values`; class 0 is "no change".
    kept_tokens (`torch.BoolTensor` of shape `(len(pooler_output), tokens per entry)`, *optional*):
        Under `change_filter="drop"`, which tokens of each `pooler_output` entry the language model sees (changed
        tokens, the context sub-grid and the newline token). `None` when no token is dropped.
    entries_per_sample (`list[int]`, *optional*):
        `pooler_output` entries per sample: its number of images (dates), its number of segments, or 1 under a
        video encoding. `None`: 2 (pairs, as LLaVA-OneVision's own output for them).
    """

    change_logits: torch.FloatTensor | None = None
    kept_tokens: torch.BoolTensor | list[torch.BoolTensor] | None = None
    entries_per_sample: list[int] | None = None

    def select_pairs(self, pair_indices: list[int]) -> "RsccImageFeaturesOutput":
        """The features `generate` reads (`pooler_output`, `change_logits`, `kept_tokens`) of some samples (pairs or
        series) only, e.g. to pass as `mm_encoder_outputs={"image": ...}` with the matching rows of `input_ids`."""
        per_sample = self.entries_per_sample or [2] * (len(self.pooler_output) // 2)
        starts = [sum(per_sample[:index]) for index in range(len(per_sample))]
        entries = [starts[sample] + offset for sample in pair_indices for offset in range(per_sample[sample])]
        kept_tokens = self.kept_tokens
        if kept_tokens is not None:
            kept_tokens = [kept_tokens[index] for index in entries]
            kept_tokens = torch.stack(kept_tokens) if isinstance(self.kept_tokens, torch.Tensor) else kept_tokens
        return RsccImageFeaturesOutput(
            pooler_output=[self.pooler_output[index] for index in entries],
            change_logits=None if self.change_logits is None else self.change_logits[pair_indices],
            kept_tokens=kept_tokens,
            entries_per_sample=[per_sample[sample] for sample in pair_indices],
        )

    def kept_only(self) -> "RsccImageFeaturesOutput":
        """The features of the kept tokens alone (`kept_tokens` `None`): what the language model receives under
        `change_filter="drop"`, one tensor per image with as many rows as the image keeps placeholders."""
        if self.kept_tokens is None:
            return self
        return RsccImageFeaturesOutput(
            pooler_output=[
                features[kept.to(features.device)] for features, kept in zip(self.pooler_output, self.kept_tokens)
            ],
            change_logits=self.change_logits,
            entries_per_sample=self.entries_per_sample,
        )


@dataclass
class RsccModelOutputWithPast(LlavaOnevisionModelOutputWithPast):
    r"""
    [`LlavaOnevisionModelOutputWithPast`] plus:

    change_logits (`torch.FloatTensor` of shape `(num_pairs, change_head_num_classes, height, width)`, *optional*):
        The change head's logits at the resolution of `pixel_values`.
    kept_positions (`torch.LongTensor` of shape `(batch_size, language_model_length)`, *optional*):
        Under `change_filter="drop"`, the input position each language-model position comes from, `-1` for padding:
        `last_hidden_state[b, j]` belongs to `input_ids[b, kept_positions[b, j]]`. `None` when nothing was dropped.
    """

    change_logits: torch.FloatTensor | None = None
    kept_positions: torch.LongTensor | None = None


@dataclass
class RsccCausalLMOutputWithPast(LlavaOnevisionCausalLMOutputWithPast):
    r"""
    [`LlavaOnevisionCausalLMOutputWithPast`] plus:

    change_logits (`torch.FloatTensor` of shape `(num_pairs, change_head_num_classes, height, width)`, *optional*):
        The change head's logits at the resolution of `pixel_values`.
    caption_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
        Caption cross-entropy.
    change_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when the model has a change head and a pair
        of the batch has a `change_masks` label): change-detection cross-entropy (plus the weighted Dice term).
        `loss` combines both as `config.change_loss_weighting` says.
    kept_positions (`torch.LongTensor` of shape `(batch_size, language_model_length)`, *optional*):
        Under `change_filter="drop"`, the input position of each position of `logits`, `-1` for padding.
    """

    change_logits: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    change_loss: torch.FloatTensor | None = None
    kept_positions: torch.LongTensor | None = None


def change_masks_to_tokens(change_masks: torch.Tensor, grid_size: int) -> torch.BoolTensor:
    """Binarise change masks and sample them at the centre of each vision token (MV-CC's nearest downsampling).

    Any non-zero value is change, unlabelled pixels (`IGNORE_INDEX`) included: a token nobody labelled is kept
    rather than hidden. `nearest-exact` samples each token's centre pixel; torch's `nearest` would take the top-left
    one and shift masks by half a token.

    Args:
        change_masks (`torch.Tensor` of shape `(num_pairs, height, width)`): class ids, any resolution.
        grid_size (`int`): side of the token grid (27 for SigLIP-384).

    Returns:
        `torch.BoolTensor` of shape `(num_pairs, grid_size * grid_size)`, row-major like the vision tokens.
    """
    changed = (change_masks != 0).to(torch.float32)[:, None]
    sampled = nn.functional.interpolate(changed, size=(grid_size, grid_size), mode="nearest-exact")
    return sampled[:, 0].flatten(1) > 0


def context_token_mask(grid_size: int, num_tokens: int, device=None) -> torch.BoolTensor:
    """The context floor of `change_filter="drop"`: a uniform `sqrt(num_tokens)`-sided sub-grid of token centres.

    Returns:
        `torch.BoolTensor` of shape `(grid_size * grid_size,)`, `num_tokens` of them set.
    """
    side = math.isqrt(num_tokens)
    mask = torch.zeros(grid_size, grid_size, dtype=torch.bool, device=device)
    if side:
        centres = ((torch.arange(side, device=device) + 0.5) * grid_size / side).long()
        mask[centres[:, None], centres[None, :]] = True
    return mask.flatten()


def pack_kept_positions(keep: torch.BoolTensor, left_padding: bool) -> torch.LongTensor:
    """For each sample, its kept input positions in order, padded with -1 up to the sample that keeps most.

    Args:
        keep (`torch.BoolTensor` of shape `(batch_size, seq_len)`): positions to keep.
        left_padding (`bool`): pad on the left (generation: every sample ends on its last real token) or the right.

    Returns:
        `torch.LongTensor` of shape `(batch_size, max kept count)`.
    """
    batch_size, length = keep.shape
    counts = keep.sum(1)
    longest = int(counts.max())
    positions = torch.arange(length, device=keep.device)
    # Kept positions sort before dropped ones (offset by `length`), so each row lists its kept positions first.
    kept_first = torch.sort(torch.where(keep, positions, positions + length), dim=1).values[:, :longest]
    slots = torch.arange(longest, device=keep.device).expand(batch_size, longest)
    if left_padding:
        slots = slots - (longest - counts)[:, None]
    valid = (slots >= 0) & (slots < counts[:, None])
    return torch.where(valid, kept_first.gather(1, slots.clamp(0, max(longest - 1, 0))), -1)


def gather_positions(values: torch.Tensor, kept_positions: torch.LongTensor, fill_value) -> torch.Tensor:
    """Select `values[b, kept_positions[b, j]]` along the sequence dimension, `fill_value` where the index is -1.

    Args:
        values (`torch.Tensor` of shape `(batch_size, seq_len)` or `(batch_size, seq_len, dim)`).
        kept_positions (`torch.LongTensor` of shape `(batch_size, new_len)`), from [`pack_kept_positions`].

    Returns:
        `torch.Tensor` of shape `(batch_size, new_len)` or `(batch_size, new_len, dim)`.
    """
    index = kept_positions.clamp(min=0)
    padding = kept_positions < 0
    if values.dim() == 3:
        index = index[..., None].expand(-1, -1, values.shape[-1])
        padding = padding[..., None]
    return values.gather(1, index).masked_fill(padding, fill_value)


def first_predicting_position(labels: torch.Tensor) -> int:
    """Index of the first position whose next-token target is supervised in any row of `labels` (the causal shift:
    position i predicts label i + 1); `labels.shape[1] - 1` when nothing is supervised (a one-position window)."""
    supervised = (labels[:, 1:] != IGNORE_INDEX).any(0)
    return int(supervised.float().argmax()) if bool(supervised.any()) else labels.shape[1] - 1


def date_pairs(num_dates: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """The (earlier, later) image pairs the difference module compares in each sample: consecutive dates, plus first
    to last when a sample has more than two (a pair is compared once).

    Args:
        num_dates (`torch.LongTensor` of shape `(batch_size,)`): images per sample, each at least 2.

    Returns:
        `(earlier, later, sample)`: indices into the batch's images (samples in turn) of each pair's dates, and the
        pair's sample index.
    """
    starts = (num_dates.cumsum(0) - num_dates).tolist()
    earlier, later, sample = [], [], []
    for index, (start, count) in enumerate(zip(starts, num_dates.tolist())):
        pairs = [(date, date + 1) for date in range(count - 1)] + ([(0, count - 1)] if count > 2 else [])
        earlier += [start + first for first, _ in pairs]
        later += [start + second for _, second in pairs]
        sample += [index] * len(pairs)
    return tuple(torch.tensor(values, dtype=torch.long, device=num_dates.device) for values in (earlier, later, sample))


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


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with an explicit softmax (transformers' `"eager"` implementation for [`RsccAttention`]).

    Returns:
        `(attn_output, attn_weights)` of shapes `(batch, query_len, heads, head_dim)` and
        `(batch, heads, query_len, key_len)`.
    """
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class RsccAttention(nn.Module):
    """Multi-head attention whose queries and keys carry position/role embeddings and whose values do not.

    It runs through transformers' attention interface, so `attn_implementation=` and `set_attn_implementation`
    choose its kernel as they do the vision tower's and the language model's.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.config = config
        self.num_heads = config.difference_num_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            queries (`torch.Tensor` of shape `(batch, query_len, dim)`)
            keys (`torch.Tensor` of shape `(batch, key_len, dim)`)
            values (`torch.Tensor` of shape `(batch, key_len, dim)`)
            key_mask (`torch.Tensor` of shape `(batch, 1, 1, key_len)`, *optional*): added to the attention scores,
                a large negative value at padding keys.

        Returns:
            `torch.Tensor` of shape `(batch, query_len, dim)`.
        """
        batch, query_len, dim = queries.shape

        def split_heads(states):
            return states.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attended, _ = attention(
            self,
            split_heads(self.q_proj(queries)),
            split_heads(self.k_proj(keys)),
            split_heads(self.v_proj(values)),
            key_mask,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.o_proj(attended.reshape(batch, query_len, dim))


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
        eps = config.difference_layer_norm_eps
        self.self_attn = RsccAttention(config)
        self.self_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.change_to_images_attn = RsccAttention(config)
        self.change_to_images_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, int(dim * config.difference_mlp_ratio))
        self.act = ACT2FN["gelu"]
        self.fc2 = nn.Linear(int(dim * config.difference_mlp_ratio), dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.images_to_change_attn = RsccAttention(config)
        self.images_norm = nn.LayerNorm(dim, eps=eps)

    def forward(
        self,
        change: torch.Tensor,
        before: torch.Tensor,
        after: torch.Tensor,
        position_embedding: torch.Tensor,
        role_embedding: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            change, before, after (`torch.Tensor` of shape `(batch, num_tokens, dim)`):
                Change tokens and the tokens of the two images.
            position_embedding (`torch.Tensor` of shape `(num_tokens, dim)` or `(batch, num_tokens, dim)`): 2-D
                position of each token.
            role_embedding (`torch.Tensor` of shape `(3, dim)`): learned before / after / change flags.
            key_mask (`torch.Tensor` of shape `(batch, 1, 1, num_tokens)`, *optional*): additive mask of padding
                tokens (packed token subsets of different sizes); `None` when every token is real.

        Returns:
            The updated `(change, before, after)`, same shapes.
        """
        role_before, role_after, role_change = role_embedding
        two_masks = None if key_mask is None else torch.cat([key_mask, key_mask], dim=-1)
        three_masks = None if key_mask is None else torch.cat([key_mask, key_mask, key_mask], dim=-1)
        change_keys = change + position_embedding + role_change
        change = self.self_attn_norm(change + self.self_attn(change_keys, change_keys, change, key_mask))

        change_queries = change + position_embedding + role_change
        before_keys = before + position_embedding + role_before
        after_keys = after + position_embedding + role_after
        context_keys = torch.cat([before_keys, after_keys, change_queries], dim=1)
        context_values = torch.cat([before, after, change], dim=1)
        change = self.change_to_images_norm(
            change + self.change_to_images_attn(change_queries, context_keys, context_values, three_masks)
        )
        change = self.mlp_norm(change + self.fc2(self.act(self.fc1(change))))

        change_keys = change + position_embedding + role_change
        before = self.images_norm(
            before
            + self.images_to_change_attn(
                before_keys, torch.cat([before_keys, change_keys], 1), torch.cat([before, change], 1), two_masks
            )
        )
        after = self.images_norm(
            after
            + self.images_to_change_attn(
                after_keys, torch.cat([after_keys, change_keys], 1), torch.cat([after, change], 1), two_masks
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
        token_mask: torch.BoolTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            before_levels, after_levels (`list[torch.Tensor]`, each of shape `(num_pairs, num_tokens, dim)`):
                Vision hidden states of the levels in `config.difference_feature_layers`.
            before_features, after_features (`torch.Tensor` of shape `(num_pairs, num_tokens, dim)`):
                The features the stock model projects (`vision_feature_layer`).
            token_mask (`torch.BoolTensor` of shape `(num_pairs, num_tokens)`, *optional*): the tokens to refine (a
                change filter's kept tokens). The module then runs on those tokens alone, packed into one batch
                (attention, change tokens and the level gates' pooling all over the kept tokens), and the other
                tokens keep their raw features. Every pair needs at least one token; `None` (or all set): every
                token, exactly as without a mask.

        Returns:
            `(before, after, change)`: the features to project, shapes as `before_features`, and the change tokens
            (the level-gated mean of the blocks' change tokens; zero at tokens outside `token_mask`).
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
        key_mask = real = kept_positions = None
        if token_mask is not None and not bool(token_mask.all()):
            # Levels are stacked along the batch: each level's pairs keep the same tokens.
            kept_positions = pack_kept_positions(token_mask.to(before.device), left_padding=False)
            level_positions = kept_positions.repeat(num_levels, 1)
            before = gather_positions(before, level_positions, 0.0)
            after = gather_positions(after, level_positions, 0.0)
            position_embedding = position_embedding[level_positions.clamp(min=0)]
            real = (level_positions >= 0)[..., None].to(before.dtype)
            padding = torch.finfo(before.dtype).min
            key_mask = ((1 - real[..., 0]) * padding)[:, None, None, :]
        change = self.change_init(before, after)
        for index, block in enumerate(self.blocks):
            if index:
                # From the second block on, the change queries are refreshed from the updated images.
                change = change + self.change_init(before, after)
            change, before, after = block(change, before, after, position_embedding, self.role_embedding, key_mask)

        if real is None:
            pooled = torch.cat([before.mean(1), after.mean(1), change.mean(1)], dim=-1)
        else:
            count = real.sum(1)
            pooled = torch.cat([(states * real).sum(1) / count for states in (before, after, change)], dim=-1)
        gates = torch.sigmoid(self.level_gate(pooled)).view(num_levels, num_pairs, 1, 1)
        normaliser = gates.sum(0) + 1e-6
        kept_count = before.shape[1]
        fused_before = (gates * before.view(num_levels, num_pairs, kept_count, dim)).sum(0) / normaliser
        fused_after = (gates * after.view(num_levels, num_pairs, kept_count, dim)).sum(0) / normaliser
        fused_change = (gates * change.view(num_levels, num_pairs, kept_count, dim)).sum(0) / normaliser
        if kept_positions is not None:
            # Back onto the grid: padding slots add zeros, so the scatter is exact.
            index = kept_positions.clamp(min=0)[..., None].expand(-1, -1, dim)
            pair_real = real[:num_pairs]
            fused_before = fused_before.new_zeros(num_pairs, num_tokens, dim).scatter_add(
                1, index, fused_before * pair_real
            )
            fused_after = fused_after.new_zeros(num_pairs, num_tokens, dim).scatter_add(
                1, index, fused_after * pair_real
            )
            fused_change = fused_change.new_zeros(num_pairs, num_tokens, dim).scatter_add(
                1, index, fused_change * pair_real
            )
        return (
            before_features + self.output_scale * fused_before,
            after_features + self.output_scale * fused_after,
            fused_change,
        )


class RsccChangeHead(nn.Module):
    """Change-detection head on the vision token grid: KCFI's light head plus one 3x3 convolution for local context.

    Per token it reads `[A; B; |A - B|]` (KCFI's key change features `|A - B|`, plus both dates so the head can tell
    an appearing object from a disappearing one and name its class), projects it, mixes each token with its
    neighbours, and classifies. The logits are then upsampled bilinearly to the input resolution: projecting to the
    classes before upsampling equals KCFI's upsample-then-1x1-convolution (both are linear) at a fraction of the cost.

    Why not Semantic-CC's SimpleFPN decoder: here the head is the gate that decides, per vision token, what the filter
    keeps and whether a pair changed at all, before the difference module and the language model run. Those decisions
    live on the token grid, so a pyramid of deconvolutions up to 4x the grid (millions of parameters at width 1152 and
    per-pixel work) would buy boundary detail that nothing downstream uses. This head has about 1.5M parameters at
    LLaVA-OneVision-0.5B dimensions and costs well under 1% of the vision tower.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        hidden = config.change_head_hidden_size
        self.grid_size = config.vision_grid_size
        self.input_norm = nn.LayerNorm(dim, eps=config.vision_config.layer_norm_eps)
        self.input_proj = nn.Linear(3 * dim, hidden)
        self.context_conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.classifier = nn.Conv2d(hidden, config.change_head_num_classes, kernel_size=1)

    def forward(self, before: torch.Tensor, after: torch.Tensor, change: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            before, after (`torch.Tensor` of shape `(num_pairs, grid_size * grid_size, vision_hidden_size)`):
                Vision features of the two images of each pair.
            change (`torch.Tensor` of the same shape, *optional*): change features read in place of `|A - B|`
                (KCFI's key change features under `change_features="key_change"`).

        Returns:
            `torch.Tensor` of shape `(num_pairs, num_classes, grid_size, grid_size)`: logits per token.
        """
        before, after = self.input_norm(before), self.input_norm(after)
        change = (before - after).abs() if change is None else change
        tokens = self.act(self.input_proj(torch.cat([before, after, change], dim=-1)))
        grid = tokens.transpose(1, 2).unflatten(2, (self.grid_size, self.grid_size))
        return self.classifier(self.act(self.context_conv(grid)))


class RsccPreTrainedModel(LlavaOnevisionPreTrainedModel):
    config: RsccConfig
    config_class = RsccConfig
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "RsccChangeAwareBlock", "RsccChangeHead"]
    # Pair validation reads `batch_num_images` on the host.
    _can_compile_fullgraph = False

    @classmethod
    def is_custom_code(cls) -> bool:
        """`False`: rscc initialises its weights through `transformers.initialization`, as transformers' own models do.

        transformers initialises the missing weights of models defined elsewhere with a shortcut that treats a module
        without parameters of its own as initialised; SigLIP initialises its attention and MLP layers at that level,
        so `from_pretrained` without vision weights would give SigLIP other weights than `__init__` does.
        """
        return False

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
        if isinstance(module, RsccBitemporalFilter):
            init.zeros_(module.output_scale)


class RsccModel(RsccPreTrainedModel, LlavaOnevisionModel):
    """[`LlavaOnevisionModel`] for (before, after) pairs: difference integration of the two images' features, a
    change-detection head, and a change-mask filter of the vision tokens the language model sees.

    Every sample holds at least two co-registered images, oldest first: a (before, after) pair or a series of dates
    (`batch_num_images` each >= 2, samples of a batch may differ). The difference module compares consecutive dates
    and first to last; the change head and the change masks describe first to last. Change tokens
    (`visual_tokens` other than `"pair"`), key change features and the bi-temporal filter take pairs only.
    """

    def __init__(self, config: RsccConfig):
        super().__init__(config)
        self.video_encoder = None
        if config.pair_encoding == "video_encoder":
            # MV-CC: the video encoder and its own projector replace SigLIP and LLaVA-OneVision's projector.
            self.vision_tower = None
            self.multi_modal_projector = None
            self.video_encoder = RsccVideoEncoder(config)
        change_features = config.change_features if config.use_difference_integration else None
        self.difference_module = (
            RsccDifferenceIntegration(config) if change_features == "difference_integration" else None
        )
        self.key_change_perceiver = RsccKeyChangePerceiver(config) if change_features == "key_change" else None
        self.change_projector = RsccChangeProjector(config) if "change" in config.visual_segments else None
        head = RsccVideoChangeHead if self.video_encoder is not None else RsccChangeHead
        self.change_head = head(config) if config.use_change_head else None
        self.bitemporal_filter = None
        if config.bitemporal_filter_layers:
            self.bitemporal_filter = nn.ModuleList(
                [RsccBitemporalFilter(config) for _ in config.bitemporal_filter_layers]
            )
            encoder_layers = self.vision_tower.encoder.layers
            for index, bitemporal_filter in zip(config.bitemporal_filter_encoder_layers, self.bitemporal_filter):
                # First among the layer's hooks: transformers' hidden-state recorder then sees the filtered output.
                encoder_layers[index].register_forward_hook(bitemporal_filter.after_layer, prepend=True)
        # LlavaOnevisionModel.__init__ already ran post_init; run it again so the new module is initialised too
        # (modules initialised once are skipped).
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        change_masks: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(num_images, num_patches, channels, height, width)` or
                `(num_images, channels, height, width)`): the images of every sample in turn, oldest first (before
                then after for a pair). Only the base view (`[:, 0]`) is used, as LLaVA-OneVision does for
                multi-image samples.
            image_sizes (`torch.Tensor` of shape `(num_images, 2)`): original (height, width) of each image.
            batch_num_images (`torch.LongTensor` of shape `(batch_size,)`): images (dates) per sample, each at least
                2 (exactly the video encoder's frames per clip, `config.video_num_frames`, under
                `pair_encoding="video_encoder"`).
            change_masks (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*): class ids per sample
                (first to last date) at any resolution (0 no change), `IGNORE_INDEX` where unlabelled; from
                `RsccProcessor(change_masks=...)`.

        Returns:
            [`RsccImageFeaturesOutput`] whose `pooler_output` is a list of `(num_tokens + 1, text_hidden)` tensors,
            one per image (grid tokens then the newline token), one per segment of `config.visual_segments` of each
            pair, or, under a video `config.pair_encoding`, one per sample (every frame's tokens then one newline
            token), with the head's first-to-last `change_logits` and, under `change_filter="drop"`, the
            `kept_tokens`. A model with none of the rscc modules and `pair_encoding="images"` returns
            LLaVA-OneVision's output unchanged.
        """
        config = self.config
        if config.pair_encoding == "video_encoder":
            return self._video_encoder_features(pixel_values, batch_num_images, change_masks)
        rscc_modules = (self.difference_module, self.key_change_perceiver, self.change_head, self.bitemporal_filter)
        unchanged = all(module is None for module in rscc_modules) and config.change_filter == "none"
        if unchanged and config.pair_encoding == "images":
            return super().get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                return_dict=True,
                **kwargs,
            )
        vision_feature_layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        vision_feature_select_strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
        vision_aspect_ratio = vision_aspect_ratio or config.vision_aspect_ratio
        pixel_values, change_masks, num_dates = self._checked_series_inputs(
            pixel_values, batch_num_images, change_masks
        )
        self._check_pairs_only_options(num_dates)

        has_change_features = self.difference_module is not None or self.key_change_perceiver is not None
        levels = config.difference_feature_layers if has_change_features else []
        wanted_layers = sorted({vision_feature_layer, *levels})
        kwargs["output_hidden_states"] = kwargs.get("output_hidden_states") or wanted_layers
        vision_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        first_token = 1 if vision_feature_select_strategy == "default" else 0

        def select(layer):
            return vision_outputs.hidden_states[layer][:, first_token:]

        features = select(vision_feature_layer)
        last = num_dates.cumsum(0) - 1
        first = last - num_dates + 1
        change = None
        if self.key_change_perceiver is not None:
            change = self.key_change_perceiver(
                [select(layer)[first] for layer in levels], [select(layer)[last] for layer in levels]
            )
        grid_logits = (
            self.change_head(features[first], features[last], change) if self.change_head is not None else None
        )
        changed_tokens = self._changed_tokens(change_masks, grid_logits)
        keep = self._seen_grid_tokens(changed_tokens)
        if self.difference_module is not None:
            # Under "llava_video" the filter's grid is the pooled one, so the module refines every token.
            module_keep = keep if config.pair_encoding == "images" else None
            features, change = self._integrate_differences(
                [select(layer) for layer in levels], features, num_dates, changed_tokens, module_keep
            )
        if config.visual_tokens == "pair":
            projected, grid_sizes, grids_per_sample = self.multi_modal_projector(features), image_sizes, num_dates
        else:
            projected, grid_sizes = self._project_segments(features[first], features[last], change, image_sizes)
            grids_per_sample = torch.full_like(num_dates, len(config.visual_segments))
        if config.pair_encoding == "llava_video":
            projected = self.apply_pooling(projected)
        projected, kept_tokens = self._filter_tokens(projected, grids_per_sample, changed_tokens, keep)
        return RsccImageFeaturesOutput(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=self._with_newline_tokens(projected, num_dates, grid_sizes, vision_aspect_ratio),
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            change_logits=self._full_resolution(grid_logits, pixel_values),
            kept_tokens=kept_tokens,
            entries_per_sample=grids_per_sample.tolist() if config.pair_encoding == "images" else [1] * len(num_dates),
        )

    def _check_pairs_only_options(self, num_dates: torch.LongTensor) -> None:
        """Refuse samples of other than two dates when an option that compares a before and an after image is set."""
        options = self.config.pairs_only_options
        if options and bool((num_dates != 2).any()):
            raise ValueError(
                f"batch_num_images={num_dates.tolist()}: {', '.join(options)} take (before, after) pairs only; "
                "caption series of dates with visual_tokens='pair', change_features='difference_integration' and no "
                "bitemporal filter"
            )

    def _with_newline_tokens(
        self, projected: torch.Tensor, num_dates: torch.LongTensor, grid_sizes: torch.Tensor, vision_aspect_ratio: str
    ) -> list[torch.Tensor]:
        """The language model's entries from the projected grids: each grid then its newline token, or under
        `"llava_video"` (LLaVA-OneVision's video layout) every frame's pooled grid of a sample then one newline."""
        if self.config.pair_encoding == "llava_video":
            newline = self.image_newline[None].to(projected.dtype)
            return [torch.cat([*frames, newline]) for frames in projected.split(num_dates.tolist())]
        image_features, _ = self.pack_image_features(
            [image[None] for image in projected],
            grid_sizes,
            image_newline=self.image_newline,
            vision_aspect_ratio=vision_aspect_ratio,
        )
        return image_features

    def _video_encoder_features(
        self, pixel_values: torch.Tensor, batch_num_images: torch.LongTensor | None, change_masks: torch.Tensor | None
    ) -> RsccImageFeaturesOutput:
        """`get_image_features` under `pair_encoding="video_encoder"`: every sample's frames through the video encoder
        at once; per sample, the projected tokens of every temporal step, then one newline token."""
        pixel_values, change_masks, num_dates = self._checked_series_inputs(
            pixel_values, batch_num_images, change_masks
        )
        num_frames = self.config.video_num_frames
        if bool((num_dates != num_frames).any()):
            frames_field = self.config.video_encoder_family.num_frames_field
            raise ValueError(
                f"batch_num_images={num_dates.tolist()}: this model's video encoder takes {frames_field}={num_frames} "
                "dates per sample (its tubelets and positions are built for that many frames); caption longer "
                "series with pair_encoding='images' or 'llava_video'"
            )
        num_samples = len(num_dates)
        tokens = self.video_encoder(pixel_values.view(num_samples, num_frames, *pixel_values.shape[1:]))
        grid_logits = self.change_head(tokens) if self.change_head is not None else None
        changed_tokens = self._changed_tokens(change_masks, grid_logits)
        keep = self._seen_grid_tokens(changed_tokens)
        projected = self.video_encoder.projector(tokens)
        num_steps = torch.full_like(num_dates, projected.shape[1])
        projected, kept_tokens = self._filter_tokens(projected.flatten(0, 1), num_steps, changed_tokens, keep)
        newline = self.image_newline[None].to(projected.dtype)
        steps = projected.view(num_samples, -1, projected.shape[-1])
        return RsccImageFeaturesOutput(
            last_hidden_state=tokens.flatten(1, 2),
            pooler_output=[torch.cat([sample, newline]) for sample in steps],
            change_logits=self._full_resolution(grid_logits, pixel_values),
            kept_tokens=kept_tokens,
            entries_per_sample=[1] * num_samples,
        )

    def _filter_tokens(
        self,
        projected: torch.Tensor,
        grids_per_sample: torch.LongTensor,
        changed_tokens: torch.BoolTensor | None,
        keep: torch.BoolTensor | None,
    ) -> tuple[torch.Tensor, torch.BoolTensor | list[torch.BoolTensor] | None]:
        """Apply the change filter to the projected grids, `(num_grids, grid**2, dim)` with `grids_per_sample[i]`
        grids (images, video frames or temporal steps) for sample i, masks `(batch_size, grid**2)`.

        Returns:
            The grids (unchanged tokens zeroed under "multiply") and, under "drop", `kept_tokens`: a
            `(num_images, grid**2 + 1)` tensor under `pair_encoding="images"` (each image's grid and newline token), a
            list of one row per sample under a video encoding (its grids and its one newline token; samples of
            different N differ in length). The newline tokens are always kept.
        """
        if changed_tokens is None:
            return projected, None
        per_grid = changed_tokens.repeat_interleave(grids_per_sample.to(changed_tokens.device), dim=0)
        if self.config.change_filter == "multiply":
            return projected * per_grid[..., None].to(projected.dtype), None
        keep = keep.repeat_interleave(grids_per_sample.to(keep.device), dim=0)
        if self.config.pair_encoding == "images":
            return projected, torch.cat([keep, keep.new_ones(keep.shape[0], 1)], dim=1)
        newline = keep.new_ones(1)
        return projected, [torch.cat([*grids, newline]) for grids in keep.split(grids_per_sample.tolist())]

    @staticmethod
    def _full_resolution(grid_logits: torch.Tensor | None, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """The change head's grid logits upsampled (bilinear) to the resolution of `pixel_values`."""
        if grid_logits is None:
            return None
        return nn.functional.interpolate(
            grid_logits, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False
        )

    def _project_segments(
        self, before: torch.Tensor, after: torch.Tensor, change: torch.Tensor | None, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid tokens of `config.visual_segments` in language-model width, `(num_segments, grid**2, text_hidden)`,
        pair after pair, and each segment's image size (the change segment takes the after image's)."""
        segments = self.config.visual_segments
        projected, sizes = {}, {"before": image_sizes[0::2], "after": image_sizes[1::2], "change": image_sizes[1::2]}
        if "before" in segments:
            images = self.multi_modal_projector(torch.stack([before, after], dim=1).flatten(0, 1))
            projected["before"], projected["after"] = images[0::2], images[1::2]
        if "change" in segments:
            projected["change"] = self.change_projector(change)
        return (
            torch.stack([projected[name] for name in segments], dim=1).flatten(0, 1),
            torch.stack([sizes[name] for name in segments], dim=1).flatten(0, 1),
        )

    @staticmethod
    def _checked_series_inputs(
        pixel_values: torch.Tensor, batch_num_images: torch.LongTensor | None, change_masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.LongTensor]:
        """The base view of each image, `(num_images, channels, height, width)`, the masks on its device and the
        dates per sample (`batch_num_images` on that device), after checking that every sample holds at least two
        images (a pair or a series) and at most one mask."""
        if batch_num_images is None or any(int(n) < 2 for n in batch_num_images):
            found = None if batch_num_images is None else [int(n) for n in batch_num_images]
            raise ValueError(
                "rscc models need at least two images (a before, after pair or a series of dates) per sample; got "
                f"batch_num_images={found}. Build inputs with RsccProcessor(images=[[before, after], ...])."
            )
        if pixel_values.dim() == 5:
            pixel_values = pixel_values[:, 0]
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        num_dates = torch.as_tensor(batch_num_images, device=pixel_values.device).long()
        if int(num_dates.sum()) != pixel_values.shape[0]:
            raise ValueError(
                f"batch_num_images={num_dates.tolist()} count {int(num_dates.sum())} images, but pixel_values holds "
                f"{pixel_values.shape[0]}"
            )
        num_samples = len(num_dates)
        if change_masks is not None:
            if change_masks.dim() != 3 or change_masks.shape[0] != num_samples:
                raise ValueError(
                    f"change_masks of shape {tuple(change_masks.shape)}: expected (batch_size={num_samples}, height, "
                    "width), one mask per sample (first to last date); build them with RsccProcessor(change_masks=...)"
                )
            change_masks = change_masks.to(pixel_values.device)
        return pixel_values, change_masks, num_dates

    def _seen_grid_tokens(self, changed_tokens: torch.BoolTensor | None) -> torch.BoolTensor | None:
        """The grid tokens the language model will see with a value, `(batch_size, grid**2)`: the changed ones under
        "multiply", plus the context floor under "drop"; `None` without a filter."""
        if changed_tokens is None or self.config.change_filter != "drop":
            return changed_tokens
        return changed_tokens | context_token_mask(
            self.config.token_grid_size, self.config.change_filter_min_tokens, changed_tokens.device
        )

    def _changed_tokens(
        self, change_masks: torch.Tensor | None, grid_logits: torch.Tensor | None
    ) -> torch.BoolTensor | None:
        """Which grid tokens of each sample the filter treats as changed (first to last date), `(batch_size, grid**2)`;
        `None`: no filter."""
        if self.config.change_filter == "none":
            return None
        grid = self.config.token_grid_size
        given = None if change_masks is None else change_masks_to_tokens(change_masks, grid)
        if self.config.change_mask_source == "input":
            if given is None:
                logger.warning_once(
                    f"change_filter={self.config.change_filter!r} with change_mask_source='input' but no change_masks "
                    "were given: every vision token is kept"
                )
            return given
        predicted = change_masks_to_tokens(grid_logits.argmax(1), grid)
        if change_masks is None:
            return predicted
        # A given mask wins over the prediction (teacher forcing in training); samples without one use the head.
        has_mask = (change_masks != IGNORE_INDEX).flatten(1).any(1)
        return torch.where(has_mask[:, None], given, predicted)

    def _integrate_differences(
        self,
        levels: list[torch.Tensor],
        features: torch.Tensor,
        num_dates: torch.LongTensor,
        changed_tokens: torch.BoolTensor | None,
        kept_tokens: torch.BoolTensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the difference module on each sample's date pairs ([`date_pairs`]: consecutive dates and first to last)
        where a change filter needs it (everywhere without a filter), `features` `(num_images, grid**2, dim)`.

        A date in several pairs gets the mean of its refined versions; a pair's dates each appear once, so a pair
        gets exactly the module's output. A sample whose mask shows no change skips the module (28% of a stock
        pair's FLOPs): under "multiply" all its grid tokens are zeroed anyway, under "drop" only the context
        sub-grid remains. The other samples are refined on their kept tokens only (`kept_tokens`,
        `(batch_size, grid**2)`), the tokens the language model sees; `None`: on all.

        Returns:
            `(features, change)`: the refined features, and each sample's change tokens `(batch_size, grid**2, dim)`
            (zero for a sample that skips the module) where `visual_tokens` shows them, else `None`.
        """
        earlier, later, sample = date_pairs(num_dates)
        # Change tokens are shown for pairs only (`_check_pairs_only_options`): each sample's one pair gives them.
        shows_change = "change" in self.config.visual_segments
        change = features.new_zeros(len(num_dates), *features.shape[1:]) if shows_change else None
        if changed_tokens is not None:
            refined_pairs = changed_tokens.any(1)[sample]
            earlier, later, sample = earlier[refined_pairs], later[refined_pairs], sample[refined_pairs]
            if not len(sample):
                return features, change
        refined_earlier, refined_later, pair_change = self.difference_module(
            [level[earlier] for level in levels],
            [level[later] for level in levels],
            features[earlier],
            features[later],
            token_mask=None if kept_tokens is None else kept_tokens[sample],
        )
        if shows_change:
            change = change.index_copy(0, sample, pair_change)
        dates = torch.cat([earlier, later])
        counts = torch.bincount(dates, minlength=features.shape[0]).to(features.dtype)[:, None, None]
        summed = torch.zeros_like(features).index_add(0, dates, torch.cat([refined_earlier, refined_later]))
        return torch.where(counts > 0, summed / counts.clamp(min=1), features), change

    def prepare_language_model_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> dict:
        r"""
        Encode the images (unless `mm_encoder_outputs` holds them) and, under `change_filter="drop"`, shorten the
        sequence to the tokens the filter keeps: the one place where rscc's inputs become an ordinary LLaVA-OneVision
        input. The placeholders of dropped vision tokens leave `input_ids`, `attention_mask` and `labels`, and each
        sample is re-packed on the side the batch was padded on, so every image has as many placeholders as it
        keeps tokens. Embeddings, positions (contiguous: the language model's default) and the cache of `generate`
        all follow from that shorter sequence, as for any prompt.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`): with one placeholder per vision token.
            attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*).
            pixel_values, image_sizes, batch_num_images, change_masks: as for [`RsccModel.get_image_features`].
            mm_encoder_outputs (`dict`, *optional*): already encoded modalities; an `"image"` entry with `kept_tokens`
                (from `get_image_features` under `"drop"`) is shortened like features computed here.
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): shortened with the sequence.
            position_ids: refused under `"drop"` with features to shorten (they would describe the longer sequence).

        Returns:
            `dict` with `input_ids`, `attention_mask`, `labels` and `mm_encoder_outputs` (image features of the kept
            tokens only), plus `kept_positions` (`torch.LongTensor` of shape `(batch_size, new_len)`, the input
            position of each kept position, -1 for padding; `None` when nothing was shortened).
        """
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if pixel_values is not None and mm_encoder_outputs.get("image") is not None:
            raise ValueError("pass either pixel_values or mm_encoder_outputs['image'], not both")
        if pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                change_masks=change_masks,
                return_dict=True,
            )
        prepared = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_encoder_outputs": mm_encoder_outputs or None,
            "kept_positions": None,
        }
        image_outputs = mm_encoder_outputs.get("image")
        kept_tokens = getattr(image_outputs, "kept_tokens", None)
        if kept_tokens is None:
            return prepared
        if input_ids is None:
            raise ValueError(
                "change_filter='drop' needs input_ids (it removes the image placeholders of dropped tokens); "
                "inputs_embeds alone cannot be shortened"
            )
        if position_ids is not None:
            raise ValueError(
                "change_filter='drop' shortens the sequence, so position_ids of the full sequence do not apply; "
                "leave position_ids unset (the shortened sequence gets contiguous positions)"
            )
        image_positions = input_ids == self.config.image_token_id
        kept_flat = torch.cat([row.flatten() for row in kept_tokens])
        if int(image_positions.sum()) != kept_flat.numel():
            raise ValueError(
                f"input_ids hold {int(image_positions.sum())} image placeholders, but the images have "
                f"{kept_flat.numel()} tokens: build inputs with RsccProcessor"
            )
        keep = ~image_positions
        keep[image_positions] = kept_flat.to(keep.device)
        if attention_mask is not None:
            keep &= attention_mask.bool()
        left_padding = attention_mask is None or bool(attention_mask[:, -1].all())
        kept_positions = pack_kept_positions(keep, left_padding)
        pad_token_id = self.config.get_text_config().pad_token_id
        prepared["input_ids"] = gather_positions(input_ids, kept_positions, pad_token_id or 0)
        prepared["attention_mask"] = (kept_positions >= 0).long()
        if labels is not None:
            prepared["labels"] = gather_positions(labels, kept_positions.to(labels.device), IGNORE_INDEX)
        prepared["mm_encoder_outputs"] = {**mm_encoder_outputs, "image": image_outputs.kept_only()}
        prepared["kept_positions"] = kept_positions
        return prepared

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        **kwargs,
    ) -> RsccModelOutputWithPast:
        r"""
        [`LlavaOnevisionModel.forward`] on the inputs of [`RsccModel.prepare_language_model_inputs`]: under
        `change_filter="drop"` the language model runs on the shorter sequence of the kept tokens. Every other argument
        (`cache` / `past_key_values`, `position_ids`, `inputs_embeds`, `use_cache`, ...) goes to LLaVA-OneVision as is.

        Args:
            change_masks (`torch.Tensor` of shape `(num_pairs, height, width)`, *optional*):
                Class ids per pair (see [`RsccModel.get_image_features`]).
        """
        prepared = self.prepare_language_model_inputs(
            input_ids,
            attention_mask,
            pixel_values,
            image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=mm_encoder_outputs,
            change_masks=change_masks,
            position_ids=kwargs.get("position_ids"),
        )
        outputs = super().forward(
            input_ids=prepared["input_ids"],
            attention_mask=prepared["attention_mask"],
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=prepared["mm_encoder_outputs"],
            return_dict=True,
            **kwargs,
        )
        image_outputs = (prepared["mm_encoder_outputs"] or {}).get("image")
        return RsccModelOutputWithPast(
            **outputs,
            change_logits=getattr(image_outputs, "change_logits", None),
            kept_positions=prepared["kept_positions"],
        )


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
        # LLaVA-OneVision's constructor builds a stock model, which rscc's replaces (same parameter names): built on
        # the meta device, it costs no memory and no random initialisation (a minute at 0.5B on a CPU).
        with torch.device("meta"):
            super().__init__(config)
        # The stock model consumed the deprecated `config.gradient_checkpointing` flag; its replacement keeps it.
        checkpointing = self.is_activation_checkpointing
        self.model = RsccModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        if checkpointing:
            self.activation_checkpointing_enable()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        labelled_logits_only: bool = False,
        **kwargs,
    ) -> RsccCausalLMOutputWithPast:
        r"""
        [`LlavaOnevisionForConditionalGeneration.forward`] with the change-mask filter and the change-detection loss.
        Every argument not listed (`cache` / `past_key_values`, `position_ids`, `inputs_embeds`, `use_cache`, ...) goes
        to LLaVA-OneVision as is.

        Args:
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): caption targets (-100 elsewhere),
                aligned with `input_ids`; under `change_filter="drop"` they are shortened with the sequence.
            change_masks (`torch.Tensor` of shape `(num_pairs, height, width)`, *optional*): class ids per pair, 0 for
                no change, `IGNORE_INDEX` (-100) where unlabelled (all of it for pairs without a mask). They feed the
                filter (see `config.change_mask_source`) and, with a change head, the change-detection loss; pairs
                without a label add no detection loss.
            labelled_logits_only (`bool`, *optional*, defaults to `False`): with `labels`, run the LM head only from
                the position before the batch's first caption target to the end, and slice `labels` alike: the loss
                is the same, without the LM head and vocabulary-wide softmax over the ~1,500 image positions (about a
                tenth of a training step's FLOPs at 0.5B). `logits` then cover those last positions only.

        Returns:
            [`RsccCausalLMOutputWithPast`]: `loss` is `caption_loss + config.change_loss_weight * change_loss` when
            both exist, and whichever exists otherwise. Weightings that need the training history (`"dwa"`) or
            rescale by the losses themselves (`"normalized"`) are applied by rscc's Trainer from `caption_loss` and
            `change_loss`.
        """
        prepared = self.model.prepare_language_model_inputs(
            input_ids,
            attention_mask,
            pixel_values,
            image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=mm_encoder_outputs,
            change_masks=change_masks,
            labels=labels,
            position_ids=kwargs.get("position_ids"),
        )
        labels = prepared["labels"]
        outputs = self.model(
            input_ids=prepared["input_ids"],
            attention_mask=prepared["attention_mask"],
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=prepared["mm_encoder_outputs"],
            return_dict=True,
            **kwargs,
        )
        if labels is not None and labelled_logits_only:
            labels = labels[:, first_predicting_position(labels) :]
            logits_to_keep = labels.shape[1]
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, kept, :])

        caption_loss = change_loss = None
        if labels is not None:
            caption_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        if outputs.change_logits is not None and change_masks is not None:
            change_loss = self.change_detection_loss(outputs.change_logits, change_masks)
        if caption_loss is None or change_loss is None:
            loss = change_loss if caption_loss is None else caption_loss
        else:
            loss = caption_loss + self.config.change_loss_weight * change_loss

        language_model_outputs = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        language_model_outputs["kept_positions"] = prepared["kept_positions"]
        return RsccCausalLMOutputWithPast(
            loss=loss, logits=logits, caption_loss=caption_loss, change_loss=change_loss, **language_model_outputs
        )

    def change_detection_loss(self, change_logits: torch.Tensor, change_masks: torch.Tensor) -> torch.Tensor | None:
        """Cross-entropy (plus `config.change_dice_weight` x soft Dice) of the head over the labelled pixels.

        Args:
            change_logits (`torch.Tensor` of shape `(num_pairs, num_classes, height, width)`).
            change_masks (`torch.Tensor` of shape `(num_pairs, mask_height, mask_width)`): class ids, `IGNORE_INDEX`
                where unlabelled; resized (nearest) to the logits' resolution if it differs. A 2-class head reads
                every non-zero class as change.

        Returns:
            The loss, or `None` when no pair has a labelled pixel.
        """
        num_classes = change_logits.shape[1]
        targets = change_masks.to(change_logits.device).long()
        if targets.shape[-2:] != change_logits.shape[-2:]:
            targets = nn.functional.interpolate(
                targets[:, None].float(), size=tuple(change_logits.shape[-2:]), mode="nearest-exact"
            )[:, 0].long()
        labelled = targets != IGNORE_INDEX
        if not bool(labelled.any()):
            return None
        if num_classes == 2:
            targets = torch.where(labelled, (targets != 0).long(), targets)
        invalid = labelled & ((targets < 0) | (targets >= num_classes))
        if bool(invalid.any()):
            raise ValueError(
                f"change_masks hold {sorted(targets[invalid].unique().tolist())}: expected class ids "
                f"0..{num_classes - 1} or {IGNORE_INDEX} (unlabelled); build masks with RsccProcessor(change_masks=...)"
            )
        logits = change_logits.float()
        loss = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        if self.config.change_dice_weight > 0:
            probabilities = logits.softmax(1).movedim(1, -1)[labelled][:, 1:]
            one_hot = nn.functional.one_hot(targets[labelled], num_classes)[:, 1:].float()
            overlap = (probabilities * one_hot).sum(0)
            total = probabilities.sum(0) + one_hot.sum(0)
            # Smoothed so that a class absent from both prediction and target scores a perfect 1.
            dice = (2 * overlap + 1.0) / (total + 1.0)
            loss = loss + self.config.change_dice_weight * (1 - dice).mean()
        return loss

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        r"""
        [`GenerationMixin.generate`], with two rscc additions:

        - `input_ids` with image placeholders need their images (`pixel_values` or `mm_encoder_outputs`), unless a
          cache that already holds the prompt is given; without them the caption would come from the prompt alone.
        - Under `change_filter="drop"` the images are encoded first and generation runs on the shortened prompt of
          [`RsccModel.prepare_language_model_inputs`], so the cache, the attention mask and the positions all describe
          the sequence the language model saw, through the standard generation loop (beam search, assisted decoding,
          static caches included). The returned sequences still start with the caller's `input_ids`. To continue from
          a returned cache, pass the returned sequences with the same `pixel_values` (and `change_masks`) again.
        """
        input_ids = kwargs.pop("input_ids", inputs)
        image_outputs = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        has_images = kwargs.get("pixel_values") is not None or image_outputs is not None
        cache = given_cache(kwargs)
        cached_length = cache.get_seq_length() if cache is not None else 0
        placeholders = input_ids is not None and bool((input_ids == self.config.image_token_id).any())
        if placeholders and not has_images and (cached_length == 0 or self.config.change_filter == "drop"):
            raise ValueError(
                "input_ids hold image placeholders but no pixel_values (or mm_encoder_outputs) were given: the caption "
                "would come from the prompt alone. Pass the processor's whole output"
                + (
                    ", also when continuing from a cache under change_filter='drop' (the images decide which "
                    "placeholders the cached prompt kept)"
                    if cached_length
                    else ""
                )
            )
        if self.config.change_filter != "drop" or not has_images or input_ids is None:
            return super().generate(input_ids, **kwargs)

        prepared = self.model.prepare_language_model_inputs(
            input_ids,
            kwargs.pop("attention_mask", None),
            kwargs.pop("pixel_values", None),
            kwargs.get("image_sizes"),
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            vision_aspect_ratio=kwargs.get("vision_aspect_ratio"),
            batch_num_images=kwargs.get("batch_num_images"),
            mm_encoder_outputs=kwargs.pop("mm_encoder_outputs", None),
            change_masks=kwargs.pop("change_masks", None),
        )
        if prepared["mm_encoder_outputs"] is not None and not cached_length:
            # With a cache, the prompt's images are in it already.
            kwargs["mm_encoder_outputs"] = prepared["mm_encoder_outputs"]
        shortened = prepared["input_ids"]
        outputs = super().generate(shortened, attention_mask=prepared["attention_mask"], **kwargs)
        sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
        repeats = sequences.shape[0] // input_ids.shape[0]
        prompt = input_ids.repeat_interleave(repeats, dim=0).to(sequences.device)
        sequences = torch.cat([prompt, sequences[:, shortened.shape[1] :]], dim=1)
        if isinstance(outputs, torch.Tensor):
            return sequences
        outputs.sequences = sequences
        return outputs

    @classmethod
    def from_llava_onevision(
        cls,
        pretrained_model_name_or_path: str,
        *,
        output_loading_info: bool = False,
        from_pretrained_kwargs: dict | None = None,
        video_encoder: str | PreTrainedConfig | dict | None = None,
        **config_overrides,
    ):
        """Build an rscc model from a LLaVA-OneVision checkpoint: base weights loaded, new modules initialised.

        Args:
            pretrained_model_name_or_path (`str`): Hub id or folder of a `llava_onevision` checkpoint.
            output_loading_info (`bool`, *optional*): also return the report of new weights.
            from_pretrained_kwargs (`dict`, *optional*): passed to `from_pretrained` (`dtype`, `device_map`,
                `revision`, `attn_implementation`, ...).
            video_encoder (`str`, `PreTrainedConfig` or `dict`, *optional*): with `pair_encoding="video_encoder"`, the
                video encoder (VideoMAE or V-JEPA 2): a Hub id or folder (its config and pretrained weights, its frames
                per clip set to 2 for pairs) or a config (random weights; its frames per clip, `num_frames` or
                V-JEPA 2's `frames_per_clip`, are the dates per sample). The checkpoint's SigLIP and projector are then
                not loaded (the encoder replaces them), and `use_difference_integration` defaults to `False`.
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
        video_mode = config_overrides.get("pair_encoding") == "video_encoder"
        if video_encoder is not None:
            if not video_mode:
                raise ValueError("video_encoder is only read with pair_encoding='video_encoder'")
            config_overrides["video_encoder_config"] = (
                dict(video_encoder)
                if isinstance(video_encoder, dict)
                else (
                    video_encoder
                    if isinstance(video_encoder, PreTrainedConfig)
                    else AutoConfig.from_pretrained(video_encoder, **hub_kwargs)
                ).to_dict()
            )
            if isinstance(video_encoder, (str, os.PathLike)):
                # A pair is two frames. Neither family keeps positions in its weights (VideoMAE's table is sinusoidal
                # and recomputed, V-JEPA 2's rotary positions follow the token index), so an encoder pretrained on
                # 16- or 64-frame clips takes 2-frame ones.
                encoder_options = config_overrides["video_encoder_config"]
                family = VIDEO_ENCODER_FAMILIES.get(encoder_options.get("model_type"))
                if family is not None:  # RsccConfig refuses other model types with the supported ones named
                    encoder_options[family.num_frames_field] = 2
        if video_mode:
            config_overrides.setdefault("use_difference_integration", False)
        base_options = base_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map"):
            base_options.pop(key, None)
        config = RsccConfig(**{**base_options, **config_overrides})
        model, loading_info = cls.from_pretrained(
            pretrained_model_name_or_path, config=config, output_loading_info=True, **from_pretrained_kwargs
        )
        if isinstance(video_encoder, (str, os.PathLike)):
            pretrained = AutoModel.from_pretrained(video_encoder, **hub_kwargs)
            loaded = {
                f"model.video_encoder.backbone.{name}"
                for name in model.model.video_encoder.load_pretrained_backbone(pretrained)
            }
            loading_info["missing_keys"] = set(loading_info["missing_keys"]) - loaded
        new_names = sorted(loading_info["missing_keys"])
        stray = [name for name in new_names if not name.startswith(NEW_MODULE_PREFIXES)]
        replaced = REPLACED_BY_VIDEO_ENCODER if video_mode else ()
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
        return (model, report) if output_loading_info else model


RsccForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "RsccPreTrainedModel",
    "RsccModel",
    "RsccForConditionalGeneration",
    "RsccImageFeaturesOutput",
    "RsccModelOutputWithPast",
    "RsccCausalLMOutputWithPast",
]
