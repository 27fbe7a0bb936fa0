"""Validation of one record: ids, split, captions and flag, and images and mask read, decoded and compared."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from PIL import Image

from ..caption_text import collapse_whitespace, is_no_change_caption
from ..errors import RsccInputError
from ..processing_rscc import load_change_mask, pillow_truncates
from .schema import MAX_MASK_CLASSES, SPLIT_NAME, ChangeRecord, ImageSource, Problem


class _ImageProblem(Exception):
    def __init__(self, kind: str, file: str, detail: str):
        super().__init__(detail)
        self.kind, self.file, self.detail = kind, file, detail


def _load_image(source: ImageSource) -> tuple:
    """Encoded bytes as stored ({"bytes", "path"}), the file to name in messages, and the image size.

    Raises `_ImageProblem` when the file is missing or does not decode.
    """
    if isinstance(source, dict) and source.get("bytes") is None:
        source = source.get("path") or ""
    if isinstance(source, dict):
        data, name = source["bytes"], source.get("path") or ""
        file = name
    else:
        file = os.fspath(source)
        name = os.path.basename(file)
        if not file:
            raise _ImageProblem("missing image", "", "no image path given")
        try:
            with open(file, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise _ImageProblem("missing image", file, "file not found") from None
        except OSError as error:
            raise _ImageProblem("unreadable image", file, f"cannot read file ({error.strerror or error})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if pillow_truncates(image):
                raise _ImageProblem(
                    "16-bit colour image", file, "training decodes images with Pillow, which keeps only the high "
                    "byte of each 16-bit colour band (a black image); convert it to 8 bits first")
            # PNG's verify() checks the CRC of every chunk, which catches truncated and corrupted files without
            # decoding pixels (about 20x faster); other formats have no such check, so they are decoded.
            if image.format == "PNG":
                image.verify()
            else:
                image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError) as error:
        raise _ImageProblem("unreadable image", file, f"not an image Pillow can read ({error})") from None
    if size[0] == 0 or size[1] == 0:
        raise _ImageProblem("unreadable image", file, f"image of {size[0]} x {size[1]} pixels has no pixels")
    return {"bytes": data, "path": name}, file, size


def _check_mask_values(encoded: dict) -> None:
    """Raise `_ImageProblem` unless the mask's values are an encoding the change head reads (`load_change_mask`,
    up to LEVIR-MCI's three classes)."""
    try:
        load_change_mask(Image.open(io.BytesIO(encoded["bytes"])), name="mask", num_classes=MAX_MASK_CLASSES)
    except RsccInputError as error:
        raise _ImageProblem("bad mask values", encoded["path"], str(error)) from None


def _has_words(caption: str) -> bool:
    """Whether a caption says anything once whitespace and punctuation are gone ("." and " , " say nothing)."""
    return any(character.isalnum() for character in caption)


def check_record(record: ChangeRecord) -> tuple:
    """(row in FEATURES form, encoded size) of a valid record, or (None, problems)."""
    problems = list(record.problems)

    def report(kind: str, file: str, detail: str) -> None:
        problems.append(Problem(kind, str(record.id), file, detail))

    captions, change_flag = _check_fields(record, report)
    images = _check_images(record, report)
    if problems:
        return None, problems
    row = {
        "id": str(record.id),
        "before": images["before"][0],
        "after": images["after"][0],
        "captions": captions,
        "change_flag": int(change_flag),
        "change_mask": images["change_mask"][0] if "change_mask" in images else None,
        "source": record.source,
        "images": [images[f"images[{index}]"][0] for index in range(len(record.images))],
    }
    return row, sum(len(image[0]["bytes"]) for image in images.values())


def _check_fields(record: ChangeRecord, report: Callable[[str, str, str], None]) -> tuple:
    """Report what is wrong with the id, split, source, captions and flag; returns (captions, change flag) as stored,
    the flag derived from the captions when the record has none."""
    if not record.id:
        report("missing id", record.origin, "record has no id")
    if not isinstance(record.split, str) or not SPLIT_NAME.match(record.split):
        report("bad split", record.origin, f"split {record.split!r} is not a valid split name (letters, digits, _)")
    if not record.source:
        report("missing source", record.origin, "record has no source name")
    captions = record.captions if isinstance(record.captions, (list, tuple)) else []
    captions = [collapse_whitespace(caption) if isinstance(caption, str) else "" for caption in captions]
    if not captions:
        report("empty caption", record.origin, f"no captions (got {record.captions!r})")
    elif not all(map(_has_words, captions)):
        empty = [str(index) for index, caption in enumerate(captions) if not _has_words(caption)]
        report("empty caption", record.origin,
               f"caption(s) {', '.join(empty)} of {len(captions)} empty, punctuation only or not text")
    change_flag = record.change_flag
    if change_flag is None:
        change_flag = 0 if captions and all(map(is_no_change_caption, captions)) else 1
    elif change_flag not in (0, 1):
        report("bad change_flag", record.origin, f"change_flag must be 0 or 1, got {change_flag!r}")
    return captions, change_flag


def _check_images(record: ChangeRecord, report: Callable[[str, str, str], None]) -> dict:
    """Report unreadable images and mask, sizes that differ and mask values; returns role -> `_load_image` result
    of the images that loaded."""
    images = {}
    series = [(f"images[{index}]", source) for index, source in enumerate(record.images)]
    for role, source in [("before", record.before), ("after", record.after), ("change_mask", record.change_mask),
                         *series]:
        if source is None:
            continue
        try:
            images[role] = _load_image(source)
        except _ImageProblem as problem:  # with no file to name, the record's origin (manifest line, row) says where
            report(problem.kind if role != "change_mask" else problem.kind.replace("image", "mask"),
                   problem.file or record.origin, f"{role}: {problem.detail}")
    if "before" in images and "after" in images and images["before"][2] != images["after"][2]:
        (_, _, before_size), (_, after_file, after_size) = images["before"], images["after"]
        report("pair size mismatch", after_file,
               f"after image is {after_size[0]}x{after_size[1]} but before image is {before_size[0]}x{before_size[1]}")
    for role, _ in series:
        if role in images and "before" in images and images[role][2] != images["before"][2]:
            (_, _, before_size), (_, file, size) = images["before"], images[role]
            report("pair size mismatch", file,
                   f"{role} is {size[0]}x{size[1]} but the before image is {before_size[0]}x{before_size[1]}")
    if "change_mask" in images and "before" in images and images["change_mask"][2] != images["before"][2]:
        (_, _, image_size), (_, mask_file, mask_size) = images["before"], images["change_mask"]
        report("mask size mismatch", mask_file,
               f"mask is {mask_size[0]}x{mask_size[1]} but the images are {image_size[0]}x{image_size[1]}")
    elif "change_mask" in images:
        try:
            _check_mask_values(images["change_mask"][0])
        except _ImageProblem as problem:
            report(problem.kind, images["change_mask"][1], problem.detail)
    return images
