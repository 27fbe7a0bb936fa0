"""`rscc caption`: one pair or series printed, or many (two folders, a manifest) captioned into resumable JSON
lines (see `rscc.batch`)."""

import argparse
import json
import sys
from pathlib import Path

from ..caption_files import date_fields
from ..cli import EXIT_OK, command_help
from ..defaults import DEFAULT_MODEL
from ..output_lock import locking_output
from ..parallel import current_share, existing_parts, part_path, process_device
from ..terminal import print_result
from .options import (
    add_device_arguments,
    add_engine_arguments,
    add_progress_arguments,
    batch_size_of,
    show_progress,
)

MAX_CHANGE_CLASSES = 3  # LEVIR-MCI's: the most classes a change mask given on the command line may encode


def _check_mask_option(model, args) -> None:
    from ..batch import BatchInputError
    from ..captioning import uses_input_masks

    if args.mask is not None and not uses_input_masks(model.config):
        raise BatchInputError(
            f"--mask: the model {args.model} does not use an input change mask (change_filter="
            f"{getattr(model.config, 'change_filter', 'none')!r}, change_mask_source="
            f"{getattr(model.config, 'change_mask_source', None)!r}); it would be ignored. Leave --mask out"
        )
    if args.mask_out is not None and not getattr(model.config, "use_change_head", False):
        raise BatchInputError(f"--mask-out: the model {args.model} has no change-detection head to predict a mask")


def _caption_one_sample(args) -> None:
    """One pair (BEFORE AFTER) or one series of N > 2 dates (DATE1 ... DATEN, oldest first)."""
    from ..batch import BatchInputError
    from ..captioning import describe_changes
    from ..imagery import date_names
    from ..loading import DTYPES, load_captioner
    from ..masks import write_mask_png
    from ..output_files import check_output_file
    from ..processing_rscc import load_change_mask, load_image

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
        print_result(json.dumps(result))
    else:
        print_result(description.caption)
        if description.changed_fraction is not None:
            print_result(f"changed fraction: {description.changed_fraction:.4f}")


def _batch_records(inputs: list[str]) -> list:
    """The `SampleRecord`s of two folders or a manifest."""
    from ..batch import BatchInputError, pairs_from_folders, samples_from_manifest

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


def _caption_batch(args) -> None:
    from ..batch import (
        BatchInputError,
        SampleRecord,
        caption_records,
        check_images_exist,
        check_out_given,
        record_paths,
    )
    from ..captioning import caption_samples, uses_input_masks
    from ..loading import DTYPES, load_captioner
    from ..output_files import check_output_file
    from ..ray import caption_command

    for option, value in (("--mask", args.mask), ("--mask-out", args.mask_out), ("--json", args.json or None)):
        if value is not None:
            raise BatchInputError(f"{option} is for one pair; in batch mode give masks in a manifest's mask column "
                                  "and read the JSON lines of --out")
    if args.engine == "ray":
        caption_command(args, _batch_records)
        return
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
        return caption_samples(
            model, processor, [list(record.images) for record in batch], batch_size=len(batch),
            max_new_tokens=args.max_new_tokens,
            change_masks=[record.mask for record in batch] if masks_used else None,
        )

    summary = caption_records(
        records, caption_batch, out=out, batch_size=batch_size_of(args), progress=show_progress(args),
        overwrite=args.overwrite, made_by=made_by(args.model, model, args), share=share, record_inputs=True,
    )
    if out is not None and share.is_main:
        print(
            f"rscc caption: {summary.captioned} sample(s) captioned, {summary.resumed} already done, {out}",
            file=sys.stderr,
        )


def main(args: argparse.Namespace) -> int:
    """Run `rscc caption`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..batch import BatchInputError
    from ..ray import check_engine_arguments

    is_batch = len(args.inputs) == 1 or all(Path(path).is_dir() for path in args.inputs)
    if len(args.inputs) > 2 and any(Path(path).is_dir() for path in args.inputs):
        raise BatchInputError(
            f"expected BEFORE AFTER, DATE1 ... DATEN image files (a series), two folders or one manifest; got "
            f"{len(args.inputs)} paths, a folder among them"
        )
    if len(args.inputs) == 2 and any(Path(path).is_dir() for path in args.inputs) and not is_batch:
        raise BatchInputError("BEFORE and AFTER must both be image files or both be folders")
    check_engine_arguments(args, batch=is_batch)
    if is_batch:
        _caption_batch(args)
    else:
        _caption_one_sample(args)
    return EXIT_OK


def stopped_note(args: argparse.Namespace) -> str:
    """What a failed or stopped run leaves: the part files a rerun of the same command resumes from."""
    parts = existing_parts(Path(args.out)) if args.out and args.out.strip() else []
    if not parts:
        return ""
    return f"finished samples are kept in {', '.join(map(str, parts))}; rerun the same command to resume"


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "caption",
        help=command_help("caption"),
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
    add_engine_arguments(parser, "; its input may also be a built rscc dataset (a .parquet file or an `rscc data "
                         "build` folder) and its --out a .parquet file or a URI (s3://...)")
    parser.set_defaults(run=locking_output(main), stopped_note=stopped_note)
    return parser
