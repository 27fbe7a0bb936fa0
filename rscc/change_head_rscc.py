"""The change-detection head (KCFI's light head plus local context, Semantic-CC's and Change-Agent's task) and its
loss. Like the other remote-code files it imports only torch, transformers and its siblings.
"""

import torch
from torch import nn

from .configuration_rscc import IGNORE_INDEX, RsccConfig


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


def full_resolution_logits(grid_logits: torch.Tensor | None, pixel_values: torch.Tensor) -> torch.Tensor | None:
    """The head's grid logits upsampled (bilinear) to the resolution of `pixel_values`; `None` stays `None`."""
    if grid_logits is None:
        return None
    return nn.functional.interpolate(
        grid_logits, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False
    )


def change_detection_loss(
    change_logits: torch.Tensor, change_masks: torch.Tensor, dice_weight: float = 0.0
) -> torch.Tensor | None:
    """Cross-entropy (plus `dice_weight` x soft Dice over the change classes) of the head over the labelled pixels.

    Args:
        change_logits (`torch.Tensor` of shape `(num_pairs, num_classes, height, width)`).
        change_masks (`torch.Tensor` of shape `(num_pairs, mask_height, mask_width)`): class ids, `IGNORE_INDEX`
            where unlabelled; resized (nearest) to the logits' resolution if it differs. A 2-class head reads
            every non-zero class as change.
        dice_weight (`float`, *optional*, defaults to 0.0): `config.change_dice_weight`.

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
    if dice_weight > 0:
        probabilities = logits.softmax(1).movedim(1, -1)[labelled][:, 1:]
        one_hot = nn.functional.one_hot(targets[labelled], num_classes)[:, 1:].float()
        overlap = (probabilities * one_hot).sum(0)
        total = probabilities.sum(0) + one_hot.sum(0)
        # Smoothed so that a class absent from both prediction and target scores a perfect 1.
        dice = (2 * overlap + 1.0) / (total + 1.0)
        loss = loss + dice_weight * (1 - dice).mean()
    return loss


__all__ = ["RsccChangeHead", "change_detection_loss", "full_resolution_logits"]
