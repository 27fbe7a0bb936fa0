"""CCExpert's difference-aware integration: change-aware transformer blocks over several SigLIP levels of the two
dates of a pair, whose refined features enter the image features through a zero-initialised scale, and whose change
tokens can be shown to the language model (`visual_tokens`). Like the other remote-code files it imports only torch,
transformers and its siblings.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_rscc import RsccConfig
from .token_filter_rscc import gather_positions, pack_kept_positions


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
        kept_tokens: torch.BoolTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            before_levels, after_levels (`list[torch.Tensor]`, each of shape `(num_pairs, num_tokens, dim)`):
                Vision hidden states of the levels in `config.difference_feature_layers`.
            before_features, after_features (`torch.Tensor` of shape `(num_pairs, num_tokens, dim)`):
                The features the stock model projects (`vision_feature_layer`).
            kept_tokens (`torch.BoolTensor` of shape `(num_pairs, num_tokens)`, *optional*): the tokens to refine (a
                change filter's kept tokens). The module then runs on those tokens alone, packed into one batch
                (attention, change tokens and the level gates' pooling all over the kept tokens), and the other
                tokens keep their raw features. Every pair needs at least one token; `None` (or all set): every
                token, exactly as without a mask.

        Returns:
            `(before, after, change)`: the features to project, shapes as `before_features`, and the change tokens
            (the level-gated mean of the blocks' change tokens; zero at tokens outside `kept_tokens`).
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
        if kept_tokens is not None and not bool(kept_tokens.all()):
            # Levels are stacked along the batch: each level's pairs keep the same tokens.
            kept_positions = pack_kept_positions(kept_tokens.to(before.device), left_padding=False)
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

    def integrate_series(
        self,
        levels: list[torch.Tensor],
        features: torch.Tensor,
        num_dates: torch.LongTensor,
        changed_tokens: torch.BoolTensor | None,
        kept_tokens: torch.BoolTensor | None,
        with_change: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the module on each sample's date pairs ([`date_pairs`]: consecutive dates and first to last) where a
        change filter needs it (everywhere without a filter), `features` `(num_images, grid**2, dim)`.

        A date in several pairs gets the mean of its refined versions; a pair's dates each appear once, so a pair
        gets exactly the module's output. A sample whose mask shows no change (`changed_tokens`,
        `(batch_size, grid**2)`) skips the module (28% of a stock pair's FLOPs): under "multiply" all its grid tokens
        are zeroed anyway, under "drop" only the context sub-grid remains. The other samples are refined on their
        kept tokens only (`kept_tokens`, `(batch_size, grid**2)`), the tokens the language model sees; `None`: on all.

        Returns:
            `(features, change)`: the refined features, and with `with_change` each sample's change tokens
            `(batch_size, grid**2, dim)` (zero for a sample that skips the module; samples are pairs then), else
            `None`.
        """
        earlier, later, sample = date_pairs(num_dates)
        change = features.new_zeros(len(num_dates), *features.shape[1:]) if with_change else None
        if changed_tokens is not None:
            refined_pairs = changed_tokens.any(1)[sample]
            earlier, later, sample = earlier[refined_pairs], later[refined_pairs], sample[refined_pairs]
            if not len(sample):
                return features, change
        refined_earlier, refined_later, pair_change = self(
            [level[earlier] for level in levels],
            [level[later] for level in levels],
            features[earlier],
            features[later],
            kept_tokens=None if kept_tokens is None else kept_tokens[sample],
        )
        if with_change:
            change = change.index_copy(0, sample, pair_change)
        dates = torch.cat([earlier, later])
        counts = torch.bincount(dates, minlength=features.shape[0]).to(features.dtype)[:, None, None]
        summed = torch.zeros_like(features).index_add(0, dates, torch.cat([refined_earlier, refined_later]))
        return torch.where(counts > 0, summed / counts.clamp(min=1), features), change


__all__ = ["RsccDifferenceIntegration", "RsccChangeAwareBlock", "date_pairs", "sine_position_embedding_2d"]
