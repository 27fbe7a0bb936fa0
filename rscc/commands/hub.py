"""`rscc card` and `rscc publish`: a model card from an evaluation report, and a checkpoint assembled for the Hub and
uploaded (the library code is `rscc.hub`)."""

import argparse
from pathlib import Path

from ..cli import EXIT_OK, command_help
from ..defaults import DEFAULT_LICENSE, DEFAULT_MODEL
from ..output_files import atomic_output
from ..terminal import print_result


def _read_recipe(path: str | None) -> dict | None:
    import yaml

    from ..hub import HubInputError

    if path is None:
        return None
    if not Path(path).is_file():
        raise HubInputError(f"--recipe: file not found: {path}")
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except yaml.YAMLError as error:
        raise HubInputError(f"--recipe {path} is not JSON or YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise HubInputError(f"--recipe {path}: expected a mapping of setting -> value")
    return recipe


def _card_from_args(args, config):
    """The model card (`huggingface_hub.ModelCard`) of the card options, for `config` (an `RsccConfig` or None)."""
    from ..hub import build_model_card, load_evaluation

    return build_model_card(
        args.repo_id,
        evaluation=load_evaluation(args.eval) if args.eval else None,
        config=config,
        recipe=_read_recipe(args.recipe),
        base_model=args.base_model,
        license=args.license,
        dataset_id=args.dataset_id,
    )


def run_card(args: argparse.Namespace) -> int:
    """Run `rscc card`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..hub import HubInputError, check_rscc_folder, validate_model_card

    if not args.out or not args.out.strip():
        raise HubInputError("--out is an empty path; expected a README.md path")
    config = check_rscc_folder(args.model) if args.model else None
    card = _card_from_args(args, config)
    validate_model_card(card)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as temporary:
        card.save(temporary)
    print_result(str(out))
    return EXIT_OK


def run_publish(args: argparse.Namespace) -> int:
    """Run `rscc publish`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..hub import check_rscc_folder, publish

    config = check_rscc_folder(args.folder)
    result = publish(
        args.folder, args.repo_id, _card_from_args(args, config), out=args.out, private=args.private,
        dry_run=args.dry_run,
    )
    print_result(str(result.url or result.folder))
    return EXIT_OK


def _add_card_arguments(parser) -> None:
    parser.add_argument("--repo-id", required=True, help="Hub repository, USER/NAME")
    parser.add_argument("--recipe", help="training settings, a JSON or YAML mapping, shown as a table")
    parser.add_argument("--base-model", default=DEFAULT_MODEL, help=f"Hub id of the base model ({DEFAULT_MODEL})")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"Hub license id (default {DEFAULT_LICENSE})")
    parser.add_argument("--dataset-id", help="Hub dataset id of the evaluation dataset (default: from its name)")


def make_parser(subparsers) -> None:
    card = subparsers.add_parser(
        "card",
        help=command_help("card"),
        description="Fill rscc's model-card template (huggingface_hub ModelCard) from an evaluation JSON "
        "(convention, split, dataset, metrics on 0-100, counts, versions): YAML metadata with model-index results "
        "(the convention in each metric's config), usage with and without trust_remote_code, training recipe, "
        "limitations. The card is parsed back and checked before it is written. Exit codes: 0 written; 2 bad input.",
    )
    card.add_argument("eval", metavar="EVAL_JSON", nargs="?", help="evaluation JSON (rscc eval --output); optional")
    card.add_argument("--out", default="README.md", help="card file (default README.md)")
    card.add_argument("--model", help="rscc checkpoint folder, for the architecture section")
    _add_card_arguments(card)
    card.set_defaults(run=run_card)

    publish_parser = subparsers.add_parser(
        "publish",
        help=command_help("publish"),
        description="Assemble FOLDER for the Hub in --out (safetensors weights, remote-code files with auto_map, "
        "processor files, README.md card, and pipeline_rscc.py so that transformers.pipeline(model=REPO, "
        "trust_remote_code=True) captions pairs) and upload it with huggingface_hub (log in first: "
        "`huggingface-cli login` or HF_TOKEN). --dry-run writes the folder only. Exit codes: 0 done; 2 bad input "
        "(not an rscc folder, bad evaluation JSON or card, --out exists); 4 the Hub refused or could not be "
        "reached (the folder in --out is kept).",
    )
    publish_parser.add_argument("folder", metavar="FOLDER", help="rscc checkpoint folder (save_pretrained)")
    publish_parser.add_argument("--eval", metavar="EVAL_JSON", help="evaluation JSON for the card's results")
    publish_parser.add_argument("--out", help="folder to assemble in (must not exist or be empty)")
    publish_parser.add_argument("--private", action="store_true", help="create the repository private")
    publish_parser.add_argument("--dry-run", action="store_true", help="assemble in --out, upload nothing")
    _add_card_arguments(publish_parser)
    publish_parser.set_defaults(run=run_publish)
