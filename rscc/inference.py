"""Loading a captioner and captioning pairs: the one code path behind `rscc caption`, evaluation and training."""

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig

from .modeling_rscc import RsccForConditionalGeneration
from .processing_rscc import RsccProcessor, load_image

# Zero-shot default until a fine-tuned rscc checkpoint is published: LLaVA-OneVision-0.5B with the rscc prompt.
DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_MAX_NEW_TOKENS = 64  # LEVIR-CC's longest caption has 39 words


class ModelNotAvailableError(RuntimeError):
    """The model is neither a local folder nor reachable on the Hub."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _check_available(model_id_or_path: str) -> None:
    if Path(model_id_or_path).is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id_or_path, "config.json"), str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ModelNotAvailableError(
            f"model {model_id_or_path!r} is not a local folder, not in the Hugging Face cache, and {reason}. "
            "Pass --model with a local folder: a downloaded checkpoint (`huggingface-cli download "
            f"{DEFAULT_MODEL} --local-dir DIR` on a connected machine) or a tiny random one for a smoke test "
            "(`rscc tiny-checkpoint DIR`)."
        )


def load_captioner(
    model_id_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """Load a model and processor for captioning.

    Args:
        model_id_or_path (`str`): an rscc checkpoint, or a LLaVA-OneVision one (run zero-shot with the rscc prompt;
            difference integration is left out since it would be untrained).
        device (`str`): torch device.
        dtype (`torch.dtype`): weights dtype (float32 on CPU, bfloat16 on recent GPUs).

    Returns:
        `(model, processor)`, the model in eval mode.
    """
    _check_available(model_id_or_path)
    model_type = AutoConfig.from_pretrained(model_id_or_path).model_type
    if model_type == "llava_onevision":
        model = RsccForConditionalGeneration.from_llava_onevision(
            model_id_or_path, use_difference_integration=False, from_pretrained_kwargs={"dtype": dtype}
        )
        processor = RsccProcessor.from_llava_onevision(model_id_or_path)
    elif model_type == "rscc":
        model = RsccForConditionalGeneration.from_pretrained(model_id_or_path, dtype=dtype)
        processor = RsccProcessor.from_pretrained(model_id_or_path)
    else:
        raise ValueError(f"{model_id_or_path} holds a '{model_type}' model; expected an rscc or llava_onevision one")
    return model.to(device).eval(), processor


@torch.inference_mode()
def caption_pairs(
    model,
    processor: RsccProcessor,
    pairs: list,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    **generate_kwargs,
) -> list[str]:
    """Caption (before, after) pairs in batches with greedy decoding unless `generate_kwargs` say otherwise.

    Args:
        model: an rscc (or stock LLaVA-OneVision) model.
        processor ([`RsccProcessor`]).
        pairs (`list`): `[before, after]` pairs, each image anything [`load_image`] accepts.
        batch_size (`int`): pairs per `generate` call.
        max_new_tokens (`int`): caption length limit in tokens.

    Returns:
        `list[str]`, one caption per pair, in order.
    """
    generate_kwargs.setdefault("do_sample", False)
    captions = []
    for start in range(0, len(pairs), batch_size):
        inputs = processor(images=pairs[start : start + batch_size]).to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=processor.tokenizer.pad_token_id,
            **generate_kwargs,
        )
        captions.extend(processor.post_process_captions(generated, inputs))
    return captions


def _run_caption(args) -> int:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    try:
        for name, path in (("BEFORE", args.before), ("AFTER", args.after)):
            load_image(path, name=name)  # fail on bad input before the model loads
        model, processor = load_captioner(args.model, device=args.device, dtype=dtype)
        (caption,) = caption_pairs(model, processor, [[args.before, args.after]], max_new_tokens=args.max_new_tokens)
    except (ModelNotAvailableError, FileNotFoundError, ValueError) as error:
        print(f"rscc caption: error: {error}", file=sys.stderr)
        return 2
    print(caption)
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption the change between two images",
        description=f"Print one sentence on what changed from BEFORE to AFTER. Without --model, {DEFAULT_MODEL} "
        "runs zero-shot with the rscc prompt (no fine-tuned rscc checkpoint is published yet). "
        "Exit codes: 0 success, 2 bad input or model not available.",
    )
    parser.add_argument("before", help="image of the earlier date")
    parser.add_argument("after", help="image of the later date")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="rscc or LLaVA-OneVision checkpoint (Hub id or folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_caption)
