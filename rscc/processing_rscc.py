"""Multi-temporal processor for rscc: (before, after) image pairs, or series of N >= 2 dates, and prompts in, model
inputs out.

Output feeds both `RsccForConditionalGeneration` and the stock `LlavaOnevisionForConditionalGeneration`: each
sample holds two or more images, so LLaVA-OneVision uses the base view of each (no tiling) and, under the default
`pair_encoding="images"`, every image placeholder stands for `num_image_tokens + 1` tokens (grid plus one newline
token; 730 for SigLIP at 384 px); the video encodings lay their tokens out as
[`RsccProcessor.placeholder_token_counts`] says. Optional change masks (one per sample, first to last date) come out
as class ids at the vision input size, for rscc models only.

[`RsccImageProcessor`] owns everything about pixels: decoding image inputs (16-bit stretch), decoding change masks
into the change head's classes, and reading the head's logits back as masks; [`RsccProcessor`] pairs it with the
tokenizer and the prompt.
"""

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorKwargs,
)
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_rscc import IGNORE_INDEX, PAIR_ENCODINGS, VISUAL_TOKEN_SEGMENTS

try:  # rscc's one input-error type; this file also runs as remote code where rscc is not installed
    from rscc.errors import InputFileNotFoundError, RsccInputError
except ImportError:

    class RsccInputError(ValueError):
        """A user's input is not what rscc expects; the message names it and what was expected."""

    class InputFileNotFoundError(RsccInputError, FileNotFoundError):
        """A named input file does not exist."""

logger = logging.get_logger(__name__)

# CCExpert's prompt: two image placeholders, then the question.
DEFAULT_PROMPT = (
    "This is the Image1 <image>. This is the second Image2 <image>.\nWhat difference happened from Image1 to Image2?"
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# The default prompt for each `visual_tokens` setting: one placeholder per segment the language model sees.
DEFAULT_PROMPTS = {
    "pair": DEFAULT_PROMPT,
    "change": "These are the changes from Image1 to Image2 <image>.\nWhat difference happened from Image1 to Image2?",
    "pair+change": "This is the Image1 <image>. This is the second Image2 <image>. These are the changes <image>.\n"
    "What difference happened from Image1 to Image2?",
}
# The default prompt of a series of N > 2 dates: one numbered placeholder per date, oldest first.
SERIES_PROMPT_TEMPLATE = (
    "These are images of the same place at {num_dates} dates, oldest first: {images}.\n"
    "What changed across the series from Image1 to Image{num_dates}?"
)
# Qwen ChatML with the default system message; `{prompt}` is the user turn.
DEFAULT_CONVERSATION_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
HIGH_BIT_DEPTH_PERCENTILES = (2.0, 98.0)
# LEVIR-CD (0/255) and LEVIR-MCI (0/128/255, channel 0 of its RGB labels) grey levels; None: the last class.
GREY_LEVEL_CLASSES = {0: 0, 128: 1, 255: None}
# Pillow modes of 8 bits per band: a file decoded into one of them through a 16-bit raw mode keeps only high bytes.
_EIGHT_BIT_BAND_MODES = ("RGB", "RGBA", "LA", "CMYK")

# Reads an image file that Pillow cannot read at full depth (16-bit colour PNG or TIFF, band-interleaved or
# GDAL-written TIFF) into an (H, W) or (H, W, C) array; `name` is how errors refer to it. The rscc package sets a GDAL
# one (`rscc.imagery`); where none is set (remote code without rscc) such files are refused, never truncated.
full_depth_reader = None


def default_prompt(num_dates: int, image_token: str = "<image>") -> str:
    """The default prompt of a sample of `num_dates` images: CCExpert's for a pair, else [`SERIES_PROMPT_TEMPLATE`]."""
    if num_dates == 2:
        return DEFAULT_PROMPT.replace("<image>", image_token)
    images = ", ".join(f"Image{date} {image_token}" for date in range(1, num_dates + 1))
    return SERIES_PROMPT_TEMPLATE.format(num_dates=num_dates, images=images)


def to_sentence_case(caption: str) -> str:
    """Format a caption as a training target: whitespace collapsed, first letter upper case, one final period.

    This is CCExpert's target format. `" the road is built . "` becomes `"The road is built."`.
    """
    text = " ".join(caption.split())
    text = re.sub(r"\s+([.,;:!?])", r"\1", text).rstrip(".").rstrip()
    if not text:
        raise RsccInputError(f"caption {caption!r} is empty after normalisation")
    return text[0].upper() + text[1:] + "."


def stretch_to_uint8(
    array: np.ndarray,
    value_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = HIGH_BIT_DEPTH_PERCENTILES,
) -> np.ndarray:
    """Map high-bit-depth imagery (16-bit, float radiance) to 0..255 by a linear 2nd-98th percentile stretch.

    The percentiles are taken over all bands together so colour balance is kept; a flat image maps to 0.
    This is the usual display stretch for remote-sensing imagery whose values fill a small part of 16 bits.

    Args:
        array (`np.ndarray`): the image, any numeric dtype.
        value_range (`tuple[float, float]`, *optional*): the values mapped to 0 and 255. Defaults to the
            `percentiles` of `array`; pass a range measured once over a whole scene so that its tiles share one
            stretch.
        percentiles (`tuple[float, float]`, *optional*, defaults to `(2.0, 98.0)`): the percentiles mapped to 0 and
            255 when no `value_range` is given.
    """
    values = array.astype(np.float64)
    low, high = np.percentile(values, percentiles) if value_range is None else value_range
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _array_to_rgb(array: np.ndarray, name: str, percentiles: tuple[float, float]) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise RsccInputError(
            f"{name}: array of shape {array.shape} is not an image; expected (H, W), (H, W, 1|3|4) or (1|3|4, H, W)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise RsccInputError(f"{name}: image of shape {array.shape} has no pixels")
    if array.ndim == 3:
        array = array[..., :3]  # alpha is dropped: co-registered imagery has no meaningful transparency
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise RsccInputError(
                f"{name}: float image holds {int((~finite).sum())} of {finite.size} values NaN or infinite; "
                "replace them (e.g. nodata) before captioning"
            )
        if array.min() < 0.0 or array.max() > 1.0:
            raise RsccInputError(
                f"{name}: float image values must lie in [0, 1], found {array.min()}..{array.max()}"
            )
        array = (array * 255.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        array = stretch_to_uint8(array, percentiles=percentiles)
    else:
        raise RsccInputError(f"{name}: unsupported image dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def pillow_truncates(image: Image.Image) -> bool:
    """Whether Pillow decodes this opened file into 8 bits per band from 16 (it keeps only the high bytes)."""
    return image.mode in _EIGHT_BIT_BAND_MODES and any(";16" in str(tile.args) for tile in image.tile)


def _read_image_file(path: Path, name: str, percentiles: tuple[float, float]) -> Image.Image:
    pillow_problem, image_format = "Pillow reads only the high byte of each 16-bit band", None
    try:
        with Image.open(path) as opened:
            image_format = opened.format
            if not pillow_truncates(opened):
                opened.load()
                return load_image(opened, name=f"{name} ({path})", percentiles=percentiles)
    except Image.DecompressionBombError as error:
        raise RsccInputError(f"{name}: image file {path} is too large to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        if isinstance(error, RsccInputError):
            raise
        if image_format not in (None, "TIFF"):  # the format's own decoder found the file truncated or corrupt
            raise RsccInputError(f"{name}: image file {path} is truncated or corrupt: Pillow's {image_format} "
                                 f"decoder stopped ({error}); nothing of it is used") from None
        pillow_problem = f"Pillow cannot read it ({error})"
    if full_depth_reader is None:
        raise RsccInputError(
            f"{name}: cannot read image file {path}: {pillow_problem}; with rscc installed it is read with GDAL, or "
            "pass the image as a numpy array"
        )
    try:
        array = full_depth_reader(path, name)
    except RsccInputError as error:
        raise RsccInputError(f"{name}: cannot read image file {path}: {pillow_problem}, nor GDAL ({error})") from None
    return _array_to_rgb(array, f"{name} ({path})", percentiles)


def load_image(
    image, name: str = "image", percentiles: tuple[float, float] = HIGH_BIT_DEPTH_PERCENTILES
) -> Image.Image:
    """Turn one image input into an RGB PIL image.

    Args:
        image: a file path (`str` or `os.PathLike`), a PIL image, a numpy array or a torch tensor
            ((H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4).
        name (`str`): how errors refer to this input.
        percentiles (`tuple[float, float]`, *optional*, defaults to `(2.0, 98.0)`): the stretch of other integer
            depths (see [`stretch_to_uint8`]).

    RGBA loses its alpha channel, grayscale and palette images become RGB, 8-bit stays as it is, other integer
    depths (16-bit imagery) go through `stretch_to_uint8`, and float arrays must lie in [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputFileNotFoundError(f"{name}: image file not found: {path}")
        return _read_image_file(path, name, percentiles)
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise RsccInputError(f"{name}: image of {image.width} x {image.height} pixels has no pixels")
        if image.mode in ("RGB",):
            return image
        if image.mode in ("L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "1"):
            return image.convert("RGB")
        return _array_to_rgb(np.asarray(image), name, percentiles)
    if isinstance(image, torch.Tensor):
        return _array_to_rgb(image.detach().cpu().numpy(), name, percentiles)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name, percentiles)
    raise RsccInputError(
        f"{name}: expected a file path, PIL image, numpy array or torch tensor, got {type(image).__name__}"
    )


def _mask_array(mask, name: str) -> np.ndarray:
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.is_file():
            raise InputFileNotFoundError(f"{name}: mask file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                return _mask_array(opened, f"{name} ({path})")
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError) as error:
            raise RsccInputError(f"{name}: cannot read mask file {path}: {error}") from error
    if isinstance(mask, Image.Image):
        # A palette image shows its classes through its palette, so read it as the colours it displays.
        return np.asarray(mask.convert("RGBA") if mask.mode in ("P", "PA") else mask)
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().numpy()
    if isinstance(mask, np.ndarray):
        return mask
    raise RsccInputError(
        f"{name}: expected a file path, PIL image, numpy array or torch tensor, got {type(mask).__name__}"
    )


def load_change_mask(mask, name: str = "change mask", num_classes: int = 2) -> np.ndarray:
    """Decode one change mask into class ids (0 = no change).

    Args:
        mask: a file path, PIL image, numpy array or torch tensor: `(H, W)`, `(H, W, C)` or `(C, H, W)`, C in 1, 3, 4.
        name (`str`): how errors refer to this input.
        num_classes (`int`): classes of the model's change head (2: change / no change; 3: LEVIR-MCI).

    The documented encodings, read from a single-channel mask, a grey RGB one, or the red channel of a coloured one:

    - class ids: every value below `num_classes` (0/1 binary masks, boolean arrays, decoded LEVIR-MCI labels 0/1/2);
    - grey levels 0/255 (LEVIR-CD) and 0/128/255 (LEVIR-MCI): 0 no change, 128 road (class 1), 255 the last class
      (building with 3 classes, LEVIR-CD's changes being buildings; change with 2, where roads are change too);
    - RGB-coded labels: alpha is dropped; a coloured label carries its class in the red channel (LEVIR-MCI's
      convention), so a colour other than black whose red channel is 0 is not explained.

    Returns:
        `np.ndarray` of shape `(H, W)`, dtype int64.

    Raises:
        ValueError: for values no encoding explains, naming `name` and the values found.
    """
    array = _mask_array(mask, name)
    if isinstance(mask, (str, os.PathLike)) and str(mask) not in name:
        name = f"{name} ({mask})"  # errors about its values name the file too
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # grey, or grey plus alpha
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        colours = array[..., :3]
        stray = (colours[..., 0] == 0) & (colours[..., 1:] != 0).any(-1)
        if stray.any():
            found = np.unique(colours[stray].reshape(-1, 3), axis=0)[:8].tolist()
            raise RsccInputError(
                f"{name}: RGB mask colours {found} have no class: a coloured mask carries its class in the red channel "
                "(LEVIR-MCI: 0 background, 128 road, 255 building)"
            )
        array = colours[..., 0]
    if array.ndim != 2:
        raise RsccInputError(
            f"{name}: array of shape {array.shape} is not a mask; expected (H, W), (H, W, C) or (C, H, W)"
        )
    if array.size == 0:
        raise RsccInputError(f"{name}: mask of shape {array.shape} has no pixels")
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise RsccInputError(f"{name}: float mask values must be whole class codes; found {np.unique(array)[:8]}")
    elif not np.issubdtype(array.dtype, np.integer):
        raise RsccInputError(f"{name}: unsupported mask dtype {array.dtype}")
    array = array.astype(np.int64)
    values = np.unique(array)
    if values.min() >= 0 and values.max() < num_classes:
        return array
    if set(values.tolist()) <= set(GREY_LEVEL_CLASSES):
        classes = np.zeros_like(array)
        for level, class_id in GREY_LEVEL_CLASSES.items():
            classes[array == level] = num_classes - 1 if class_id is None else class_id
        return classes
    raise RsccInputError(
        f"{name}: mask values {values[:12].tolist()} match no documented encoding: class ids 0..{num_classes - 1}, "
        "grey levels 0/255 (binary) or 0/128/255 (LEVIR-MCI), or RGB with the class in the red channel"
    )


class RsccImageProcessorKwargs(LlavaOnevisionImageProcessorKwargs, total=False):
    r"""
    num_change_classes (`int`, *optional*, defaults to 2):
        Classes of the model's change head (`config.change_head_num_classes`); decides how change masks are decoded
        (see [`load_change_mask`]).
    high_bit_depth_percentiles (`list[float]`, *optional*, defaults to `[2.0, 98.0]`):
        The percentiles that integer images deeper than 8 bits are stretched between (see [`stretch_to_uint8`]).
    """

    num_change_classes: int
    high_bit_depth_percentiles: list[float]


class RsccImageProcessor(LlavaOnevisionImageProcessorPil):
    r"""
    Image processor for change captioning: LLaVA-OneVision's resizing and normalisation, after decoding remote-sensing
    inputs, plus the change masks of the model's change head, in and out.

    Images may be file paths, PIL images, arrays or tensors of any depth (see [`load_image`]); change masks are
    decoded into `num_change_classes` classes (see [`load_change_mask`]) and resized like their images. Both
    settings are saved with the processor, so a folder decodes masks as its model's head expects.

    Args:
        num_change_classes (`int`, *optional*, defaults to 2): classes of the model's change head.
        high_bit_depth_percentiles (`list[float]`, *optional*, defaults to `[2.0, 98.0]`): the stretch of images
            deeper than 8 bits.
        **kwargs: [`LlavaOnevisionImageProcessorPil`] options (`size`, `image_mean`, ...).
    """

    valid_kwargs = RsccImageProcessorKwargs
    num_change_classes = 2
    high_bit_depth_percentiles = list(HIGH_BIT_DEPTH_PERCENTILES)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.num_change_classes < 2:
            raise ValueError(f"num_change_classes={self.num_change_classes}: expected at least 2")

    @classmethod
    def from_image_processor(cls, image_processor, **kwargs) -> "RsccImageProcessor":
        """The same resizing and normalisation as another LLaVA-OneVision image processor, with rscc's settings.

        Processor folders saved before rscc had its own image processor hold LLaVA-OneVision's; this is how they load.

        Args:
            image_processor: a LLaVA-OneVision image processor.
            **kwargs: [`RsccImageProcessor`] settings (`num_change_classes`, ...).
        """
        names = cls.valid_kwargs.__annotations__
        settings = {key: value for key, value in image_processor.to_dict().items() if key in names}
        return cls(**{**settings, **kwargs})

    def decode_image(self, image, name: str = "image") -> Image.Image:
        """One image input as an RGB PIL image, stretched between `high_bit_depth_percentiles` (see [`load_image`])."""
        return load_image(image, name=name, percentiles=tuple(self.high_bit_depth_percentiles))

    def decode_change_mask(self, mask, name: str = "change mask") -> np.ndarray:
        """One change mask as `(H, W)` int64 ids of the `num_change_classes` classes (see [`load_change_mask`])."""
        return load_change_mask(mask, name=name, num_classes=self.num_change_classes)

    def preprocess(self, images, change_masks=None, **kwargs) -> BatchFeature:
        """Decode, resize and normalise (before, after) pairs, and their change masks.

        Args:
            images (`list` of `[before, after]` pairs): each image anything [`load_image`] accepts (a single image or
                a flat list of them is processed as LLaVA-OneVision's image processor does).
            change_masks (`list`, *optional*): one change mask per pair, or `None` for a pair without one (anything
                [`load_change_mask`] accepts). A mask whose size differs from its images' is resized with a warning.
            **kwargs: [`LlavaOnevisionImageProcessorPil`] options.

        Returns:
            [`BatchFeature`] with `pixel_values` `(2 * batch, 1, 3, H, W)`, `image_sizes` `(2 * batch, 2)` (the
            original sizes), `batch_num_images` `(batch,)`, and with change masks `change_masks` `(batch, H, W)` (class
            ids at the vision input size, -100 for every pixel of a pair given `None`).
        """
        decoded = self._decode_images(images, "images")
        outputs = super().preprocess(decoded, **kwargs)
        if change_masks is not None:
            outputs["change_masks"] = self._change_mask_tensor(
                change_masks, decoded, tuple(outputs["pixel_values"].shape[-2:])
            )
        return outputs

    def _decode_images(self, images, name: str):
        # Lists keep their nesting (pairs, or LLaVA-OneVision's single images); errors name the place, images[0][1].
        if isinstance(images, (list, tuple)):
            return [self._decode_images(image, f"{name}[{index}]") for index, image in enumerate(images)]
        return self.decode_image(images, name=name)

    def _change_mask_tensor(self, masks: list, images: list, size: tuple[int, int]) -> torch.Tensor:
        tensors = []
        for index, (mask, pair) in enumerate(zip(masks, images)):
            if mask is None:
                tensors.append(torch.full(size, IGNORE_INDEX, dtype=torch.long))
                continue
            name = f"change_masks[{index}]" + (f" ({mask})" if isinstance(mask, (str, os.PathLike)) else "")
            classes = self.decode_change_mask(mask, name=name)
            image_sizes = {image.size[::-1] for image in pair}
            if {classes.shape} != image_sizes:
                logger.warning(
                    f"{name}: mask of {classes.shape[0]}x{classes.shape[1]} (height x width) differs from its images "
                    f"({', '.join(f'{h}x{w}' for h, w in sorted(image_sizes))}); resized with nearest neighbour"
                )
            # nearest-exact samples each output pixel's centre, as the model samples masks at token centres.
            resized = torch.nn.functional.interpolate(
                torch.from_numpy(classes)[None, None].float(), size=size, mode="nearest-exact"
            )
            tensors.append(resized[0, 0].long())
        return torch.stack(tensors)

    def post_process_change_masks(self, change_logits: torch.Tensor, target_sizes=None) -> list[dict]:
        """Per pair, the change head's mask, the fraction of its area that changed and a change / no-change flag.

        Args:
            change_logits (`torch.Tensor` of shape `(num_pairs, num_classes, height, width)`): the model's
                `change_logits`.
            target_sizes (*optional*): `(height, width)` of each returned mask, e.g. `inputs["image_sizes"][0::2]`
                (the before images' original sizes); defaults to the logits' size. Logits are resized bilinearly
                before the argmax, so boundaries stay smooth at any size.

        Returns:
            `list[dict]`, one per pair: `change_mask` (`np.ndarray` of shape `(height, width)`, int64 class ids, 0 no
            change), `changed_fraction` (`float`, share of pixels of a non-zero class) and `changed` (`bool`).
        """
        if target_sizes is None:
            target_sizes = [tuple(change_logits.shape[-2:])] * change_logits.shape[0]
        if len(target_sizes) != change_logits.shape[0]:
            raise RsccInputError(
                f"target_sizes: expected one (height, width) per pair ({change_logits.shape[0]}), "
                f"got {len(target_sizes)}"
            )
        results = []
        for logits, size in zip(change_logits.detach(), target_sizes):
            size = tuple(int(side) for side in size)
            resized = torch.nn.functional.interpolate(
                logits[None].float(), size=size, mode="bilinear", align_corners=False
            )
            classes = resized[0].argmax(0).cpu().numpy()
            changed_fraction = float((classes != 0).mean())
            results.append(
                {"change_mask": classes, "changed_fraction": changed_fraction, "changed": changed_fraction > 0}
            )
        return results


class RsccProcessor(ProcessorMixin):
    r"""
    Processor for change captioning: an [`RsccImageProcessor`] and a Qwen2 tokenizer.

    Args:
        image_processor ([`RsccImageProcessor`]): decodes and resizes each image to the vision tower's size, and the
            change masks. A LLaVA-OneVision image processor (as processor folders saved before rscc had its own hold)
            is taken over with its settings.
        tokenizer ([`Qwen2Tokenizer`]): must know the `image_token` and the conversation's special tokens.
        num_image_tokens (`int`): vision tokens per image before the newline token (729 for SigLIP-384).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"full"`): as in the model config;
            `"default"` drops one token per image.
        prompt (`str`, *optional*): default user prompt of a pair, with one `image_token` placeholder per segment of
            `visual_tokens` (two by default: before, after); defaults to `DEFAULT_PROMPTS[visual_tokens]`. A series
            of N > 2 dates gets [`default_prompt`] (N placeholders) by default.
        conversation_template (`str`, *optional*): the text around the user prompt, with one `{prompt}` field,
            ending where the assistant's answer starts.
        turn_end (`str`, *optional*, defaults to `"<|im_end|>"`): appended to caption targets; supervised.
        image_token (`str`, *optional*, defaults to `"<image>"`).
        num_change_classes (`int`, *optional*): the image processor's `num_change_classes`, as processor folders
            saved before rscc had its own image processor hold it.
        chat_template (`str`, *optional*): kept for `apply_chat_template` users.
        visual_tokens (`str`, *optional*, defaults to `"pair"`): the model's `visual_tokens`: which segments (before,
            after, change) each pair shows the language model, each `num_image_tokens + 1` placeholders in place of
            one `image_token` of the prompt.
        pair_encoding (`str`, *optional*, defaults to `"images"`): the model's `pair_encoding`, which decides how many
            tokens each image placeholder stands for (see [`RsccProcessor.placeholder_token_counts`]).
        video_tubelet_size (`int`, *optional*, defaults to 1): frames per tubelet of the video encoder under
            `pair_encoding="video_encoder"`, whose `num_image_tokens` are the tokens of one tubelet.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 729,
        vision_feature_select_strategy: str = "full",
        prompt: str | None = None,
        conversation_template: str = DEFAULT_CONVERSATION_TEMPLATE,
        turn_end: str = "<|im_end|>",
        image_token: str = "<image>",
        num_change_classes: int | None = None,
        chat_template=None,
        visual_tokens: str = "pair",
        pair_encoding: str = "images",
        video_tubelet_size: int = 1,
        **kwargs,
    ):
        settings = {} if num_change_classes is None else {"num_change_classes": num_change_classes}
        if settings or not isinstance(image_processor, RsccImageProcessor):
            image_processor = RsccImageProcessor.from_image_processor(image_processor, **settings)
        if visual_tokens not in VISUAL_TOKEN_SEGMENTS:
            raise RsccInputError(f"visual_tokens={visual_tokens!r}: expected one of {list(VISUAL_TOKEN_SEGMENTS)}")
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.visual_tokens = visual_tokens
        self.prompt = DEFAULT_PROMPTS[visual_tokens] if prompt is None else prompt
        self.conversation_template = conversation_template
        self.turn_end = turn_end
        self.image_token = image_token
        self.pair_encoding = pair_encoding
        self.video_tubelet_size = video_tubelet_size
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding={pair_encoding!r}: expected one of {list(PAIR_ENCODINGS)}")
        if pair_encoding != "images" and vision_feature_select_strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy={vision_feature_select_strategy!r} with pair_encoding="
                f"{pair_encoding!r}: video encodings keep the full token grid; use 'full'"
            )
        if visual_tokens != "pair" and pair_encoding != "images":
            raise ValueError(
                f"visual_tokens={visual_tokens!r} with pair_encoding={pair_encoding!r}: change tokens are made on each "
                "image's SigLIP grid; use pair_encoding='images'"
            )
        if video_tubelet_size < 1 or (pair_encoding != "video_encoder" and video_tubelet_size != 1):
            raise ValueError(
                f"video_tubelet_size={video_tubelet_size}: expected 1, or the encoder's tubelet size under "
                "pair_encoding='video_encoder'"
            )
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or tokenizer.convert_ids_to_tokens(self.image_token_id) != image_token:
            raise ValueError(f"the tokenizer has no single token for image_token {image_token!r}")
        if conversation_template.count("{prompt}") != 1:
            raise ValueError("conversation_template must contain exactly one '{prompt}' field")
        self._check_prompt(self.prompt, "prompt", 2)

    def set_visual_tokens(self, visual_tokens: str) -> None:
        """Switch to a model's `visual_tokens`: the default prompt of the old setting becomes the new setting's; any
        other prompt must already hold the new setting's placeholder count."""
        if visual_tokens not in VISUAL_TOKEN_SEGMENTS:
            raise RsccInputError(f"visual_tokens={visual_tokens!r}: expected one of {list(VISUAL_TOKEN_SEGMENTS)}")
        prompt = DEFAULT_PROMPTS[visual_tokens] if self.prompt == DEFAULT_PROMPTS[self.visual_tokens] else self.prompt
        self._check_prompt(prompt, "prompt", 2, visual_tokens)
        self.visual_tokens, self.prompt = visual_tokens, prompt

    @property
    def num_change_classes(self) -> int:
        """Classes that change masks are decoded into: the image processor's setting."""
        return self.image_processor.num_change_classes

    @num_change_classes.setter
    def num_change_classes(self, value: int) -> None:
        self.image_processor.num_change_classes = value

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens each image expands to under `pair_encoding="images"` (grid tokens plus the newline
        token)."""
        return self.num_image_tokens + 1 - (self.vision_feature_select_strategy == "default")

    def placeholder_token_counts(self, num_dates: int = 2) -> list[int]:
        """How many tokens each image placeholder of a prompt expands to, in prompt order.

        `"images"`: each image's grid and newline token. `"llava_video"`: each frame's pooled grid (`ceil(side / 2)`
        squared), the last one plus the pair's newline token (2 x 196 + 1 = 393 at 384 px, as LLaVA-OneVision counts a
        2-frame video). `"video_encoder"`: the tokens of a tubelet at the placeholder of its last frame (none at the
        others), the last one plus the newline token. The language model sees each date's tokens where its
        placeholder stands, in the order the model computes them.
        """
        if self.visual_tokens != "pair":
            return [self.tokens_per_image] * len(VISUAL_TOKEN_SEGMENTS[self.visual_tokens])
        if self.pair_encoding == "images":
            return [self.tokens_per_image] * num_dates
        if self.pair_encoding == "llava_video":
            counts = [math.ceil(math.isqrt(self.num_image_tokens) / 2) ** 2] * num_dates
        else:
            tubelet = self.video_tubelet_size
            counts = [self.num_image_tokens if (date + 1) % tubelet == 0 else 0 for date in range(num_dates)]
        counts[-1] += 1
        return counts

    @classmethod
    def from_llava_onevision(
        cls, pretrained_model_name_or_path: str, image_processor_options: dict | None = None, **kwargs
    ) -> "RsccProcessor":
        """Build the processor from a LLaVA-OneVision checkpoint's image processor, tokenizer and config.

        Args:
            pretrained_model_name_or_path (`str`): Hub id or folder of a `llava_onevision` checkpoint.
            image_processor_options (`dict`, *optional*): settings that replace the checkpoint image processor's
                (`size`, `image_mean`, ...), e.g. a video encoder's frame size (`rscc.video_rscc.processor_options`).
            **kwargs: [`RsccProcessor`] options (`prompt`, `conversation_template`, `pair_encoding`, ...).
        """
        config = LlavaOnevisionConfig.from_pretrained(pretrained_model_name_or_path)
        grid = config.vision_config.image_size // config.vision_config.patch_size
        kwargs.setdefault("num_image_tokens", grid * grid)
        kwargs.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        return cls(
            image_processor=RsccImageProcessor.from_pretrained(
                pretrained_model_name_or_path, **(image_processor_options or {})
            ),
            tokenizer=AutoTokenizer.from_pretrained(pretrained_model_name_or_path),
            **kwargs,
        )

    def _check_prompt(self, prompt, name: str, num_dates: int, visual_tokens: str | None = None) -> None:
        """Check that a prompt has one placeholder per date of its sample (`visual_tokens="pair"`) or per segment of
        a pair (the other settings, which take pairs only)."""
        if not isinstance(prompt, str):
            raise RsccInputError(f"{name}: expected a string, got {type(prompt).__name__}")
        visual_tokens = visual_tokens or self.visual_tokens
        if visual_tokens != "pair" and num_dates != 2:
            raise RsccInputError(
                f"{name}: a sample of {num_dates} dates, but visual_tokens={visual_tokens!r} takes (before, after) "
                "pairs only"
            )
        found = prompt.count(self.image_token)
        if visual_tokens == "pair":
            expected, roles = num_dates, "before, after" if num_dates == 2 else "one per date, oldest first"
        else:
            expected, roles = len(VISUAL_TOKEN_SEGMENTS[visual_tokens]), ", ".join(VISUAL_TOKEN_SEGMENTS[visual_tokens])
        if found != expected:
            count = NUMBER_WORDS[expected] if expected < len(NUMBER_WORDS) else str(expected)
            raise RsccInputError(
                f"{name} must contain exactly {count} {self.image_token!r} placeholder{'s' * (expected > 1)} "
                f"({roles}) for visual_tokens={visual_tokens!r}; found {found} in {prompt!r}"
            )

    @staticmethod
    def _check_samples(images) -> list:
        expected = (
            "images must be a list of samples, each an ordered list of at least 2 co-registered images (a [before, "
            "after] pair or a time series), e.g. images=[[before, after], ...]"
        )
        if not isinstance(images, (list, tuple)) or not images:
            raise RsccInputError(f"{expected}; got {type(images).__name__ if images is not None else None}")
        for index, sample in enumerate(images):
            if not isinstance(sample, (list, tuple)):
                raise RsccInputError(f"{expected}; element {index} is a {type(sample).__name__}, not a list")
            if len(sample) < 2:
                raise RsccInputError(f"{expected}; element {index} holds {len(sample)} image(s)")
        return [list(sample) for sample in images]

    def _per_sample(self, values, num_samples: int, name: str) -> list:
        if isinstance(values, str):
            # One prompt serves every sample; one caption can only belong to one sample.
            values = [values] * num_samples if name == "text" else [values]
        if not isinstance(values, (list, tuple)) or len(values) != num_samples:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RsccInputError(f"{name}: expected one entry per sample ({num_samples}), got {got}")
        return list(values)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(
        self,
        images=None,
        text=None,
        captions=None,
        change_masks=None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepare pairs, or series of N >= 2 dates, for the model.

        Args:
            images (`list` of samples): each sample an ordered list of N >= 2 co-registered images, oldest first (a
                `[before, after]` pair is N = 2); samples of one batch may differ in N. Each image a path, PIL image,
                numpy array or tensor (see [`load_image`]). Images of any size are resized to the vision tower's
                input size.
            text (`str` or `list[str]`, *optional*): user prompt per sample (one string applies to all), each with
                one image placeholder per date (per segment of `visual_tokens` for its other settings); defaults to
                `self.prompt` for pairs and [`default_prompt`] for series.
            captions (`list[str]`, *optional*): target caption per sample, for training. Targets are formatted with
                [`to_sentence_case`] and followed by `turn_end`; `labels` supervise only those tokens.
            change_masks (`list`, *optional*): one change mask per sample (first to last date), or `None` for a sample
                without one: a PNG path, PIL image, array or tensor in any encoding [`load_change_mask`] documents.
                Masks are resized (nearest) to the vision input size like the images; a mask whose size differs from
                its images' is resized with a warning.
            padding_side (`str`, *optional*): `"left"` (default without captions: generation) or `"right"`
                (default with captions: training).
            return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"` is supported.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `(batch, seq_len)`, `pixel_values`
            `(num_images, 1, 3, H, W)` (every sample's images in turn), `image_sizes` `(num_images, 2)`,
            `batch_num_images` `(batch,)` (each sample's N), with captions `labels` `(batch, seq_len)`, and with change
            masks `change_masks` `(batch, H, W)` (class ids, -100 for every pixel of a sample given `None`).
        """
        if return_tensors != "pt":
            raise RsccInputError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        samples = self._check_samples(images)
        num_dates = [len(sample) for sample in samples]
        if text is None:
            prompts = [self.prompt if n == 2 else default_prompt(n, self.image_token) for n in num_dates]
        else:
            prompts = self._per_sample(text, len(samples), "text")
        for index, prompt in enumerate(prompts):
            self._check_prompt(prompt, f"text[{index}]", num_dates[index])
        targets = None
        if captions is not None:
            targets = [to_sentence_case(c) for c in self._per_sample(captions, len(samples), "captions")]
        padding_side = padding_side or ("left" if targets is None else "right")
        if padding_side not in ("left", "right"):
            raise RsccInputError(f"padding_side={padding_side!r}: expected 'left' or 'right'")

        masks = None if change_masks is None else self._per_sample(change_masks, len(samples), "change_masks")
        image_inputs = self.image_processor(samples, change_masks=masks, return_tensors="pt", **kwargs)

        sequences, label_sequences = [], []
        for index, prompt in enumerate(prompts):
            prompt_ids, counts = [], iter(self.placeholder_token_counts(num_dates[index]))
            for token_id in self._encode(self.conversation_template.format(prompt=prompt)):
                prompt_ids.extend([token_id] * (next(counts) if token_id == self.image_token_id else 1))
            target_ids = [] if targets is None else self._encode(targets[index] + self.turn_end)
            if self.image_token_id in target_ids:
                raise RsccInputError(f"captions[{index}] contains the image token {self.image_token!r}")
            sequences.append(prompt_ids + target_ids)
            label_sequences.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)

        longest = max(len(ids) for ids in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def pad(ids, value):
            filler = [value] * (longest - len(ids))
            return filler + ids if padding_side == "left" else ids + filler

        data = {
            "input_ids": torch.tensor([pad(ids, pad_id) for ids in sequences], dtype=torch.long),
            "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids in sequences], dtype=torch.long),
            "pixel_values": image_inputs["pixel_values"],
            "image_sizes": image_inputs["image_sizes"],
            "batch_num_images": torch.tensor(num_dates, dtype=torch.long),
        }
        if targets is not None:
            data["labels"] = torch.tensor([pad(ids, IGNORE_INDEX) for ids in label_sequences], dtype=torch.long)
        if masks is not None:
            data["change_masks"] = image_inputs["change_masks"]
        return BatchFeature(data=data)

    def post_process_change_masks(self, change_logits: torch.Tensor, target_sizes=None) -> list[dict]:
        """The change head's masks per pair: see [`RsccImageProcessor.post_process_change_masks`]."""
        return self.image_processor.post_process_change_masks(change_logits, target_sizes=target_sizes)

    def post_process_captions(self, generated_ids: torch.Tensor, inputs=None) -> list[str]:
        """Clean caption strings from `generate` output.

        Args:
            generated_ids (`torch.Tensor` of shape `(batch, seq_len)`): `model.generate(**inputs)` output.
            inputs (*optional*): the processor output given to `generate`; its prompt tokens are removed first.
                Without it, `generated_ids` must hold only new tokens.

        Returns:
            `list[str]`, one caption per pair, without special tokens and surrounding whitespace.
        """
        if inputs is not None:
            prompt_ids = inputs["input_ids"]
            matches = generated_ids.shape[0] == prompt_ids.shape[0] and generated_ids.shape[1] >= prompt_ids.shape[1]
            if not matches or not torch.equal(generated_ids[:, : prompt_ids.shape[1]].cpu(), prompt_ids.cpu()):
                raise RsccInputError(
                    f"post_process_captions: generated_ids {tuple(generated_ids.shape)} do not start with the prompts "
                    f"of inputs {tuple(prompt_ids.shape)}; pass the inputs that generate was called with"
                )
            generated_ids = generated_ids[:, prompt_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images", "change_masks"]


RsccImageProcessor.register_for_auto_class()
RsccProcessor.register_for_auto_class()

__all__ = [
    "RsccProcessor",
    "RsccImageProcessor",
    "RsccInputError",
    "InputFileNotFoundError",
    "load_image",
    "load_change_mask",
    "default_prompt",
    "to_sentence_case",
    "stretch_to_uint8",
    "pillow_truncates",
]
