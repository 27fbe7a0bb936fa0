"""STVchrono (Sun et al., CVPR 2024): Mapillary street-view sequences of 2 to 5 images, captioned per aspect by
two annotation projects (`PJ1_annotations.json`, `PJ2_annotations.json`) over the same sequences."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Union

from .schema import ChangeRecord, DataInputError, Problem
from .source_files import check_fields, read_json_records

# The aspects annotators described, one textarea each; "0_sentences" is a switch, not a caption.
STVCHRONO_CAPTION_KEYS = ("1_weather", "2_tree", "3_building", "4_road", "5_lawn_grassland_soil_land_river_roadfence",
                          "6_human", "7_car")


def _sequence_captions(path: Path, where: str, item: dict) -> list:
    """The non-empty aspect captions of one annotation record, in aspect order (an aspect left blank says
    nothing)."""
    attributes = item["attributes"]
    if not isinstance(attributes, list) or not all(isinstance(a, dict) and isinstance(a.get("key"), str)
                                                   and isinstance(a.get("value"), str) for a in attributes):
        raise DataInputError(f"{path}: {where}: attributes must be a list of {{key, value}} objects with text values")
    values = {attribute["key"]: attribute["value"] for attribute in attributes}
    return [values[key] for key in STVCHRONO_CAPTION_KEYS if values.get(key, "").strip()]


def _image_names(path: Path, where: str, item: dict) -> list:
    contents = item["contents"]
    if not isinstance(contents, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                 for c in contents):
        raise DataInputError(f"{path}: {where}: contents must be a list of {{name, ...}} objects")
    return [content["name"] for content in contents]


def stvchrono_records(annotation_files: Iterable[Union[str, os.PathLike]], images: Union[str, os.PathLike],
                      split: str = "train") -> Iterator[ChangeRecord]:
    """Records of STVchrono's two-image sequences, the captions of every annotation file joined on the sequence
    `name` (PJ1 and PJ2 describe the same sequences).

    A pair is `contents[0]` (image A, before) and `contents[1]` (image B, after); its captions are the non-empty
    aspect answers (weather, tree, building, road, land, human, car). Sequences of 3 to 5 images are records with
    the problem "not a pair": their captions compare three or more images ("A has more big trees than B and C"),
    so they cannot describe one pair; a build lists them (and leaves them out with --skip-invalid).

    Args:
        annotation_files: `PJ1_annotations.json`, `PJ2_annotations.json` (or either).
        images: The folder holding the downloaded Mapillary images, named as in `contents[].name`.
        split: Split of all records (STVchrono publishes no split).
    """
    images = Path(images)
    sequences: dict = {}  # name -> (images, captions, origins), in first-seen order
    for path in map(Path, annotation_files):
        for where, item in read_json_records(path):
            check_fields(path, where, item, {"name": str})
            for key in ("contents", "attributes"):
                if key not in item:
                    raise DataInputError(f"{path}: {where} has no {key}")
            names = _image_names(path, where, item)
            sequence = sequences.setdefault(item["name"], (names, [], []))
            if sequence[0] != names:
                raise DataInputError(f"{path}: {where}: sequence {item['name']!r} lists images {names}, but "
                                     f"{sequence[2][0]} lists {sequence[0]}")
            sequence[1].extend(_sequence_captions(path, where, item))
            sequence[2].append(f"{path} ({where})")
    for name, (names, captions, origins) in sequences.items():
        problems = () if len(names) == 2 else (Problem(
            "not a pair", name, origins[0],
            f"a sequence of {len(names)} images; its captions compare them all, so they describe no single pair"),)
        yield ChangeRecord(id=name, split=split, before=images / names[0], after=images / names[-1],
                           captions=captions, source="stvchrono", origin="; ".join(origins), problems=problems)
