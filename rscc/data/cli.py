"""The `rscc data FORMAT` command (levir-cc, dubai-cc, ccexpert, manifest, spot-the-diff, ..., mix): one converter
per source format."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from ..cli import EXIT_BAD_INPUT, EXIT_INVALID_RECORDS, EXIT_OK, positive_int
from .build import DEFAULT_MAX_SHARD_SIZE, build_dataset
from .ccexpert import ccexpert_records
from .clevr_change import clevr_change_records
from .dubai_cc import dubai_cc_records
from .image_editing_request import image_editing_request_records
from .parquet_source import parquet_records
from .second import second_records
from .spot_the_diff import spot_the_diff_records
from .stvchrono import stvchrono_records
from .vismin import VISMIN_CAPTION_NOTE, vismin_records
from .from_masks import DEFAULT_MIN_REGION_PIXELS, from_masks_records, template_caption_note
from .levir_cc import levir_cc_records
from .manifest import MANIFEST_FIELDS, manifest_records
from .mixture import MixtureComponent, mixture_records
from .recipe import Recipe
from .schema import ChangeRecord, DataInputError, InvalidRecordsError


def _split_and_path(spec: str) -> tuple:
    """`SPLIT=PATH` or `PATH` (split "train")."""
    split, separator, path = spec.partition("=")
    return (split, Path(path)) if separator else ("train", Path(spec))


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave invalid records out (listed in the card) instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--pretty-name", help="title of the dataset card")
    parser.add_argument("--license", help="Hub license id for the card (default: the source's, else 'unknown')")
    parser.add_argument("--max-shard-size", type=positive_int, default=DEFAULT_MAX_SHARD_SIZE // 1024**2,
                        metavar="MB",
                        help="approximate maximum size of a Parquet shard (default: %(default)s)")


def _records_for(args: argparse.Namespace, mixture: Optional[list]) -> Iterable[ChangeRecord]:
    if args.data_command == "levir-cc":
        return levir_cc_records(args.root, args.captions)
    if args.data_command == "dubai-cc":
        return dubai_cc_records(args.captions, args.images, args.before_dir, args.after_dir)
    if args.data_command == "ccexpert":
        return itertools.chain.from_iterable(
            ccexpert_records(path, split, args.source_name, args.image_root)
            for split, path in map(_split_and_path, args.records))
    if args.data_command == "manifest":
        return itertools.chain.from_iterable(
            manifest_records(path, split, args.source_name) for split, path in map(_split_and_path, args.manifest))
    if args.data_command == "spot-the-diff":
        return spot_the_diff_records(args.annotations, args.images)
    if args.data_command == "image-editing-request":
        return image_editing_request_records(args.annotations, args.images)
    if args.data_command == "parquet":
        return itertools.chain.from_iterable(
            parquet_records([path], args.columns, split, args.source_name) for split, path in
            map(_split_and_path, args.files))
    if args.data_command == "clevr-change":
        return clevr_change_records(args.data_dir)
    if args.data_command == "vismin":
        return vismin_records(args.annotations, args.image_root, args.split)
    if args.data_command == "stvchrono":
        return stvchrono_records(args.annotations, args.images, args.split)
    if args.data_command == "second":
        lists = dict(map(_split_and_path, args.list or []))
        return itertools.chain.from_iterable(
            second_records(root, split, lists.get(split), min_region_pixels=args.min_region_pixels, seed=args.seed)
            for split, root in map(_split_and_path, args.root))
    if args.data_command == "from-masks":
        return itertools.chain.from_iterable(
            from_masks_records(root, split, args.source_name, before_dir=args.before_dir, after_dir=args.after_dir,
                               mask_dir=args.mask_dir, classes=args.classes, binary_class_name=args.class_name,
                               min_region_pixels=args.min_region_pixels, seed=args.seed)
            for split, root in map(_split_and_path, args.root))
    return mixture_records(mixture, args.split)


def _inputs_of(args: argparse.Namespace, mixture: Optional[list]) -> list:
    """The files and folders a `rscc data` command reads, which its --out must never replace."""
    if args.data_command == "levir-cc":
        return [args.root, *([args.captions] if args.captions else [])]
    if args.data_command == "dubai-cc":
        return [args.captions, args.images]
    if args.data_command == "ccexpert":
        paths = [path for _, path in map(_split_and_path, args.records)]
        return paths + [args.image_root or path.parent for path in paths]
    if args.data_command == "manifest":
        paths = [path for _, path in map(_split_and_path, args.manifest)]
        return paths + [path.parent for path in paths]
    if args.data_command in ("spot-the-diff", "image-editing-request"):
        return [args.annotations, args.images]
    if args.data_command == "parquet":
        return [path.parent for _, path in map(_split_and_path, args.files)]
    if args.data_command == "clevr-change":
        return [args.data_dir]
    if args.data_command == "vismin":
        return [args.annotations, args.image_root]
    if args.data_command == "stvchrono":
        return [*args.annotations, args.images]
    if args.data_command == "second":
        return [root for _, root in map(_split_and_path, args.root)] + [path for _, path in
                                                                         map(_split_and_path, args.list or [])]
    if args.data_command == "from-masks":
        return [root for _, root in map(_split_and_path, args.root)]
    return [component.path for component in mixture if Path(component.path).exists()]


def _source_notes(args: argparse.Namespace) -> Optional[dict]:
    """How the captions of a source whose captions rscc writes were made, for the card."""
    if args.data_command in ("from-masks", "second"):
        source = "second" if args.data_command == "second" else args.source_name
        return {source: template_caption_note(args.seed, args.min_region_pixels)}
    return {"vismin": VISMIN_CAPTION_NOTE} if args.data_command == "vismin" else None


def _mixture_of(args: argparse.Namespace) -> tuple:
    """(components, card lines of the recipe or None) of `rscc data mix`: --source specs, or a --config recipe
    whose missing sources are listed on stderr; sets `args.split` and
    `args.pretty_name` to the recipe's unless given."""
    if bool(args.source) == bool(args.config):
        raise DataInputError("rscc data mix: give either --source (repeatable) or --config RECIPE")
    if args.source:
        args.split = args.split or "train"
        return [MixtureComponent.parse(spec) for spec in args.source], None
    recipe = Recipe.load(args.config)
    args.split = args.split or recipe.split
    args.pretty_name = args.pretty_name or recipe.name
    components, missing = recipe.components(args.sources_root, args.require_all)
    for source in missing:
        print(f"rscc data mix: {source.name} is not built under {args.sources_root} ({source.path}); left out"
              + (f". Build it with: {source.build}" if source.build else ""), file=sys.stderr)
    return components, recipe.card_lines(missing)


def _run(args: argparse.Namespace) -> int:
    try:
        mixture, recipe_section = _mixture_of(args) if args.data_command == "mix" else (None, None)
        summary = build_dataset(
            _records_for(args, mixture), args.out, pretty_name=args.pretty_name, license=args.license,
            skip_invalid=args.skip_invalid, overwrite=args.overwrite, max_shard_size=args.max_shard_size * 1024**2,
            mixture=mixture, inputs=_inputs_of(args, mixture),
            source_notes=_source_notes(args),
            recipe_section=recipe_section,
        )
    except InvalidRecordsError as error:
        # Every problem, then the summary last so that it is what a terminal shows.
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"\nrscc data {args.data_command}: build failed.\n{error}", file=sys.stderr)
        return EXIT_INVALID_RECORDS
    except (OSError, ValueError) as error:
        print(f"rscc data {args.data_command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary)
    return EXIT_OK


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `rscc data ...`: one converter per source format, each writing a validated Parquet dataset."""
    parser = subparsers.add_parser(
        "data", help="build change-captioning datasets (Parquet shards + dataset card)",
        description="Convert a change-captioning source into Parquet shards plus a dataset card that "
                    "datasets.load_dataset(OUT) and push_to_hub accept. Every record is validated; any problem "
                    "fails the build unless --skip-invalid.")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="FORMAT")

    levir = commands.add_parser("levir-cc", help="LEVIR-CC / LEVIR-MCI (Karpathy-style JSON + images/)")
    levir.add_argument("--root", required=True, type=Path,
                       help="folder with LevirCCcaptions.json and images/{train,val,test}/{A,B}[,label]")
    levir.add_argument("--captions", type=Path, help="caption file (default: ROOT/LevirCCcaptions.json)")

    dubai = commands.add_parser("dubai-cc", help="Dubai-CC ({Train,Validation,Test}_Dubai_CC.json + images)")
    dubai.add_argument("--captions", required=True, type=Path,
                       help="folder with the three caption files (or its parent)")
    dubai.add_argument("--images", required=True, type=Path, help="folder with the before and after folders")
    dubai.add_argument("--before-dir", default="500_2000", help="before-image folder in --images (%(default)s)")
    dubai.add_argument("--after-dir", default="500_2010", help="after-image folder in --images (%(default)s)")

    ccexpert = commands.add_parser("ccexpert", help="CCExpert records (uid, change_flag, img1_path, img2_path, "
                                                    "change_caption)")
    ccexpert.add_argument("--records", required=True, action="append", metavar="[SPLIT=]FILE",
                          help="JSON or JSONL records file, optionally with its split (default train); repeatable")
    ccexpert.add_argument("--image-root", type=Path, help="folder relative image paths start from "
                                                          "(default: the records file's folder)")
    ccexpert.add_argument("--source-name", help="source column value (default: the records file name)")

    manifest = commands.add_parser(
        "manifest", help="your own pairs or series: CSV or JSONL with before, after (or image_1 ... image_N), caption(s)"
    )
    manifest.add_argument("--manifest", required=True, action="append", metavar="[SPLIT=]FILE",
                          help="CSV or JSONL manifest, optionally with the split of rows without a split column "
                               "(default train); repeatable. Columns: " + ", ".join(MANIFEST_FIELDS)
                               + ", caption_1, caption_2, ...")
    manifest.add_argument("--source-name", help="source column value (default: the manifest file name)")

    spot = commands.add_parser("spot-the-diff", help="Spot-the-diff (annotations/{train,val,test}.json + images)")
    spot.add_argument("--annotations", required=True, type=Path, help="folder with train.json, val.json, test.json")
    spot.add_argument("--images", required=True, type=Path,
                      help="folder with <img_id>.png and <img_id>_2.png (the dataset's resized_images/)")

    editing = commands.add_parser("image-editing-request",
                                  help="Image Editing Request ({train,valid,test}.json + images)")
    editing.add_argument("--annotations", required=True, type=Path,
                         help="folder with train.json, valid.json, test.json")
    editing.add_argument("--images", required=True, type=Path, help="folder with the img0 and img1 images")

    parquet = commands.add_parser("parquet", help="a change-captioning set already in Parquet (e.g. downloaded from "
                                                  "the Hub), its columns mapped onto the schema")
    parquet.add_argument("--files", required=True, action="append", metavar="[SPLIT=]FILES",
                         help="Parquet file or glob (quote it), optionally with its split (default train); "
                              "repeatable, e.g. 'test=fotbcd/data/test-*.parquet'")
    parquet.add_argument("--columns", required=True, metavar="FIELD=COLUMN,...",
                         help="which column holds each field: before, after, captions (several joined with +) and "
                              "optionally id, change_flag, change_mask; e.g. before=image_a,after=image_b,"
                              "captions=caption")
    parquet.add_argument("--source-name", help="source column value (default: the files' folder name)")

    clevr = commands.add_parser("clevr-change", help="CLEVR-Change (data/ with splits.json, change_captions.json, "
                                                     "no_change_captions.json and the three image folders)")
    clevr.add_argument("--data-dir", required=True, type=Path, help="the dataset's data/ folder")

    vismin = commands.add_parser("vismin", help="VisMin's training JSON (image_path, caption, negatives) + images")
    vismin.add_argument("--annotations", required=True, type=Path, help="the training JSON or JSONL file")
    vismin.add_argument("--image-root", required=True, type=Path,
                        help="folder the file's (absolute) image paths start from")
    vismin.add_argument("--split", default="train", help="split of every pair (%(default)s)")

    stvchrono = commands.add_parser("stvchrono", help="STVchrono (PJ1/PJ2_annotations.json + Mapillary images); "
                                                      "its two-image sequences")
    stvchrono.add_argument("--annotations", required=True, action="append", type=Path, metavar="FILE",
                           help="PJ1_annotations.json or PJ2_annotations.json; repeatable (captions are joined)")
    stvchrono.add_argument("--images", required=True, type=Path, help="folder with the images named in contents")
    stvchrono.add_argument("--split", default="train", help="split of every pair (%(default)s; none is published)")

    masks = commands.add_parser(
        "from-masks", help="change-detection set (before, after, mask) captioned from its masks by templates",
        description="Caption a change-detection set from its masks: count, size and 3x3-grid place of the "
                    "connected changed regions per class, 5 template sentences a pair in LEVIR-CC's style "
                    "(deterministic with --seed), LEVIR-CC's no-change sentences for empty masks.")
    masks.add_argument("--root", required=True, action="append", metavar="[SPLIT=]FOLDER",
                       help="folder with the before, after and mask folders, optionally with its split "
                            "(default train); repeatable")
    masks.add_argument("--before-dir", default="A", help="before-image folder in --root (%(default)s)")
    masks.add_argument("--after-dir", default="B", help="after-image folder in --root (%(default)s)")
    masks.add_argument("--mask-dir", default="label", help="mask folder in --root (%(default)s)")
    masks.add_argument("--classes", metavar="LEVEL=NAME,...",
                       help="semantic masks: class name of each grey level, e.g. 128=road,255=building "
                            "(default: binary, every non-zero pixel is a changed --class-name)")
    masks.add_argument("--class-name", default="building", help="what binary masks mark (%(default)s)")
    masks.add_argument("--source-name", default="levir_cd", help="source column value (%(default)s)")

    second = commands.add_parser("second", help="SECOND ({im1,im2,label1,label2} per split folder), captioned from "
                                                "its label2 land-cover maps")
    second.add_argument("--root", required=True, action="append", metavar="[SPLIT=]FOLDER",
                        help="a split folder holding im1, im2, label1, label2, optionally with its split "
                             "(default train); repeatable")
    second.add_argument("--list", action="append", metavar="[SPLIT=]FILE",
                        help="a split list naming the pairs of that split's folder to take (e.g. Bi-SRNet's "
                             "train_list.txt); default: every pair")
    for command in (masks, second):
        command.add_argument("--min-region-pixels", type=positive_int, default=DEFAULT_MIN_REGION_PIXELS,
                             help="smallest changed region the captions count (%(default)s)")
        command.add_argument("--seed", type=int, default=0, help="seed of the template choice (%(default)s)")

    mix = commands.add_parser("mix", help="mixture of built datasets with per-source upsampling factors")
    mix.add_argument("--source", action="append", metavar="PATH:SPLIT:FACTOR",
                     help="a built dataset (folder or Hub repo), its split and how many times to repeat it; "
                          "repeatable, e.g. out/levir_cc:train:6")
    mix.add_argument("--config", type=Path, metavar="RECIPE",
                     help="a mixture recipe instead of --source, e.g. recipes/cc_foundation.yaml: its sources that "
                          "are built under --sources-root are mixed, the others listed")
    mix.add_argument("--sources-root", type=Path, default=Path("."),
                     help="folder holding the recipe's built sources (default: the current folder)")
    mix.add_argument("--require-all", action="store_true", help="fail when a source of the recipe is not built")
    mix.add_argument("--split", help="split name of the mixture (default: the recipe's, else train)")

    for command in (levir, dubai, ccexpert, manifest, parquet, clevr, spot, editing, vismin, stvchrono, masks, second,
                    mix):
        _add_build_arguments(command)
        command.set_defaults(run=_run)
