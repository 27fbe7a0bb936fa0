"""Bi-temporal processor for rscc: pairs of images plus prompts in, model inputs out."""

import re


def to_sentence_case(caption: str) -> str:
    """Format a caption as a training target: whitespace collapsed, first letter upper case, one final period.

    This is CCExpert's target format. `" the road is built . "` becomes `"The road is built."`.
    """
    text = " ".join(caption.split())
    text = re.sub(r"\s+([.,;:!?])", r"\1", text).rstrip(".").rstrip()
    if not text:
        raise ValueError(f"caption {caption!r} is empty after normalisation")
    return text[0].upper() + text[1:] + "."
