"""The captioning API: (before, after) pairs, or series of N >= 2 dates, in; captions and, from a change head,
change masks out. The one generation path behind `rscc caption`, `rscc scene`, the demo, evaluation and training."""

from dataclasses import dataclass

import numpy as np
import torch

from .captioning_rscc import DEFAULT_MAX_NEW_TOKENS, describe_batch
from .defaults import DEFAULT_BATCH_SIZE
from .errors import RsccInputError
from .processing_rscc import RsccProcessor
from .processor_match import check_processor_matches



@dataclass
class ChangeDescription:
    """What rscc says about one (before, after) pair.

    Attributes:
        caption (`str`): one sentence on what changed.
        change_mask (`np.ndarray` of shape `(height, width)`, *optional*): the change head's class ids (0 no change) at
            the before image's original size; `None` for a model without a change head.
        changed_fraction (`float`, *optional*): share of the mask's pixels that changed.
        changed (`bool`, *optional*): whether any pixel changed.
    """

    caption: str
    change_mask: np.ndarray | None = None
    changed_fraction: float | None = None
    changed: bool | None = None


@torch.inference_mode()
def describe_changes(
    model,
    processor: RsccProcessor,
    samples: list,
    change_masks: list | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    **generate_kwargs,
) -> list[ChangeDescription]:
    """Caption (before, after) pairs, or series of N >= 2 dates, in batches and, with a change head, return its
    (first-to-last) masks too.

    Greedy decoding unless `generate_kwargs` say otherwise. With a change head the images are encoded once: the head's
    masks and the features `generate` uses come from the same pass. With `config.no_change_shortcut`, pairs whose
    predicted mask has no changed pixel skip the language model and get `config.no_change_caption`.

    Args:
        model: an rscc (or stock LLaVA-OneVision) model.
        processor ([`RsccProcessor`]).
        samples (`list`): `[before, after]` pairs or series `[date1, ..., dateN]` (oldest first; N may differ per
            sample), each image anything [`load_image`] accepts.
        change_masks (`list`, *optional*): one change mask (or `None`) per pair, for the token filter (see
            `RsccProcessor`); under `change_mask_source="predicted"` a given mask wins over the head's prediction.
        batch_size (`int`): samples per `generate` call.
        max_new_tokens (`int`): caption length limit in tokens.

    Returns:
        `list[ChangeDescription]`, one per pair, in order.
    """
    if change_masks is not None and len(change_masks) != len(samples):
        raise RsccInputError(f"change_masks: expected one entry per pair ({len(samples)}), got {len(change_masks)}")
    if change_masks is not None and any(mask is not None for mask in change_masks) and not uses_input_masks(
            model.config):
        raise RsccInputError(
            "change_masks: this model's token filter does not take input masks (change_filter="
            f"{getattr(model.config, 'change_filter', 'none')!r}); they would be ignored"
        )
    check_processor_matches(model.config, processor)
    descriptions = []
    for start in range(0, len(samples), batch_size):
        batch_masks = None if change_masks is None else change_masks[start : start + batch_size]
        inputs = processor(images=samples[start : start + batch_size], change_masks=batch_masks).to(model.device)
        batch = describe_batch(model, processor, inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        descriptions.extend(ChangeDescription(**description) for description in batch)
    return descriptions


def caption_samples(
    model,
    processor: RsccProcessor,
    samples: list,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    change_masks: list | None = None,
    **generate_kwargs,
) -> list[str]:
    """Caption (before, after) pairs, or series of N >= 2 dates: the captions of [`describe_changes`].

    Returns:
        `list[str]`, one caption per sample, in order.
    """
    descriptions = describe_changes(
        model,
        processor,
        samples,
        change_masks=change_masks,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    return [description.caption for description in descriptions]


def uses_input_masks(config) -> bool:
    """Whether a model's token filter takes change masks given with the pairs (otherwise they would do nothing): every
    filter does; under `change_mask_source="predicted"` a given mask wins over the head's prediction for its pair."""
    return getattr(config, "change_filter", "none") != "none"



__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "ChangeDescription",
    "caption_samples",
    "describe_changes",
    "uses_input_masks",
]
