"""The `rscc data FORMAT` command (levir-cc, dubai-cc, ccexpert, manifest, spot-the-diff, ..., mix): one converter
per source format.

Each format is one [`SourceCommand`] in `SOURCE_COMMANDS`: its arguments, the records it converts and the inputs
its `--out` must never replace sit together, so a new format is one entry."""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..cli import EXIT_OK, command_help, positive_int
from ..defaults import DEFAULT_MAX_SHARD_SIZE, DEFAULT_MIN_REGION_PIXELS, MANIFEST_FIELDS
from ..output_lock import locking_output
from ..terminal import print_result

if TYPE_CHECKING:
    from .schema import ChangeRecord


def _reader(module: str, name: str):
    """`name` from `rscc.data.MODULE`, imported when a command runs: help and argument errors import no converter."""
    return getattr(importlib.import_module(f".{module}", __package__), name)



def _split_and_path(spec: str) -> tuple:
    """`SPLIT=PATH` or `PATH` (split "train")."""
    split, separator, path = spec.partition("=")
    return (split, Path(path)) if separator else ("train", Path(spec))


def _split_paths(specs: Optional[list[str]]) -> list[tuple]:
    return [_split_and_path(spec) for spec in specs or []]


def _component_identity(spec: str) -> tuple:
    from .mixture import MixtureComponent

    component = MixtureComponent.parse(spec)
    return Path(component.path).resolve(), component.split


# The repeatable input options of the converters and the mix (`[SPLIT=]PATH`, or the mix's `PATH:SPLIT:FACTOR`).
REPEATABLE_INPUTS = ("records", "manifest", "files", "annotations", "root", "list", "source")


def refuse_repeated_inputs(args: argparse.Namespace) -> None:
    """Refuse one input given twice to a repeatable option (its records would all be there twice), naming both."""
    from .schema import DataInputError

    for option in REPEATABLE_INPUTS:
        values, seen = getattr(args, option, None), {}
        for value in values if isinstance(values, list) else []:
            key = _component_identity(value) if option == "source" else _split_and_path(str(value))[1].resolve()
            if key in seen:
                raise DataInputError(f"--{option} {seen[key]} and --{option} {value} are the same input; give each "
                                     "once (its records would all be there twice)")
            seen[key] = value


@dataclass(frozen=True)
class SourceCommand:
    """One `rscc data FORMAT` subcommand.

    Args:
        name: The subcommand (`levir-cc`).
        help: One line for `rscc data --help`.
        add_arguments: Adds the format's own options to its parser (the build options are added for all).
        records: The records of the parsed arguments.
        inputs: The files and folders it reads, which `--out` must never replace.
        notes: How rscc wrote the captions, for the card, when the source has none of its own.
        description: Longer text for `rscc data FORMAT --help`.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    records: Callable[[argparse.Namespace], Iterable[ChangeRecord]]
    inputs: Callable[[argparse.Namespace], list]
    notes: Callable[[argparse.Namespace], Optional[dict]] = lambda args: None
    description: Optional[str] = None


def _levir_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path,
                        help="folder with LevirCCcaptions.json and images/{train,val,test}/{A,B}[,label]")
    parser.add_argument("--captions", type=Path, help="caption file (default: ROOT/LevirCCcaptions.json)")


def _dubai_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", required=True, type=Path,
                        help="folder with the three caption files (or its parent)")
    parser.add_argument("--images", required=True, type=Path, help="folder with the before and after folders")
    parser.add_argument("--before-dir", default="500_2000", help="before-image folder in --images (%(default)s)")
    parser.add_argument("--after-dir", default="500_2010", help="after-image folder in --images (%(default)s)")


def _allow_outside_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept image paths that lead outside --image-root (../, links); refused by default")


def _ccexpert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", required=True, action="append", metavar="[SPLIT=]FILE",
                        help="JSON or JSONL records file, optionally with its split (default train); repeatable")
    parser.add_argument("--image-root", type=Path, help="folder relative image paths start from "
                                                        "(default: the records file's folder)")
    _allow_outside_root_argument(parser)
    parser.add_argument("--source-name", help="source column value (default: the records file name)")


def _manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, action="append", metavar="[SPLIT=]FILE",
                        help="CSV or JSONL manifest, optionally with the split of rows without a split column "
                             "(default train); repeatable. Columns: " + ", ".join(MANIFEST_FIELDS)
                             + ", image_1, image_2, ... (a series), caption_1, caption_2, ...")
    parser.add_argument("--source-name", help="source column value (default: the manifest file name)")


def _annotations_and_images_arguments(annotations: str, images: str) -> Callable[[argparse.ArgumentParser], None]:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--annotations", required=True, type=Path, help=annotations)
        parser.add_argument("--images", required=True, type=Path, help=images)

    return add_arguments


def _parquet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", required=True, action="append", metavar="[SPLIT=]FILES",
                        help="Parquet file or glob (quote it), optionally with its split (default train); "
                             "repeatable, e.g. 'test=fotbcd/data/test-*.parquet'")
    parser.add_argument("--columns", required=True, metavar="FIELD=COLUMN,...",
                        help="which column holds each field: before, after, captions (several joined with +) and "
                             "optionally id, change_flag, change_mask; e.g. before=image_a,after=image_b,"
                             "captions=caption")
    parser.add_argument("--source-name", help="source column value (default: the files' folder name)")


def _clevr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="the dataset's data/ folder")


def _vismin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, type=Path, help="the training JSON or JSONL file")
    parser.add_argument("--image-root", required=True, type=Path,
                        help="folder the file's (absolute) image paths start from")
    _allow_outside_root_argument(parser)
    parser.add_argument("--split", default="train", help="split of every pair (%(default)s)")


def _stvchrono_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, action="append", type=Path, metavar="FILE",
                        help="PJ1_annotations.json or PJ2_annotations.json; repeatable (captions are joined)")
    parser.add_argument("--images", required=True, type=Path, help="folder with the images named in contents")
    parser.add_argument("--split", default="train", help="split of every pair (%(default)s; none is published)")


def _template_caption_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-region-pixels", type=positive_int, default=DEFAULT_MIN_REGION_PIXELS,
                        help="smallest changed region the captions count (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the template choice (%(default)s)")


def _from_masks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, action="append", metavar="[SPLIT=]FOLDER",
                        help="folder with the before, after and mask folders, optionally with its split "
                             "(default train); repeatable")
    parser.add_argument("--before-dir", default="A", help="before-image folder in --root (%(default)s)")
    parser.add_argument("--after-dir", default="B", help="after-image folder in --root (%(default)s)")
    parser.add_argument("--mask-dir", default="label", help="mask folder in --root (%(default)s)")
    parser.add_argument("--classes", metavar="LEVEL=NAME,...",
                        help="semantic masks: class name of each grey level, e.g. 128=road,255=building "
                             "(default: binary, every non-zero pixel is a changed --class-name)")
    parser.add_argument("--class-name", default="building", help="what binary masks mark (%(default)s)")
    parser.add_argument("--source-name", default="levir_cd", help="source column value (%(default)s)")
    _template_caption_arguments(parser)


def _second_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, action="append", metavar="[SPLIT=]FOLDER",
                        help="a split folder holding im1, im2, label1, label2, optionally with its split "
                             "(default train); repeatable")
    parser.add_argument("--list", action="append", metavar="[SPLIT=]FILE",
                        help="a split list naming the pairs of that split's folder to take (e.g. Bi-SRNet's "
                             "train_list.txt); default: every pair")
    _template_caption_arguments(parser)


def _mix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", metavar="PATH:SPLIT:FACTOR",
                        help="a built dataset (folder or Hub repo), its split and how many times to repeat it; "
                             "repeatable, e.g. out/levir_cc:train:6")
    parser.add_argument("--config", type=Path, metavar="RECIPE",
                        help="a mixture recipe instead of --source, e.g. mixtures/cc_foundation.yaml: its sources "
                             "that are built under --sources-root are mixed, the others listed")
    parser.add_argument("--sources-root", type=Path, default=Path("."),
                        help="folder holding the recipe's built sources (default: the current folder)")
    parser.add_argument("--require-all", action="store_true", help="fail when a source of the recipe is not built")
    parser.add_argument("--split", help="split name of the mixture (default: the recipe's, else train)")


def _chained(function, option: str):
    """Records of the repeatable `[SPLIT=]PATH` option `option`: `function(args, split, path)` for each, in order."""
    return lambda args: itertools.chain.from_iterable(
        function(args, split, path) for split, path in _split_paths(getattr(args, option))
    )


SOURCE_COMMANDS: tuple[SourceCommand, ...] = (
    SourceCommand(
        "levir-cc", "LEVIR-CC / LEVIR-MCI (Karpathy-style JSON + images/)", _levir_arguments,
        records=lambda args: _reader("levir_cc", "levir_cc_records")(args.root, args.captions),
        inputs=lambda args: [args.root, *([args.captions] if args.captions else [])],
    ),
    SourceCommand(
        "dubai-cc", "Dubai-CC ({Train,Validation,Test}_Dubai_CC.json + images)", _dubai_arguments,
        records=lambda args: _reader("dubai_cc", "dubai_cc_records")(args.captions, args.images, args.before_dir,
                                                                     args.after_dir),
        inputs=lambda args: [args.captions, args.images],
    ),
    SourceCommand(
        "ccexpert", "CCExpert records (uid, change_flag, img1_path, img2_path, change_caption)", _ccexpert_arguments,
        records=_chained(lambda args, split, path: _reader("ccexpert", "ccexpert_records")(
            path, split, args.source_name, args.image_root, args.allow_outside_root), "records"),
        inputs=lambda args: [
            item for _, path in _split_paths(args.records) for item in (path, args.image_root or path.parent)
        ],
    ),
    SourceCommand(
        "manifest", "your own pairs or series: CSV or JSONL with before, after (or image_1 ... image_N), "
                    "caption(s)", _manifest_arguments,
        records=_chained(lambda args, split, path: _reader("manifest", "manifest_records")(
            path, split, args.source_name), "manifest"),
        inputs=lambda args: [item for _, path in _split_paths(args.manifest) for item in (path, path.parent)],
    ),
    SourceCommand(
        "spot-the-diff", "Spot-the-diff (annotations/{train,val,test}.json + images)",
        _annotations_and_images_arguments(
            "folder with train.json, val.json, test.json",
            "folder with <img_id>.png and <img_id>_2.png (the dataset's resized_images/)"),
        records=lambda args: _reader("spot_the_diff", "spot_the_diff_records")(args.annotations, args.images),
        inputs=lambda args: [args.annotations, args.images],
    ),
    SourceCommand(
        "image-editing-request", "Image Editing Request ({train,valid,test}.json + images)",
        _annotations_and_images_arguments(
            "folder with train.json, valid.json, test.json", "folder with the img0 and img1 images"),
        records=lambda args: _reader("image_editing_request", "image_editing_request_records")(args.annotations,
                                                                                               args.images),
        inputs=lambda args: [args.annotations, args.images],
    ),
    SourceCommand(
        "parquet", "a change-captioning set already in Parquet (e.g. downloaded from the Hub), its columns mapped onto "
                   "the schema", _parquet_arguments,
        records=_chained(lambda args, split, path: _reader("parquet_source", "parquet_records")(
            [path], args.columns, split, args.source_name),
                         "files"),
        inputs=lambda args: [path.parent for _, path in _split_paths(args.files)],
    ),
    SourceCommand(
        "clevr-change", "CLEVR-Change (data/ with splits.json, change_captions.json, no_change_captions.json and the "
                        "three image folders)", _clevr_arguments,
        records=lambda args: _reader("clevr_change", "clevr_change_records")(args.data_dir),
        inputs=lambda args: [args.data_dir],
    ),
    SourceCommand(
        "vismin", "VisMin's training JSON (image_path, caption, negatives) + images", _vismin_arguments,
        records=lambda args: _reader("vismin", "vismin_records")(args.annotations, args.image_root, args.split,
                                            args.allow_outside_root),
        inputs=lambda args: [args.annotations, args.image_root],
        notes=lambda args: {"vismin": _reader("vismin", "VISMIN_CAPTION_NOTE")},
    ),
    SourceCommand(
        "stvchrono", "STVchrono (PJ1/PJ2_annotations.json + Mapillary images); its two-image sequences",
        _stvchrono_arguments,
        records=lambda args: _reader("stvchrono", "stvchrono_records")(args.annotations, args.images, args.split),
        inputs=lambda args: [*args.annotations, args.images],
    ),
    SourceCommand(
        "from-masks", "change-detection set (before, after, mask) captioned from its masks by templates",
        _from_masks_arguments,
        records=_chained(
            lambda args, split, root: _reader("from_masks", "from_masks_records")(
                root, split, args.source_name, before_dir=args.before_dir, after_dir=args.after_dir,
                mask_dir=args.mask_dir, classes=args.classes, binary_class_name=args.class_name,
                min_region_pixels=args.min_region_pixels, seed=args.seed),
            "root"),
        inputs=lambda args: [root for _, root in _split_paths(args.root)],
        notes=lambda args: {args.source_name: _reader("from_masks", "template_caption_note")(
            args.seed, args.min_region_pixels)},
        description="Caption a change-detection set from its masks: count, size and 3x3-grid place of the "
                    "connected changed regions per class, 5 template sentences a pair in LEVIR-CC's style "
                    "(deterministic with --seed), LEVIR-CC's no-change sentences for empty masks.",
    ),
    SourceCommand(
        "second", "SECOND ({im1,im2,label1,label2} per split folder), captioned from its label2 land-cover maps",
        _second_arguments,
        records=_chained(
            lambda args, split, root: _reader("second", "second_records")(
                root, split, dict(_split_paths(args.list)).get(split), min_region_pixels=args.min_region_pixels,
                seed=args.seed),
            "root"),
        inputs=lambda args: [path for _, path in _split_paths(args.root) + _split_paths(args.list)],
        notes=lambda args: {"second": _reader("from_masks", "template_caption_note")(
            args.seed, args.min_region_pixels)},
    ),
)
MIX_COMMAND = "mix"


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


def _mixture_of(args: argparse.Namespace) -> tuple:
    """(components, card lines of the recipe or None) of `rscc data mix`: --source specs, or a --config recipe
    whose missing sources are listed on stderr; sets `args.split` and
    `args.pretty_name` to the recipe's unless given."""
    from .mixture import MixtureComponent
    from .recipe import Recipe
    from .schema import DataInputError

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


def run(args: argparse.Namespace) -> int:
    """Run `rscc data FORMAT`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from .build import build_dataset
    from .mixture import mixture_records
    from .schema import InvalidRecordsError

    refuse_repeated_inputs(args)
    if args.data_command == MIX_COMMAND:
        mixture, recipe_section = _mixture_of(args)
        records = mixture_records(mixture, args.split)
        inputs = [component.path for component in mixture if Path(component.path).exists()]
        notes = None
    else:
        mixture, recipe_section = None, None
        source = args.source_command
        records, inputs, notes = source.records(args), source.inputs(args), source.notes(args)
    try:
        summary = build_dataset(
            records, args.out, pretty_name=args.pretty_name, license=args.license,
            skip_invalid=args.skip_invalid, overwrite=args.overwrite, max_shard_size=args.max_shard_size * 1024**2,
            mixture=mixture, inputs=inputs, source_notes=notes, recipe_section=recipe_section,
        )
    except InvalidRecordsError as error:
        # Every problem, then the summary (the error's line, last, so that it is what a terminal shows).
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"\nrscc data {args.data_command}: build failed.", file=sys.stderr)
        raise
    print_result(str(summary), multiline=True)
    return EXIT_OK


def make_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `rscc data ...`: one converter per source format, each writing a validated Parquet dataset."""
    parser = subparsers.add_parser(
        "data", help=command_help("data"),
        description="Convert a change-captioning source into Parquet shards plus a dataset card that "
                    "datasets.load_dataset(OUT) and push_to_hub accept. Every record is validated; any problem "
                    "fails the build unless --skip-invalid.")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="FORMAT")
    for source in SOURCE_COMMANDS:
        command = commands.add_parser(source.name, help=source.help, description=source.description)
        source.add_arguments(command)
        command.set_defaults(source_command=source)
    mix = commands.add_parser(MIX_COMMAND, help="mixture of built datasets with per-source upsampling factors")
    _mix_arguments(mix)
    for command in commands.choices.values():
        _add_build_arguments(command)
        command.set_defaults(run=locking_output(run))
