"""Loading a captioner and captioning pairs: the one code path behind `rscc caption`, evaluation and training."""

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, LlavaOnevisionConfig
from transformers.utils import logging

from .batch import (
    BatchInputError,
    SampleRecord,
    caption_records,
    check_images_exist,
    check_out_given,
    check_output_file,
    pairs_from_folders,
    record_paths,
    samples_from_manifest,
)
from .caption_files import date_fields
from .captioning_rscc import DEFAULT_MAX_NEW_TOKENS, describe_batch
from .cli import (
    EXIT_BAD_INPUT,
    EXIT_HUB,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    interrupted_exit_code,
    positive_int,
)
from .configuration_rscc import RsccConfig
from .imagery import date_names
from .masks import MASK_GREY_LEVELS
from .modeling_rscc import RsccForConditionalGeneration
from .output_lock import locking_output
from .parallel import current_share, part_path, process_device
from .processing_rscc import RsccInputError, RsccProcessor, load_change_mask, load_image
from .processor_match import check_processor_matches
from .video_rscc import processor_options

logger = logging.get_logger(__name__)

# Zero-shot default until a fine-tuned rscc checkpoint is published: LLaVA-OneVision-0.5B with the rscc prompt.
DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_BATCH_SIZE = 8
MAX_CHANGE_CLASSES = 3  # LEVIR-MCI's: the most classes a change mask given on the command line may encode
# The one model option that is not an RsccConfig field: the encoder `from_llava_onevision` builds a video model with.
VIDEO_ENCODER_OPTION = "video_encoder"


class ModelNotAvailableError(RsccInputError):
    """The model is neither a local folder nor reachable on the Hub."""


class ModelLoadError(RsccInputError):
    """A model folder (or Hub repo) that does not hold a loadable rscc or LLaVA-OneVision checkpoint."""


class HubUnreachableError(RuntimeError):
    """The Hugging Face Hub could not be reached, or failed, while a model was downloaded."""


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
    pairs: list,
    change_masks: list | None = None,
    batch_size: int = 8,
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
        pairs (`list`): `[before, after]` pairs or series `[date1, ..., dateN]` (oldest first; N may differ per
            sample), each image anything [`load_image`] accepts.
        change_masks (`list`, *optional*): one change mask (or `None`) per pair, for the token filter (see
            `RsccProcessor`); under `change_mask_source="predicted"` a given mask wins over the head's prediction.
        batch_size (`int`): pairs per `generate` call.
        max_new_tokens (`int`): caption length limit in tokens.

    Returns:
        `list[ChangeDescription]`, one per pair, in order.
    """
    if change_masks is not None and len(change_masks) != len(pairs):
        raise RsccInputError(f"change_masks: expected one entry per pair ({len(pairs)}), got {len(change_masks)}")
    if change_masks is not None and any(mask is not None for mask in change_masks) and not uses_input_masks(
            model.config):
        raise RsccInputError(
            "change_masks: this model's token filter does not take input masks (change_filter="
            f"{getattr(model.config, 'change_filter', 'none')!r}); they would be ignored"
        )
    check_processor_matches(model.config, processor)
    descriptions = []
    for start in range(0, len(pairs), batch_size):
        batch_masks = None if change_masks is None else change_masks[start : start + batch_size]
        inputs = processor(images=pairs[start : start + batch_size], change_masks=batch_masks).to(model.device)
        batch = describe_batch(model, processor, inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        descriptions.extend(ChangeDescription(**description) for description in batch)
    return descriptions


def caption_pairs(
    model,
    processor: RsccProcessor,
    pairs: list,
    batch_size: int = 8,
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
        pairs,
        change_masks=change_masks,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    return [description.caption for description in descriptions]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}



def torch_device(text: str) -> str:
    """argparse type of --device: a device this torch build has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device ({error}); expected cpu, cuda, cuda:1, mps")
    available = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if device.type not in available:
        raise argparse.ArgumentTypeError(f"{text!r}: rscc runs on cpu, cuda or mps devices")
    if not available[device.type]():
        count = torch.cuda.device_count() if device.type == "cuda" else 0
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine's torch {torch.__version__} has no such device "
            f"({count} CUDA device(s)); use --device cpu"
        )
    return text


def add_device_arguments(parser) -> None:
    """The model options shared by the commands that caption: --model, --device, --dtype, --batch-size,
    --max-new-tokens.

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
    """
    parser.add_argument("--model", default=DEFAULT_MODEL, help="rscc or LLaVA-OneVision checkpoint (Hub id or folder)")
    parser.add_argument("--device", default="cpu", type=torch_device, help="torch device, e.g. cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights dtype")
    parser.add_argument(
        "--batch-size", type=positive_int, help=f"samples per generate call (default {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)


def add_progress_arguments(parser) -> None:
    """--progress / --no-progress (default: a bar when stderr is a terminal).

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
    """
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def batch_size_of(args) -> int:
    """--batch-size, or its default (see `add_device_arguments`)."""
    return DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size


def show_progress(args) -> bool:
    """Whether to draw a progress bar for `args` (see `add_progress_arguments`)."""
    return sys.stderr.isatty() if args.progress is None else args.progress


def uses_input_masks(config) -> bool:
    """Whether a model's token filter takes change masks given with the pairs (otherwise they would do nothing): every
    filter does; under `change_mask_source="predicted"` a given mask wins over the head's prediction for its pair."""
    return getattr(config, "change_filter", "none") != "none"


def _check_mask_option(model, args) -> None:
    if args.mask is not None and not uses_input_masks(model.config):
        raise BatchInputError(
            f"--mask: the model {args.model} does not use an input change mask (change_filter="
            f"{getattr(model.config, 'change_filter', 'none')!r}, change_mask_source="
            f"{getattr(model.config, 'change_mask_source', None)!r}); it would be ignored. Leave --mask out"
        )
    if args.mask_out is not None and not getattr(model.config, "use_change_head", False):
        raise BatchInputError(f"--mask-out: the model {args.model} has no change-detection head to predict a mask")


def _caption_one_sample(args) -> int:
    """One pair (BEFORE AFTER) or one series of N > 2 dates (DATE1 ... DATEN, oldest first)."""
    given = [option for option, value in (("--out", args.out), ("--overwrite", args.overwrite or None),
                                          ("--batch-size", args.batch_size), ("--progress", args.progress))
             if value is not None]
    if given:
        raise BatchInputError(f"{given[0]} is for batch mode (two folders or a manifest); one pair prints its caption")
    dates = list(args.inputs)
    names = date_names(len(dates))
    for name, path in zip(names, dates):
        load_image(path, name=name)  # fail on bad input before the model loads
    if args.mask is not None:
        load_change_mask(args.mask, name="--mask", num_classes=MAX_CHANGE_CLASSES)
    if args.mask_out is not None:
        check_output_file(args.mask_out, "--mask-out", "a .png file path", inputs=[*dates, args.mask])
    model, processor = load_captioner(args.model, device=args.device, dtype=DTYPES[args.dtype])
    _check_mask_option(model, args)
    (description,) = describe_changes(
        model,
        processor,
        [dates],
        change_masks=None if args.mask is None else [args.mask],
        max_new_tokens=args.max_new_tokens,
    )
    if args.mask_out is not None:
        write_mask_png(description.change_mask, model.config.change_head_num_classes, args.mask_out)
    result = {**date_fields(dates), "caption": description.caption}
    if description.changed_fraction is not None:
        result.update(changed_fraction=description.changed_fraction, change_flag=int(description.changed))
    if args.json:
        print(json.dumps(result))
    else:
        print(description.caption)
        if description.changed_fraction is not None:
            print(f"changed fraction: {description.changed_fraction:.4f}")
    return EXIT_OK


def write_mask_png(change_mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> Path:
    """Write a predicted mask of class ids as an 8-bit PNG in the LEVIR encodings (temporary file, then rename).

    Args:
        change_mask (`np.ndarray` of shape `(height, width)`): class ids, 0 = no change.
        num_classes (`int`): classes of the change head; other counts than 2 and 3 are written as raw class ids.
        path (`str` or `os.PathLike`): the PNG to write.
    """
    path = Path(path)
    levels = MASK_GREY_LEVELS.get(num_classes)
    grey = change_mask.astype(np.uint8) if levels is None else np.asarray(levels, dtype=np.uint8)[change_mask]
    temporary = path.with_name(path.name + ".tmp")
    Image.fromarray(grey).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def _batch_records(inputs: list[str]) -> list[SampleRecord]:
    if len(inputs) == 2:
        return pairs_from_folders(*inputs)
    (manifest,) = inputs
    if Path(manifest).is_dir():
        raise BatchInputError(f"{manifest} is one folder; batch mode takes two (BEFORE_DIR AFTER_DIR) or a manifest")
    if not Path(manifest).is_file():
        raise BatchInputError(f"MANIFEST: file not found: {manifest}")
    return samples_from_manifest(manifest)


def made_by(model_id_or_path: str, model, args) -> dict:
    """What makes a run's captions, recorded on every result line: the model (a folder as its absolute path, with
    the Hub commit when it came from the Hub) and the options that change captions."""
    local = Path(model_id_or_path).is_dir()
    return {
        "model": str(Path(model_id_or_path).resolve()) if local else model_id_or_path,
        "revision": getattr(model.config, "_commit_hash", None),
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
    }


def _caption_batch(args) -> int:
    for option, value in (("--mask", args.mask), ("--mask-out", args.mask_out), ("--json", args.json or None)):
        if value is not None:
            raise BatchInputError(f"{option} is for one pair; in batch mode give masks in a manifest's mask column "
                                  "and read the JSON lines of --out")
    records = _batch_records(args.inputs)
    check_images_exist(records)
    share = current_share(args.device)
    check_out_given(args.out, share)  # before the model loads
    inputs = [*args.inputs, *record_paths(records)]
    out = None if args.out is None else check_output_file(args.out, "--out", "a .jsonl file path", inputs=inputs)
    if out is not None:
        check_output_file(part_path(out, share), "--out", "a .jsonl file path", inputs=inputs)
    model, processor = load_captioner(args.model, device=process_device(args.device, share),
                                      dtype=DTYPES[args.dtype])
    with_masks = [record for record in records if record.mask]
    masks_used = bool(with_masks) and uses_input_masks(model.config)
    if with_masks and not masks_used:
        print(f"rscc caption: note: the manifest's mask column is copied to the output, not used: the model "
              f"{args.model} has no token filter that takes input masks", file=sys.stderr)

    def caption_batch(batch: list[SampleRecord]) -> list[str]:
        return caption_pairs(
            model, processor, [list(record.images) for record in batch], batch_size=len(batch),
            max_new_tokens=args.max_new_tokens,
            change_masks=[record.mask for record in batch] if masks_used else None,
        )

    try:
        summary = caption_records(
            records, caption_batch, out=out, batch_size=batch_size_of(args), progress=show_progress(args),
            overwrite=args.overwrite, made_by=made_by(args.model, model, args), share=share, record_inputs=True,
        )
    except BatchInputError:
        raise
    except ValueError as error:  # an image that exists but cannot be read, found part-way through the run
        kept = f"; finished samples are kept in {part_path(out, share)}, rerun to resume" if out else ""
        raise BatchInputError(f"{error}{kept}") from error
    if out is not None and share.is_main:
        print(
            f"rscc caption: {summary.captioned} sample(s) captioned, {summary.resumed} already done, {out}",
            file=sys.stderr,
        )
    return EXIT_OK


def _run_caption(args) -> int:
    is_batch = len(args.inputs) == 1 or all(Path(path).is_dir() for path in args.inputs)
    try:
        if len(args.inputs) > 2 and any(Path(path).is_dir() for path in args.inputs):
            raise BatchInputError(
                f"expected BEFORE AFTER, DATE1 ... DATEN image files (a series), two folders or one manifest; got "
                f"{len(args.inputs)} paths, a folder among them"
            )
        if len(args.inputs) == 2 and any(Path(path).is_dir() for path in args.inputs) and not is_batch:
            raise BatchInputError("BEFORE and AFTER must both be image files or both be folders")
        return _caption_batch(args) if is_batch else _caption_one_sample(args)
    except (RsccInputError, FileNotFoundError) as error:
        print(f"rscc caption: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HubUnreachableError as error:
        print(f"rscc caption: error: {error}", file=sys.stderr)
        return EXIT_HUB
    except torch.OutOfMemoryError:
        resume = "; finished samples are kept, rerun to resume" if is_batch and args.out else ""
        print(f"rscc caption: error: out of memory on {args.device}; lower --batch-size{resume}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt as interrupt:
        resume = "; finished samples are kept, rerun the same command to resume" if is_batch and args.out else ""
        print(f"rscc caption: interrupted{resume}", file=sys.stderr)
        return interrupted_exit_code(interrupt)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption the change between two images (or a series of dates), or many pairs and series",
        usage="rscc caption (BEFORE AFTER | DATE1 DATE2 ... DATEN | BEFORE_DIR AFTER_DIR | MANIFEST) [options]",
        description=f"One pair (two image files): print one sentence on what changed from BEFORE to AFTER; one "
        "series (N > 2 co-registered image files, oldest first): what changed across the series. "
        "Batch (two folders of matching file names, or a CSV/JSONL manifest with columns before, after, or a "
        "series as image_1, image_2, ... (CSV) or images (JSONL, a list), rows of any N >= 2, and optionally id, "
        "caption(s), mask): write one JSON line per sample, {id, before, after, caption[, references, mask]} for a "
        "pair and {id, images, caption[, ...]} for a series, to --out (or stdout), batching on the device; rerunning "
        "an interrupted command into the same --out captions only the samples not done yet. "
        f"Without --model, {DEFAULT_MODEL} runs zero-shot with the rscc prompt (no fine-tuned rscc checkpoint is "
        "published yet). Every line records what made it (made_by: model, revision, options); a rerun with another "
        "model or options is refused rather than mixed. Exit codes: 0 success; 2 bad input (missing or unreadable "
        "file, bad manifest, bad option, model folder missing, incomplete or unloadable); 3 out of device memory; "
        "4 the Hugging Face Hub failed; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). After 3, 130 or 143 "
        "finished samples are kept in OUT.partial and the same command resumes.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="BEFORE AFTER, DATE1 ... DATEN, BEFORE_DIR AFTER_DIR, or MANIFEST")
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one pair: print a JSON object instead of the caption")
    parser.add_argument(
        "--mask", help="one pair: change mask for the model's token filter (PNG, LEVIR encodings); refused for a model "
        "without a filter that takes input masks"
    )
    parser.add_argument(
        "--mask-out", help="one pair: write the change head's predicted mask here (PNG, 0/255 or LEVIR-MCI 0/128/255)"
    )
    parser.add_argument("--out", help="batch: JSON-lines output file (resumable); default stdout")
    parser.add_argument("--overwrite", action="store_true", help="batch: discard earlier results in --out")
    add_progress_arguments(parser)
    parser.set_defaults(run=locking_output(_run_caption))
