"""The processor must be built for the model's settings: a processor of other `visual_tokens` or `pair_encoding` puts
another number of image placeholders in the prompt than the model fills, which transformers reports as "Image
features and image tokens do not match", naming neither setting."""

from .errors import RsccInputError

# The model settings (config attributes) that decide the processor's prompts and placeholder counts.
PROCESSOR_SETTINGS = ("visual_tokens", "pair_encoding")


def check_processor_matches(config, processor) -> None:
    """Refuse a processor built for other settings than the model's, naming the setting and how to build the matching
    processor.

    Args:
        config: the model's config (a stock LLaVA-OneVision config has none of these settings and is not checked).
        processor: the processor the inputs would go through.
    """
    for setting in PROCESSOR_SETTINGS:
        model_value, processor_value = getattr(config, setting, None), getattr(processor, setting, None)
        if None not in (model_value, processor_value) and model_value != processor_value:
            raise RsccInputError(
                f"the processor is built for {setting}={processor_value!r} and the model has {setting}={model_value!r}; "
                "use the processor saved with the model (RsccProcessor.from_pretrained(MODEL)) or build it with "
                f"RsccProcessor(..., {setting}={model_value!r})"
            )


__all__ = ["PROCESSOR_SETTINGS", "check_processor_matches"]
