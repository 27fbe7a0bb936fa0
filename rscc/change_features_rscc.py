"""Change features of KCFI and Semantic-CC for rscc models.

- [`RsccKeyChangePerceiver`]: KCFI's key change feature perceiver (flow-guided alignment of the two dates at each
  level, residuals, absolute-difference fusion), an alternative to CCExpert's difference integration.
- [`RsccBitemporalFilter`]: Semantic-CC's bi-temporal change semantic filter (BCSF), run after chosen vision encoder
  layers on both images of each pair so that the two dates interact inside the encoder.

A flat remote-code file: it imports only torch, transformers and its sibling files, relatively.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_rscc import RsccConfig


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample each feature map at its grid positions displaced by a flow field (bilinear, border padding).

    Args:
        features (`torch.Tensor` of shape `(batch, channels, height, width)`).
        flow (`torch.Tensor` of shape `(batch, 2, height, width)`): displacement (x, y) in tokens.

    Returns:
        `torch.Tensor` of the shape of `features`; a zero flow returns `features` (up to rounding).
    """
    _, _, height, width = features.shape
    rows = torch.linspace(-1.0, 1.0, height, device=features.device, dtype=flow.dtype)
    columns = torch.linspace(-1.0, 1.0, width, device=features.device, dtype=flow.dtype)
    base = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1)
    # One token is 2 / (size - 1) in grid_sample's normalised coordinates (align_corners=True).
    scale = flow.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = base[None] + flow.permute(0, 2, 3, 1) * scale
    return nn.functional.grid_sample(
        features, grid.to(features.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


class RsccKeyChangePerceiver(nn.Module):
    """KCFI's key change feature perceiver on the vision token grid.

    Per level l (a vision hidden state): a flow estimator (two 3x3 convolutions over the layer-normed dates) predicts
    the flow of A from `[A_l; B_l]` and the flow of B from `[B_l; A_l]` (one estimator, both orders, so that two
    identical dates get one flow and no key change); each date is warped by its field, `R = warp(X) - X` is its
    residual, and `K_l = |R_A - R_B|` the level's key change features. A linear layer fuses the levels' `K_l`
    (concatenated along channels, as KCFI's 4C features) to the vision width, followed by a layer norm.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        hidden = config.key_change_hidden_size
        num_levels = len(config.difference_feature_layers)
        self.grid_size = config.vision_grid_size
        self.input_norm = nn.LayerNorm(dim, eps=config.vision_config.layer_norm_eps)
        self.flow_estimators = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(2 * dim, hidden, kernel_size=3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(hidden, 2, kernel_size=3, padding=1),
                )
                for _ in range(num_levels)
            ]
        )
        self.level_fusion = nn.Linear(num_levels * dim, dim)
        self.output_norm = nn.LayerNorm(dim, eps=config.vision_config.layer_norm_eps)

    def forward(self, before_levels: list[torch.Tensor], after_levels: list[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            before_levels, after_levels (`list[torch.Tensor]`, each of shape `(num_pairs, grid**2, dim)`): vision
                hidden states of the levels in `config.difference_feature_layers`.

        Returns:
            `torch.Tensor` of shape `(num_pairs, grid**2, dim)`: the key change features per token.
        """
        num_tokens = before_levels[0].shape[1]
        if num_tokens != self.grid_size**2:
            raise ValueError(
                f"the key change perceiver expects {self.grid_size}x{self.grid_size}={self.grid_size**2} vision "
                f"tokens per image, got {num_tokens}; use vision_feature_select_strategy='full'"
            )

        def to_grid(tokens):
            return tokens.transpose(1, 2).unflatten(2, (self.grid_size, self.grid_size))

        level_features = []
        for estimator, before, after in zip(self.flow_estimators, before_levels, after_levels):
            normed_before, normed_after = self.input_norm(before), self.input_norm(after)
            both_orders = torch.cat(
                [torch.cat([normed_before, normed_after], dim=-1), torch.cat([normed_after, normed_before], dim=-1)]
            )
            flow_before, flow_after = estimator(to_grid(both_orders)).chunk(2)
            before_grid, after_grid = to_grid(before), to_grid(after)
            residual_before = warp(before_grid, flow_before) - before_grid
            residual_after = warp(after_grid, flow_after) - after_grid
            level_features.append((residual_before - residual_after).abs().flatten(2).transpose(1, 2))
        return self.output_norm(self.level_fusion(torch.cat(level_features, dim=-1)))


class RsccChangeProjector(nn.Module):
    """Projects change features to the language model's width (KCFI's linear projection, after a layer norm: the
    change features' scale differs from the image features' that the stock projector was trained on)."""

    def __init__(self, config: RsccConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.vision_config.layer_norm_eps)
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, change: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(change))


def project_segments(
    segments: tuple[str, ...],
    image_projector: nn.Module,
    change_projector: nn.Module | None,
    pair_features: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    image_sizes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid tokens of `segments` (`config.visual_segments`) in language-model width, pair after pair.

    Args:
        segments (`tuple[str, ...]`): of `"before"`, `"after"`, `"change"`, in the order the language model sees them.
        image_projector (`nn.Module`): LLaVA-OneVision's projector, for the images.
        change_projector ([`RsccChangeProjector`], *optional*): for the change tokens.
        pair_features: `(before, after, change)` of shape `(num_pairs, grid**2, vision_hidden)` each (`change` is
            `None` without a change segment).
        image_sizes (`torch.Tensor` of shape `(2 * num_pairs, 2)`): before then after of each pair.

    Returns:
        `(tokens, sizes)`: `(num_pairs * len(segments), grid**2, text_hidden)` and each segment's image size (the change
        segment takes the after image's).
    """
    before, after, change = pair_features
    projected, sizes = {}, {"before": image_sizes[0::2], "after": image_sizes[1::2], "change": image_sizes[1::2]}
    if "before" in segments:
        images = image_projector(torch.stack([before, after], dim=1).flatten(0, 1))
        projected["before"], projected["after"] = images[0::2], images[1::2]
    if "change" in segments:
        projected["change"] = change_projector(change)
    return (
        torch.stack([projected[name] for name in segments], dim=1).flatten(0, 1),
        torch.stack([sizes[name] for name in segments], dim=1).flatten(0, 1),
    )


class RsccFeedForward(nn.Module):
    """Linear, GELU, linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACT2FN["gelu"]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(states)))


class RsccBitemporalFilter(nn.Module):
    """Semantic-CC's bi-temporal change semantic filter (BCSF) for one vision encoder layer.

    For date k with features X_k and the other date's X_o (each `(num_tokens, dim)`):
    spatial filter `S_k = X_k * sigmoid(P_s([X_k; X_o]))` (one gate per token, `P_s` shared by both dates), channel
    filter `C_k = X_k * sigmoid(P_c,k([X_k; X_o] over tokens))` (one gate per channel, one `P_c` per date), then
    `X_k + scale * (FFN_s(S_k) + FFN_c,k(C_k))` with `scale` a per-channel vector initialised to zero, so that a fresh
    filter leaves the encoder's hidden states exactly as they were.
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        hidden = max(1, int(dim * config.bitemporal_filter_mlp_ratio))
        num_tokens = config.vision_grid_size**2
        self.spatial_proj = nn.Linear(2 * dim, 1)
        self.channel_projs = nn.ModuleList([nn.Linear(2 * num_tokens, 1) for _ in range(2)])
        self.spatial_ffn = RsccFeedForward(dim, hidden)
        self.channel_ffns = nn.ModuleList([RsccFeedForward(dim, hidden) for _ in range(2)])
        self.output_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(2 * num_pairs, num_tokens, dim)`): an encoder layer's output,
                before then after image of each pair in turn.

        Returns:
            The filtered hidden states, same shape.
        """
        if hidden_states.shape[0] % 2:
            raise ValueError(
                f"the bi-temporal filter needs (before, after) pairs of images; the vision tower got "
                f"{hidden_states.shape[0]} images"
            )
        dates = (hidden_states[0::2], hidden_states[1::2])
        updates = []
        for date, (own, other) in enumerate((dates, dates[::-1])):
            spatial = own * torch.sigmoid(self.spatial_proj(torch.cat([own, other], dim=-1)))
            channel_gate = self.channel_projs[date](torch.cat([own, other], dim=1).transpose(1, 2)).transpose(1, 2)
            channel = own * torch.sigmoid(channel_gate)
            updates.append(self.spatial_ffn(spatial) + self.channel_ffns[date](channel))
        update = torch.stack(updates, dim=1).flatten(0, 1)
        return hidden_states + self.output_scale * update

    def after_layer(self, module: nn.Module, args, output):
        """Forward hook of the encoder layer it follows: filters the layer's output (a tensor, or a tuple whose
        first element is the hidden states)."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)



def bitemporal_filters_in(vision_tower: nn.Module, config: RsccConfig) -> nn.ModuleList | None:
    """Semantic-CC's filters, one after each encoder layer of `config.bitemporal_filter_layers` of `vision_tower`
    (forward hooks, first among the layer's hooks: transformers' hidden-state recorder then sees the filtered output).

    Returns:
        The filters, in the order listed, or `None` when none is configured.
    """
    if not config.bitemporal_filter_layers:
        return None
    filters = nn.ModuleList([RsccBitemporalFilter(config) for _ in config.bitemporal_filter_layers])
    encoder_layers = vision_tower.encoder.layers
    for index, bitemporal_filter in zip(config.bitemporal_filter_encoder_layers, filters):
        encoder_layers[index].register_forward_hook(bitemporal_filter.after_layer, prepend=True)
    return filters


__all__ = [
    "project_segments",
    "bitemporal_filters_in",
    "RsccKeyChangePerceiver",
    "RsccChangeProjector",
    "RsccBitemporalFilter",
    "warp",
]
