"""Outputs of rscc models: LLaVA-OneVision's, plus the change head's logits and what the change filter kept. Like the
other remote-code files it imports only torch, transformers and its siblings.
"""

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    LlavaOnevisionModelOutputWithPast,
)


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


__all__ = ["RsccImageFeaturesOutput", "RsccModelOutputWithPast", "RsccCausalLMOutputWithPast"]
