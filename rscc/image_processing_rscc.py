"""rscc's image processor: everything about pixels. Image inputs of any kind decoded to 8-bit RGB (deep imagery
stretched), change masks decoded into the change head's classes, and the head's logits read back as masks.

A file Pillow cannot read at full depth (16-bit colour PNG or TIFF, band-interleaved or GDAL-written TIFF) is read with
GDAL through rasterio when rasterio is installed, and refused otherwise, never truncated. Like the other remote-code
files it imports only the standard library, torch, transformers (with numpy and Pillow, which they use) and its
siblings; rasterio is optional.
"""

import contextlib
import logging as python_logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import LlavaOnevisionImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorKwargs,
)
from transformers.utils import logging

from .configuration_rscc import IGNORE_INDEX
from .errors_rscc import InputFileNotFoundError, RsccInputError

try:  # optional: GDAL reads the image files Pillow cannot read at full depth
    import rasterio
    import rasterio.errors
except ImportError:
    rasterio = None

logger = logging.get_logger(__name__)

HIGH_BIT_DEPTH_PERCENTILES = (2.0, 98.0)
# LEVIR-CD (0/255) and LEVIR-MCI (0/128/255, channel 0 of its RGB labels) grey levels; None: the last class.
GREY_LEVEL_CLASSES = {0: 0, 128: 1, 255: None}
# Pillow modes of 8 bits per band: a file decoded into one of them through a 16-bit raw mode keeps only high bytes.
_EIGHT_BIT_BAND_MODES = ("RGB", "RGBA", "LA", "CMYK")
# GDAL colour interpretations (rasterio's `ColorInterp` values) of red, green, blue and alpha.
_RED, _GREEN, _BLUE, _ALPHA = 3, 4, 5, 6


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
    if rasterio is None:
        raise RsccInputError(
            f"{name}: cannot read image file {path}: {pillow_problem}; with rasterio installed it is read with GDAL, "
            "or pass the image as a numpy array"
        )
    try:
        array = read_full_depth(path, name)
    except RsccInputError as error:
        raise RsccInputError(f"{name}: cannot read image file {path}: {pillow_problem}, nor GDAL ({error})") from None
    return _array_to_rgb(array, f"{name} ({path})", percentiles)


def default_rgb_bands(dataset) -> list[int]:
    """The 1-based bands of an open rasterio dataset that make the image the model sees: those whose colour
    interpretation is red, green and blue, else the first three bands that are not alpha, else the first band."""
    interpretation = [int(colour) for colour in dataset.colorinterp]
    if all(colour in interpretation for colour in (_RED, _GREEN, _BLUE)):
        return [interpretation.index(colour) + 1 for colour in (_RED, _GREEN, _BLUE)]
    not_alpha = [index + 1 for index, colour in enumerate(interpretation) if colour != _ALPHA]
    return not_alpha[:3] if len(not_alpha) >= 3 else not_alpha[:1]


class _Complaints(python_logging.Handler):
    def __init__(self):
        super().__init__(python_logging.INFO)
        self.messages = []

    def emit(self, record: python_logging.LogRecord) -> None:
        if record.levelno >= python_logging.WARNING or "GDAL signalled" in record.getMessage():
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def gdal_complaints_as_errors(path: str | os.PathLike, name: str) -> Iterator[None]:
    """Make every GDAL error or warning about a file during the block an [`RsccInputError`] naming it: rasterio logs
    some (a damaged block GDAL fills in) and carries on with pixels that are not the file's."""
    complaints = _Complaints()
    loggers = [python_logging.getLogger(logger_name) for logger_name in ("rasterio._err", "rasterio._env")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(complaints)
        logger.setLevel(python_logging.INFO)
    try:
        yield
    except rasterio.errors.RasterioIOError as error:
        raise RsccInputError(f"{name}: cannot read the pixels of {path}: "
                             f"{'; '.join(complaints.messages) or error}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(complaints)
            logger.setLevel(level)
    if complaints.messages:
        raise RsccInputError(f"{name}: GDAL reports problems with {path}: {'; '.join(complaints.messages)}")


def read_full_depth(path: str | os.PathLike, name: str) -> np.ndarray:
    """A whole image file as GDAL reads it (rasterio must be installed): its RGB bands (or grey band) at full depth,
    `(H, W, 3)` or `(H, W)`.

    Raises:
        RsccInputError: GDAL cannot read it either, or it is larger than Pillow's decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise RsccInputError(f"{name}: {path} is not a raster that GDAL can read ({error})") from None
    with dataset:
        if dataset.width * dataset.height > 2 * (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise RsccInputError(
                f"{name}: image file {path} of {dataset.width} x {dataset.height} pixels is too large to read whole; "
                "caption large rasters tile by tile with `rscc scene`"
            )
        with gdal_complaints_as_errors(path, name):
            values = dataset.read(default_rgb_bands(dataset))
    return values[0] if values.shape[0] == 1 else np.moveaxis(values, 0, -1)


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


RsccImageProcessor.register_for_auto_class()

__all__ = [
    "RsccImageProcessor",
    "load_image",
    "load_change_mask",
    "stretch_to_uint8",
    "pillow_truncates",
    "default_rgb_bands",
    "read_full_depth",
]
