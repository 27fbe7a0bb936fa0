"""The samples an rscc model takes: two or more co-registered images (dates) each, oldest first, with at most one
change mask (first to last date). The checks every encoding of a sample runs first. Like the other remote-code files it
imports only torch, transformers and its siblings.
"""

import torch

from .configuration_rscc import RsccConfig


def checked_series_inputs(
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


def check_pairs_only_options(config: RsccConfig, num_dates: torch.LongTensor) -> None:
    """Refuse samples of other than two dates when an option that compares a before and an after image is set."""
    options = config.pairs_only_options
    if options and bool((num_dates != 2).any()):
        raise ValueError(
            f"batch_num_images={num_dates.tolist()}: {', '.join(options)} take (before, after) pairs only; "
            "caption series of dates with visual_tokens='pair', change_features='difference_integration' and no "
            "bitemporal filter"
        )


__all__ = ["checked_series_inputs", "check_pairs_only_options"]
