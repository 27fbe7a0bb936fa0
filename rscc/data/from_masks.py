"""Captions from change masks: a change-detection set (before, after, mask) made into change-captioning data.

CCExpert captioned its mask-only sources with GPT-4o; this writes template sentences instead, from what the mask
shows: the connected changed regions of each class, their count, their size and where they lie in a 3x3 grid of the
scene, in LEVIR-CC's style (lower case, " ." at the end). A pair gets `NUM_CAPTIONS` different sentences, chosen
deterministically from the seed and the pair's id; an empty mask gets LEVIR-CC's canonical no-change sentences.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from ..caption_text import NO_CHANGE_SENTENCES
from ..defaults import DEFAULT_MIN_REGION_PIXELS
from .schema import ChangeRecord, DataInputError, Problem

NUM_CAPTIONS = 5
# Regions smaller than this many pixels are label noise (a few stray pixels at a region's edge), not an object a
# caption should count, when the mask has larger ones; a mask with only such specks has them counted all the same,
# so that captions, change_flag and the stored mask all say that something changed.
# Binary masks (LEVIR-CD, WHU-CD, ...) mark changed buildings.
DEFAULT_CLASS_NAMES = {1: "building"}
# A region's share of the image below which it is "small", and from which it is "large".
SMALL_REGION_SHARE, LARGE_REGION_SHARE = 0.005, 0.04

GRID_PLACES = (("top left", "top", "top right"), ("left", "center", "right"),
               ("bottom left", "bottom", "bottom right"))
_PLACE_PHRASES = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}
_COUNT_WORDS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Land-cover classes that are not counted objects: "two areas of water", never "two waters".
MASS_NOUNS = {"water", "vegetation", "low vegetation", "non-vegetated ground surface", "ground", "bareland",
              "grass", "sand", "soil", "farmland"}

# LEVIR-CC-style sentences: an opening said once, then one clause per class, where {things} is "three small
# buildings", {appear}, {have} and {be} agree with it and {places} names the grid cells of its largest regions.
# Every clause names the count and the places.
_TEMPLATES = (
    ("", "{things} {appear} {places}"),
    ("", "{things} {have} appeared {places}"),
    ("", "there {be} {things} {places}"),
    ("", "{things} {be} added {places}"),
    ("", "{places} , {things} {appear}"),
    ("compared with before , ", "{things} {appear} {places}"),
    ("the scene changes : ", "{things} {appear} {places}"),
)


@dataclass(frozen=True)
class ChangedRegion:
    """One connected region of one class in a change mask."""

    class_name: str
    pixels: int
    place: str  # cell of the 3x3 grid holding its centroid, e.g. "top left"


def connected_regions(mask: np.ndarray) -> list:
    """Pixel index arrays (flat indices, ascending) of the 4-connected regions of the True pixels of `mask`.

    Runs of True pixels per row are joined with the runs they overlap in the row above (union-find over runs):
    far fewer steps than a pixel-wise flood fill, in plain numpy.
    """
    height, width = mask.shape
    runs = []  # (row, start, stop)
    for row in range(height):
        padded = np.concatenate(([False], mask[row], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        runs += [(row, int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2])]
    parent = list(range(len(runs)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    previous_row_runs: list = []  # indices of the runs of the row above
    current_row, current_row_runs = -1, []
    for index, (row, start, stop) in enumerate(runs):
        if row != current_row:
            previous_row_runs = current_row_runs if row == current_row + 1 else []
            current_row, current_row_runs = row, []
        for other in previous_row_runs:
            _, other_start, other_stop = runs[other]
            if other_start < stop and start < other_stop:  # overlapping columns: 4-connected
                parent[root(other)] = root(index)
        current_row_runs.append(index)
    regions: dict = {}
    for index, (row, start, stop) in enumerate(runs):
        regions.setdefault(root(index), []).append(np.arange(row * width + start, row * width + stop))
    return [np.sort(np.concatenate(parts)) for parts in regions.values()]


def grid_place(flat_indices: np.ndarray, shape: tuple) -> str:
    """The cell of a 3x3 grid over an image of `shape` that holds the centroid of the given pixels."""
    rows, columns = np.divmod(flat_indices, shape[1])
    cell_row = min(2, int(rows.mean() * 3 // shape[0]))
    cell_column = min(2, int(columns.mean() * 3 // shape[1]))
    return GRID_PLACES[cell_row][cell_column]


def changed_regions(class_mask: np.ndarray, class_names: dict, min_region_pixels: int = DEFAULT_MIN_REGION_PIXELS
                    ) -> list:
    """The changed regions of a mask of class ids (0 = no change), largest first, those under
    `min_region_pixels` left out unless all are; `class_names` names every non-zero id (`read_class_mask` makes
    only those)."""
    regions = [ChangedRegion(class_name, len(pixels), grid_place(pixels, class_mask.shape))
               for class_id, class_name in class_names.items()
               for pixels in connected_regions(class_mask == class_id)]
    counted = [region for region in regions if region.pixels >= min_region_pixels] or regions
    return sorted(counted, key=lambda region: -region.pixels)


def _plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _size_word(pixels: float, image_pixels: int) -> str:
    share = pixels / image_pixels
    return "small " if share < SMALL_REGION_SHARE else "large " if share >= LARGE_REGION_SHARE else ""


def _things(class_name: str, regions: list, image_pixels: int) -> tuple:
    """("two large buildings", plural?) for the regions of one class: count, size of the mean region, noun."""
    count = len(regions)
    count_word = _COUNT_WORDS[count] if count < len(_COUNT_WORDS) else "many"
    size = _size_word(sum(region.pixels for region in regions) / count, image_pixels)
    if class_name in MASS_NOUNS:
        noun = f"{size}area{'s' if count > 1 else ''} of {class_name}"
    else:
        noun = size + (_plural(class_name) if count > 1 else class_name)
    if count_word == "a" and noun[0] in "aeiou":
        count_word = "an"
    return f"{count_word} {noun}", count > 1


def _places_phrase(regions: list) -> str:
    """Where the regions are: the grid cells of the (up to three) largest regions, largest first."""
    places = list(dict.fromkeys(region.place for region in regions))[:3]
    phrases = [_PLACE_PHRASES[place] for place in places]
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def _clause(template: str, class_name: str, regions: list, image_pixels: int) -> str:
    things, plural = _things(class_name, regions, image_pixels)
    return template.format(things=things, places=_places_phrase(regions), appear="appear" if plural else "appears",
                           have="have" if plural else "has", be="are" if plural else "is")


def captions_for_regions(regions: list, image_pixels: int, rng: random.Random, num_captions: int = NUM_CAPTIONS
                         ) -> list:
    """`num_captions` different template sentences for the regions of one pair (the no-change sentences when there
    are none); with several classes, one clause per class (the class with the largest region first)."""
    if not regions:
        return [f"{sentence} ." for sentence in NO_CHANGE_SENTENCES[:num_captions]]
    by_class: dict = {}
    for region in regions:  # largest first, so classes come in the order of their largest region
        by_class.setdefault(region.class_name, []).append(region)
    templates = rng.sample(_TEMPLATES, num_captions)
    captions = []
    for opening, template in templates:
        clauses = [_clause(template, name, class_regions, image_pixels) for name, class_regions in by_class.items()]
        captions.append(opening + " and ".join(clauses) + " .")
    return captions


def _colour_codes(pixels: np.ndarray) -> np.ndarray:
    """One integer per RGB colour (r * 65536 + g * 256 + b)."""
    pixels = pixels.astype(np.int32)
    return (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]


def read_class_mask(path: Path, class_values: Optional[dict]) -> np.ndarray:
    """The class ids of a mask file (0 = no change).

    Binary masks (`class_values` None): every non-zero pixel of channel 0 is class 1. Otherwise `class_values`
    maps grey levels (int keys; channel 0 of an RGB mask, LEVIR-MCI's convention) or RGB colours (tuple keys,
    SECOND's convention) to class ids; a level or colour it does not name is a `DataInputError`.
    """
    with Image.open(path) as image:
        colour = class_values is not None and any(isinstance(key, tuple) for key in class_values)
        pixels = np.asarray(image.convert("RGB") if colour else image)
    if not colour and pixels.ndim == 3:
        pixels = pixels[..., 0]
    if class_values is None:
        return (pixels > 0).astype(np.uint8)
    values = _colour_codes(pixels) if colour else pixels
    keys = {(_colour_codes(np.array(key)) if colour else key): class_id for key, class_id in class_values.items()}
    present, inverse = np.unique(values, return_inverse=True)
    unknown = [value for value in present.tolist() if value not in keys]
    if unknown:
        shown = [f"{v >> 16}/{(v >> 8) & 255}/{v & 255}" if colour else str(v) for v in unknown[:5]]
        raise DataInputError(f"{path}: {'colours' if colour else 'grey levels'} {', '.join(shown)} are not among "
                             f"the classes' {'colours' if colour else 'levels'}")
    return np.array([keys[value] for value in present.tolist()], dtype=np.uint8)[inverse].reshape(values.shape)


def _parse_level(text: str) -> object:
    """A grey level `N` (1..255) or an RGB colour `R/G/B`, or None when it is neither."""
    parts = text.strip().split("/")
    if len(parts) not in (1, 3) or not all(part.isdigit() and int(part) < 256 for part in parts):
        return None
    return int(parts[0]) if len(parts) == 1 else tuple(map(int, parts))


def parse_classes(spec: str) -> tuple:
    """`LEVEL=NAME,...` as (level -> class id, class id -> name). LEVEL is a grey level (`128=road,255=building`;
    0 is no change) or an RGB colour (`0/0/255=water`); the colour of no change is the one named `unchanged`."""
    levels, names, items_of_level, items_of_name = {}, {}, {}, {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        level_text, separator, name = item.partition("=")
        level = _parse_level(level_text)
        if not separator or level is None or level == 0 or not name.strip():
            raise DataInputError(f"--classes {spec!r}: {item!r} is not LEVEL=NAME with LEVEL a grey level 1..255 "
                                 "or a colour R/G/B")
        if level in items_of_level:
            raise DataInputError(f"--classes {spec!r}: {items_of_level[level]!r} and {item!r} name one "
                                 f"{'colour' if isinstance(level, tuple) else 'grey level'} twice; give each one name")
        if name.strip().lower() in items_of_name and name.strip().lower() != "unchanged":
            raise DataInputError(f"--classes {spec!r}: {items_of_name[name.strip().lower()]!r} and {item!r} give one "
                                 "class two levels; a class is one level (or colour), each name once")
        items_of_level[level], items_of_name[name.strip().lower()] = item, item
        if name.strip().lower() == "unchanged":
            levels[level] = 0
        else:
            names[len(names) + 1] = name.strip().lower()
            levels[level] = len(names)
    if not names:
        raise DataInputError(f"--classes {spec!r}: no LEVEL=NAME given")
    colours = {isinstance(level, tuple) for level in levels}
    if colours == {True, False}:
        raise DataInputError(f"--classes {spec!r}: give either grey levels or R/G/B colours, not both")
    if colours == {False}:
        levels[0] = 0
    elif 0 not in levels.values():
        raise DataInputError(f"--classes {spec!r}: name the colour of unchanged pixels, e.g. 255/255/255=unchanged")
    return levels, names


def _binary_mask_bytes(class_mask: np.ndarray, name: str) -> dict:
    """A 0/255 PNG of the changed pixels: what the change head trains on, whatever the source's class levels."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(class_mask > 0, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": name}


def _is_zero_255(path: Path) -> bool:
    """Whether a mask file holds only 0 and 255 already (stored as it is; 0/1 and other levels are rewritten)."""
    with Image.open(path) as image:
        return set(np.unique(np.asarray(image)).tolist()) <= {0, 255}


def from_masks_records(
    root: Union[str, os.PathLike],
    split: str = "train",
    source: str = "levir_cd",
    *,
    before_dir: str = "A",
    after_dir: str = "B",
    mask_dir: str = "label",
    classes: Optional[str] = None,
    binary_class_name: str = DEFAULT_CLASS_NAMES[1],
    min_region_pixels: int = DEFAULT_MIN_REGION_PIXELS,
    seed: int = 0,
    names: Optional[list] = None,
) -> Iterator[ChangeRecord]:
    """Records of a change-detection set in LEVIR-CD's layout, `ROOT/{A,B,label}/<name>`, captioned from its masks.

    Every before image is a pair (joined to after image and mask on file name). A pair whose mask is missing,
    unreadable or has grey levels `classes` does not name becomes a record without captions that carries the
    problem, so that the build reports it with the file.

    Args:
        root: The folder holding the three image folders.
        split: Split of the records.
        source: Source name of the records.
        before_dir, after_dir, mask_dir: The folder names under `root`.
        classes: `LEVEL=NAME,...` for semantic masks; None for binary masks (any non-zero pixel changed).
        binary_class_name: What a binary mask's changed regions are called.
        min_region_pixels: Smallest region a caption counts.
        seed: Seed of the template choice; the same seed gives the same captions.
        names: The file names of the pairs to take (e.g. from a split list); default: every before image.
    """
    root = Path(root)
    class_values, class_names = parse_classes(classes) if classes else (None, {1: binary_class_name})
    if not (root / before_dir).is_dir():
        raise DataInputError(f"{root}: no {before_dir}/ folder of before images")
    befores = sorted((root / before_dir).iterdir()) if names is None else [root / before_dir / name for name in names]
    for before in befores:
        mask_path = root / mask_dir / before.name
        record = ChangeRecord(id=before.stem, split=split, before=before, after=root / after_dir / before.name,
                              captions=[], change_mask=mask_path, source=source, origin=f"{root} ({before.name})")
        try:
            class_mask = read_class_mask(mask_path, class_values)
            regions = changed_regions(class_mask, class_names, min_region_pixels)
        except FileNotFoundError:
            # Validation reports the missing mask file; this says why the record has no captions.
            record.problems = (Problem("no captions", before.stem, str(mask_path),
                                       "captions come from the mask, which is missing"),)
            yield record
            continue
        except DataInputError as error:
            record.problems = (Problem("bad mask values", before.stem, str(mask_path), f"no captions: {error}"),)
            yield record
            continue
        except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for a file it cannot decode
            record.problems = (Problem("unreadable mask", before.stem, str(mask_path),
                                       f"no captions: the mask cannot be read ({error})"),)
            yield record
            continue
        record.captions = captions_for_regions(regions, class_mask.size, random.Random(f"{seed}:{before.stem}"))
        record.change_flag = int(bool(class_mask.any()))
        if class_values is not None or not _is_zero_255(mask_path):
            record.change_mask = _binary_mask_bytes(class_mask, mask_path.name)
        yield record


def template_caption_note(seed: int, min_region_pixels: int) -> str:
    """The card's description of a source captioned by `from_masks_records`."""
    return (f"Captions are template sentences written by `rscc data from-masks` (seed {seed}) from the change masks: "
            f"count, size and 3x3-grid place of the connected changed regions of at least {min_region_pixels} "
            "pixels, per class; empty masks get LEVIR-CC's no-change sentences. They are not human captions.")
