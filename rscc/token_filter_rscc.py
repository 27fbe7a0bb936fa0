"""MV-CC's change-mask token filter: which vision tokens a change mask marks as changed, which of them the language
model sees, and, under `change_filter="drop"`, the shorter sequence that leaves out the others.

One vocabulary throughout: a mask marks grid tokens **changed** (`changed_tokens`, `(batch_size, grid**2)`); the
language model sees the **kept** tokens (`kept_tokens`): under `"multiply"` every token is kept and the unchanged ones
are zeroed, under `"drop"` the kept ones are the changed ones, the context sub-grid and each newline token, and the
sequence is re-packed at `kept_positions`. Like the other remote-code files it imports only torch, transformers and
its siblings.
"""

import math

import torch
from torch import nn
from transformers.utils import logging

from .configuration_rscc import IGNORE_INDEX, RsccConfig

logger = logging.get_logger(__name__)


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


def pack_kept_positions(kept: torch.BoolTensor, left_padding: bool) -> torch.LongTensor:
    """For each sample, its kept input positions in order, padded with -1 up to the sample that keeps most.

    Args:
        kept (`torch.BoolTensor` of shape `(batch_size, seq_len)`): positions to keep.
        left_padding (`bool`): pad on the left (generation: every sample ends on its last real token) or the right.

    Returns:
        `torch.LongTensor` of shape `(batch_size, max kept count)`.
    """
    batch_size, length = kept.shape
    counts = kept.sum(1)
    longest = int(counts.max())
    positions = torch.arange(length, device=kept.device)
    # Kept positions sort before dropped ones (offset by `length`), so each row lists its kept positions first.
    kept_first = torch.sort(torch.where(kept, positions, positions + length), dim=1).values[:, :longest]
    slots = torch.arange(longest, device=kept.device).expand(batch_size, longest)
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


class RsccTokenFilter:
    """The change filter of an rscc model (`config.change_filter`, `config.change_mask_source`): it holds no weights,
    only the config it reads (live, so a changed option takes effect at the next call).

    Args:
        config ([`RsccConfig`]).
    """

    def __init__(self, config: RsccConfig):
        self.config = config

    @property
    def active(self) -> bool:
        """Whether a change mask filters the tokens at all (`change_filter` other than `"none"`)."""
        return self.config.change_filter != "none"

    @property
    def drops(self) -> bool:
        """Whether unchanged tokens leave the sequence (`change_filter="drop"`)."""
        return self.config.change_filter == "drop"

    def changed_tokens(
        self, change_masks: torch.Tensor | None, grid_logits: torch.Tensor | None
    ) -> torch.BoolTensor | None:
        """Which grid tokens of each sample the filter treats as changed (first to last date).

        Args:
            change_masks (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*): given class ids.
            grid_logits (`torch.Tensor` of shape `(batch_size, num_classes, grid, grid)`, *optional*): the change
                head's, read under `change_mask_source="predicted"` for samples without a given mask.

        Returns:
            `torch.BoolTensor` of shape `(batch_size, grid**2)`, or `None`: no filter (or no mask to filter with).
        """
        if not self.active:
            return None
        config = self.config
        grid = config.token_grid_size
        given = None if change_masks is None else change_masks_to_tokens(change_masks, grid)
        if config.change_mask_source == "input":
            if given is None:
                logger.warning_once(
                    f"change_filter={config.change_filter!r} with change_mask_source='input' but no change_masks "
                    "were given: every vision token is kept"
                )
            return given
        predicted = change_masks_to_tokens(grid_logits.argmax(1), grid)
        if change_masks is None:
            return predicted
        # A given mask wins over the prediction (teacher forcing in training); samples without one use the head.
        has_mask = (change_masks != IGNORE_INDEX).flatten(1).any(1)
        return torch.where(has_mask[:, None], given, predicted)

    def kept_grid_tokens(self, changed_tokens: torch.BoolTensor | None) -> torch.BoolTensor | None:
        """The grid tokens the language model sees with a value, `(batch_size, grid**2)`: the changed ones under
        "multiply", plus the context floor under "drop"; `None` without a filter."""
        if changed_tokens is None or not self.drops:
            return changed_tokens
        return changed_tokens | context_token_mask(
            self.config.token_grid_size, self.config.change_filter_min_tokens, changed_tokens.device
        )

    def apply(
        self,
        projected: torch.Tensor,
        grids_per_sample: torch.LongTensor,
        changed_tokens: torch.BoolTensor | None,
        kept_grid_tokens: torch.BoolTensor | None,
    ) -> tuple[torch.Tensor, torch.BoolTensor | list[torch.BoolTensor] | None]:
        """Filter the projected grids, `(num_grids, grid**2, dim)` with `grids_per_sample[i]` grids (images, video
        frames or temporal steps) for sample i, masks `(batch_size, grid**2)`.

        Returns:
            The grids (unchanged tokens zeroed under "multiply") and, under "drop", `kept_tokens`: a
            `(num_images, grid**2 + 1)` tensor under `pair_encoding="images"` (each image's grid and newline token), a
            list of one row per sample under a video encoding (its grids and its one newline token; samples of
            different N differ in length). The newline tokens are always kept.
        """
        if changed_tokens is None:
            return projected, None
        if not self.drops:
            per_grid = changed_tokens.repeat_interleave(grids_per_sample.to(changed_tokens.device), dim=0)
            return projected * per_grid[..., None].to(projected.dtype), None
        kept = kept_grid_tokens.repeat_interleave(grids_per_sample.to(kept_grid_tokens.device), dim=0)
        if self.config.pair_encoding == "images":
            return projected, torch.cat([kept, kept.new_ones(kept.shape[0], 1)], dim=1)
        newline = kept.new_ones(1)
        return projected, [torch.cat([*grids, newline]) for grids in kept.split(grids_per_sample.tolist())]

    def pack(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        kept_tokens: torch.BoolTensor | list[torch.BoolTensor],
        position_ids: torch.LongTensor | None = None,
    ) -> dict:
        """The sequence without the placeholders of dropped tokens, each sample re-packed on the side the batch was
        padded on, so every image has as many placeholders as it keeps tokens.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`): one placeholder per vision token.
            attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*).
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): shortened alike.
            kept_tokens: [`RsccImageFeaturesOutput.kept_tokens`] of the images.
            position_ids: refused (they would describe the longer sequence).

        Returns:
            `dict` with the shortened `input_ids`, `attention_mask` and `labels`, and `kept_positions`
            (`torch.LongTensor` of shape `(batch_size, new_len)`: the input position of each kept position, -1 for
            padding).
        """
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
        kept = ~image_positions
        kept[image_positions] = kept_flat.to(kept.device)
        if attention_mask is not None:
            kept &= attention_mask.bool()
        left_padding = attention_mask is None or bool(attention_mask[:, -1].all())
        kept_positions = pack_kept_positions(kept, left_padding)
        pad_token_id = self.config.get_text_config().pad_token_id
        if labels is not None:
            labels = gather_positions(labels, kept_positions.to(labels.device), IGNORE_INDEX)
        return {
            "input_ids": gather_positions(input_ids, kept_positions, pad_token_id or 0),
            "attention_mask": (kept_positions >= 0).long(),
            "labels": labels,
            "kept_positions": kept_positions,
        }


__all__ = [
    "RsccTokenFilter",
    "change_masks_to_tokens",
    "context_token_mask",
    "pack_kept_positions",
    "gather_positions",
]
