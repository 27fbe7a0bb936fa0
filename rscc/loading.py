"""Loading a model and its processor: rscc's one loader, behind `rscc caption`, `rscc scene`, the demo, evaluation
and training. It tells an rscc checkpoint from a LLaVA-OneVision one, checks a folder before transformers reads it,
and tells a broken model (bad input) from a Hub that failed."""

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, LlavaOnevisionConfig
from transformers.utils import logging

from .configuration_rscc import RsccConfig
from .defaults import DEFAULT_MODEL, DTYPE_NAMES
from .errors import HubUnreachableError, RsccInputError
from .modeling_rscc import RsccForConditionalGeneration
from .processing_rscc import RsccProcessor
from .video_rscc import processor_options

logger = logging.get_logger(__name__)

# Zero-shot default until a fine-tuned rscc checkpoint is published: LLaVA-OneVision-0.5B with the rscc prompt.
# Weight dtypes by the name the commands take (--dtype).
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# The one model option that is not an RsccConfig field: the encoder `from_llava_onevision` builds a video model with.
VIDEO_ENCODER_OPTION = "video_encoder"


class ModelNotAvailableError(RsccInputError):
    """The model is neither a local folder nor reachable on the Hub."""


class ModelLoadError(RsccInputError):
    """A model folder (or Hub repo) that does not hold a loadable rscc or LLaVA-OneVision checkpoint."""


# Files a checkpoint folder needs, as alternatives; from_pretrained would otherwise fail deep inside, or worse, load
# (a folder without tokenizer.json gets a tokenizer whose image token is not the model's).
MODEL_FOLDER_FILES = {
    "config": ("config.json",),
    "weights": (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
    ),
    "tokenizer": ("tokenizer.json", "vocab.json"),
    "image processor settings": ("processor_config.json", "preprocessor_config.json"),
}


def check_model_folder(folder: Path) -> None:
    """Fail naming the files a checkpoint folder lacks (see `MODEL_FOLDER_FILES`)."""
    missing = [f"{part} ({' or '.join(names)})" for part, names in MODEL_FOLDER_FILES.items()
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise ModelLoadError(f"model folder {folder} lacks its {', '.join(missing)}; expected a complete checkpoint "
                             "(save_pretrained of the model and the processor)")


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _looks_like_a_path(model_id_or_path: str) -> bool:
    # Hub ids are NAME or OWNER/NAME; these can only be paths.
    return model_id_or_path.startswith((".", "/", "~")) or model_id_or_path.count("/") > 1 or "\\" in model_id_or_path


def _check_available(model_id_or_path: str) -> None:
    if Path(model_id_or_path).is_dir():
        check_model_folder(Path(model_id_or_path))
        return
    if Path(model_id_or_path).exists() or _looks_like_a_path(model_id_or_path):
        what = "is a file" if Path(model_id_or_path).exists() else "does not exist"
        raise ModelNotAvailableError(f"model folder {model_id_or_path} {what}; expected a checkpoint folder or a "
                                     "Hub id (OWNER/NAME)")
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


def load_model_and_processor(
    model_id_or_path: str = DEFAULT_MODEL,
    config_overrides: dict | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | None = None,
    for_captioning: bool = False,
) -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """Load a model and its processor from an rscc checkpoint or a LLaVA-OneVision one: rscc's one loader.

    The kind is read from the config's `model_type`. The processor's image processor is set to decode change masks
    into the classes of the model's change head (`change_head_num_classes`), and saves that setting: a head of 3
    classes (LEVIR-MCI: road, building) with masks decoded into 2 would never see its last class.

    Args:
        model_id_or_path (`str`): Hub id or folder of an rscc or a LLaVA-OneVision checkpoint.
        config_overrides (`dict`, *optional*): [`RsccConfig`] options; an option this rscc version does not know is
            an error. With a LLaVA-OneVision checkpoint, `video_encoder` (a Hub id or folder) is the encoder of
            `pair_encoding="video_encoder"` (see `RsccForConditionalGeneration.from_llava_onevision`).
        dtype (`torch.dtype` or `"auto"`): weights dtype (float32 on CPU, bfloat16 on recent GPUs).
        device (`str`, *optional*): torch device to move the model to; by default it stays on the CPU (a Trainer
            places it).
        for_captioning (`bool`): load to caption as the checkpoint is: every rscc weight must be in the file (none
            left at random values) and the model is put in eval mode, and a LLaVA-OneVision checkpoint runs
            zero-shot with the rscc prompt (no difference integration, which would be untrained). Otherwise (to
            train) a LLaVA-OneVision checkpoint gets rscc's new modules, zero-initialised so training starts from
            the base model's outputs.

    Returns:
        `(model, processor)`.
    """
    config_overrides = dict(config_overrides or {})
    unknown = sorted(set(config_overrides) - set(RsccConfig.__dataclass_fields__) - {VIDEO_ENCODER_OPTION})
    if unknown:
        raise RsccInputError(f"model_config_overrides: {unknown} are not RsccConfig options")
    _check_available(model_id_or_path)
    try:
        model, processor = _load_by_model_type(model_id_or_path, config_overrides, dtype, for_captioning)
    except (RsccInputError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # whatever transformers, safetensors or the tokenizer raise on a broken folder
        if not Path(model_id_or_path).is_dir() and _is_connection_error(error):
            raise HubUnreachableError(f"model {model_id_or_path}: the Hugging Face Hub failed ({error})") from error
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"model {model_id_or_path} cannot be loaded: {type(error).__name__}: {message[:500]}"
        ) from error
    if model.config.use_change_head and processor.num_change_classes != model.config.change_head_num_classes:
        logger.info(
            f"change masks are decoded into the change head's {model.config.change_head_num_classes} classes "
            f"(the processor had {processor.num_change_classes})"
        )
        processor.num_change_classes = model.config.change_head_num_classes
    if processor.visual_tokens != model.config.visual_tokens:
        # The prompt's placeholders must match the segments the model shows its language model.
        processor.set_visual_tokens(model.config.visual_tokens)
    if device is not None:
        model = model.to(device)
    if for_captioning:
        model.eval()
    return model, processor


def _load_by_model_type(
    model_id_or_path: str, config_overrides: dict, dtype, for_captioning: bool
) -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """The one place that tells an rscc checkpoint from a LLaVA-OneVision one (see `load_model_and_processor`)."""
    model_type = AutoConfig.from_pretrained(model_id_or_path).model_type
    if model_type == LlavaOnevisionConfig.model_type:
        if for_captioning:
            config_overrides = {"change_features": "none", **config_overrides}
        model = RsccForConditionalGeneration.from_llava_onevision(
            model_id_or_path, from_pretrained_kwargs={"dtype": dtype}, **config_overrides
        )
        options = processor_options(model.config, config_overrides.get(VIDEO_ENCODER_OPTION))
        return model, RsccProcessor.from_llava_onevision(model_id_or_path, **options)
    if model_type != RsccConfig.model_type:
        raise ModelLoadError(f"{model_id_or_path} holds a '{model_type}' model; expected an rscc or llava_onevision one")
    if VIDEO_ENCODER_OPTION in config_overrides:
        raise RsccInputError(
            f"model_config_overrides: '{VIDEO_ENCODER_OPTION}' builds a video encoder onto a LLaVA-OneVision "
            f"checkpoint; {model_id_or_path} is an rscc checkpoint, which holds its encoder already"
        )
    model, loading = RsccForConditionalGeneration.from_pretrained(
        model_id_or_path, dtype=dtype, output_loading_info=True, **config_overrides
    )
    # Weights missing from the file would be left at random values without a word.
    absent = [*loading["missing_keys"], *(key for key, *_ in loading["mismatched_keys"])]
    if for_captioning and absent:
        raise ModelLoadError(
            f"model {model_id_or_path}: {len(absent)} weight(s) missing from its weights or of another shape "
            f"than its config.json says (first: {', '.join(sorted(absent)[:3])})"
        )
    processor = RsccProcessor.from_pretrained(model_id_or_path)
    # `pair_encoding` overridden between "images" and "llava_video" (the same weights): the prompt layout follows.
    processor.pair_encoding = model.config.pair_encoding
    return model, processor


def load_captioner(
    model_id_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype | str = torch.float32
) -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """Load a model and processor for captioning: [`load_model_and_processor`] with `for_captioning=True`.

    Args:
        model_id_or_path (`str`): an rscc checkpoint, or a LLaVA-OneVision one (run zero-shot with the rscc prompt).
        device (`str`): torch device.
        dtype (`torch.dtype`): weights dtype (float32 on CPU, bfloat16 on recent GPUs).

    Returns:
        `(model, processor)`, the model in eval mode.
    """
    return load_model_and_processor(model_id_or_path, dtype=dtype, device=device, for_captioning=True)


def _is_connection_error(error: BaseException) -> bool:
    """Whether a loading error (or one of its causes) is the network's or the Hub server's, not the model's."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    while error is not None:
        if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
            return False
        network_library = type(error).__module__.split(".")[0] in ("requests", "httpx", "httpcore", "urllib3")
        if isinstance(error, (ConnectionError, TimeoutError)) or (
            network_library and any(word in type(error).__name__ for word in ("Connect", "Timeout"))
        ):
            return True
        if isinstance(error, HfHubHTTPError) and (error.response is None or error.response.status_code >= 500):
            return True
        error = error.__cause__ or error.__context__
    return False


__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "HubUnreachableError",
    "ModelLoadError",
    "ModelNotAvailableError",
    "check_model_folder",
    "load_captioner",
    "load_model_and_processor",
]
