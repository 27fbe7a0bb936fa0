"""The one captioning step of rscc: a batch of processor inputs in, one description per sample out.

The Hub pipeline (`pipeline_rscc.py`), `rscc.captioning.describe_changes` and through it `rscc caption`, `rscc scene`
and the demo all caption through [`describe_batch`], so one model gives one caption for one input whichever way it is
called, the no-change shortcut included. Like the other remote-code files it imports only torch and transformers.
"""

import torch

# The keys of each description: the caption, then the change head's mask, changed share and flag (`None` without a
# head).
DESCRIPTION_KEYS = ("caption", "change_mask", "changed_fraction", "changed")
DEFAULT_MAX_NEW_TOKENS = 64  # LEVIR-CC's longest caption has 39 words


@torch.inference_mode()
def describe_batch(model, processor, inputs, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **generate_kwargs) -> list:
    """Caption one batch of samples (pairs or series of dates) and, with a change head, give its first-to-last masks.

    Greedy decoding unless `generate_kwargs` say otherwise. With a change head the images are encoded once: the head's
    masks and the features `generate` uses come from the same pass. Under `config.no_change_shortcut`, a sample whose
    predicted mask has no changed pixel skips the language model and gets `config.no_change_caption`.

    Args:
        model: an rscc (or stock LLaVA-OneVision) captioning model.
        processor: the model's `RsccProcessor`.
        inputs (`BatchFeature` or `dict`): the processor's output for the batch, on the model's device.
        max_new_tokens (`int`, *optional*, defaults to 64): caption length limit in tokens.

    Returns:
        `list[dict]`, one per sample in order, with the keys of `DESCRIPTION_KEYS`.
    """
    generate_kwargs.setdefault("do_sample", False)
    config = model.config
    inputs = dict(inputs)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    num_samples = inputs["input_ids"].shape[0]
    masks = [{"change_mask": None, "changed_fraction": None, "changed": None}] * num_samples
    to_generate = list(range(num_samples))
    model_inputs = inputs
    if getattr(config, "use_change_head", False):
        image_features = model.model.get_image_features(
            inputs["pixel_values"],
            inputs["image_sizes"],
            batch_num_images=inputs["batch_num_images"],
            change_masks=inputs.get("change_masks"),
        )
        # The head describes first to last date: its masks take the first date's size.
        first_dates = inputs["batch_num_images"].cumsum(0) - inputs["batch_num_images"]
        masks = processor.post_process_change_masks(
            image_features.change_logits, target_sizes=inputs["image_sizes"][first_dates].tolist()
        )
        if config.no_change_shortcut:
            to_generate = [index for index, mask in enumerate(masks) if mask["changed"]]
        model_inputs = {
            "input_ids": inputs["input_ids"][to_generate],
            "attention_mask": inputs["attention_mask"][to_generate],
            "mm_encoder_outputs": {"image": image_features.select_pairs(to_generate)},
        }
    captions = [getattr(config, "no_change_caption", None)] * num_samples
    if to_generate:
        generated = model.generate(
            **model_inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=processor.tokenizer.pad_token_id,
            **generate_kwargs,
        )
        for index, caption in zip(to_generate, processor.post_process_captions(generated, model_inputs)):
            captions[index] = caption
    return [{"caption": caption, **mask} for caption, mask in zip(captions, masks)]


__all__ = ["describe_batch", "DESCRIPTION_KEYS", "DEFAULT_MAX_NEW_TOKENS"]
