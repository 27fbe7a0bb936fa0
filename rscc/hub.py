"""Hub publishing: model cards filled from an evaluation, and the Hub folder assembled and uploaded (the commands are
`rscc.commands.hub`).

    rscc card EVAL_JSON --repo-id USER/NAME --out README.md [--model FOLDER] [--recipe RECIPE]
    rscc publish FOLDER --repo-id USER/NAME [--eval EVAL_JSON] [--private] [--dry-run] [--out DIR]

Cards are built with huggingface_hub's `ModelCard` API from `rscc/model_cards/template.md`. Validation has two
levels: offline, the card is parsed back by huggingface_hub (YAML, `model-index` into `EvalResult`s) and the
metadata the Hub shows is checked; before an upload, the Hub's own validator (`ModelCard.validate`) runs too.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig
from transformers.dynamic_module_utils import get_relative_import_files

from .compat_rscc import TESTED_TRANSFORMERS, TRANSFORMERS_REQUIREMENT
from .configuration_rscc import RsccConfig
from .errors import HubUnreachableError
from .defaults import DEFAULT_LICENSE, DEFAULT_MODEL
from .loading import check_model_folder, load_model_and_processor
from . import pipeline_rscc
from .card_architecture import describe_architecture
from .output_files import staged_folder
from .processing_rscc import RsccInputError

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "template.md"
PIPELINE_TAG = "image-text-to-text"
TASK_NAME = "Remote sensing change captioning"
TAGS = ["rscc", "remote-sensing", "change-captioning", "change-detection", "llava-onevision", "custom_code"]
# Hub metric ids of the field's standard captioning metrics.
CARD_METRICS = ["bleu", "meteor", "rouge", "cider"]
EVALUATION_FIELDS = {"convention": str, "split": str, "dataset": str, "metrics": dict}
# Evaluation metric name -> (model-index metric type, its arguments).
METRIC_TYPES = {
    **{f"BLEU-{order}": ("bleu", {"max_order": order}) for order in range(1, 5)},
    "METEOR": ("meteor", None),
    "ROUGE-L": ("rouge", {"rouge_type": "rougeL"}),
    "CIDEr-D": ("cider", {"variant": "CIDEr-D"}),
    "S_m": ("s_m", {"mean_of": ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]}),
}
REQUIRED_CARD_METADATA = ("license", "library_name", "pipeline_tag", "tags", "base_model")
# HfHubHTTPError's bases are the HTTP client library's error class and OSError: catching them covers connection
# failures too, whichever client library huggingface_hub uses.
HUB_ERRORS = (HfHubHTTPError, *HfHubHTTPError.__bases__)


class HubInputError(RsccInputError):
    """An input of `rscc card` or `rscc publish` (evaluation JSON, folder, path, repo id) is not as expected."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_evaluation(path: str | os.PathLike) -> dict:
    """Read and check an evaluation JSON: an `rscc eval --output` report, or a flat summary with `convention` (str),
    `split` (str), `dataset` (str, a name) and `metrics` (name -> number on the 0-100 scale); `counts` and
    `versions` (name -> value) are shown on the card when present.

    Args:
        path (`str` or `os.PathLike`): the JSON file.
    """
    path = Path(path)
    if not path.is_file():
        raise HubInputError(f"evaluation file not found: {path}")
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubInputError(f"evaluation file {path} is not JSON: {error}") from None
    if not isinstance(evaluation, dict):
        raise HubInputError(f"evaluation file {path}: expected a JSON object")
    if isinstance(evaluation.get("convention"), dict):
        evaluation = _card_fields_of_eval_report(evaluation, path)
    for name, kind in EVALUATION_FIELDS.items():
        if not isinstance(evaluation.get(name), kind):
            raise HubInputError(
                f"evaluation file {path}: field {name!r} is missing or not a {kind.__name__}; expected "
                f"{', '.join(f'{key} ({value.__name__})' for key, value in EVALUATION_FIELDS.items())}"
            )
    bad = [
        name for name, value in evaluation["metrics"].items()
        if isinstance(value, bool) or not isinstance(value, (int, float))
    ]
    if bad or not evaluation["metrics"]:
        raise HubInputError(f"evaluation file {path}: metrics must map names to numbers; not numbers: {bad}")
    for name in ("counts", "versions"):
        if not isinstance(evaluation.get(name, {}), dict):
            raise HubInputError(f"evaluation file {path}: field {name!r} must be an object")
    return evaluation


def _card_fields_of_eval_report(report: dict, path: Path) -> dict:
    """The card's fields from an `rscc eval --output` report: whole-split metrics, convention name, split, dataset."""
    try:
        references = report["references"]
        return {
            "convention": report["convention"]["name"],
            "split": references["split"],
            "dataset": Path(references["path"]).stem,
            "metrics": {name: value for name, value in report["metrics"]["all"].items() if value is not None},
            "counts": report.get("counts", {}),
            "versions": report.get("versions", {}),
        }
    except (KeyError, TypeError) as error:
        raise HubInputError(f"evaluation file {path}: an rscc eval report without {error}") from None


def eval_results_from_evaluation(evaluation: dict, dataset_id: str | None = None) -> list[EvalResult]:
    """The model-index entries of an evaluation: one `EvalResult` per metric.

    This is the one mapping from the evaluation JSON to the card's `model-index`; the scoring convention goes into
    each metric's `config`, so that results under different conventions are never mixed up.

    Args:
        evaluation (`dict`): from [`load_evaluation`].
        dataset_id (`str`, *optional*): the Hub dataset id; defaults to a slug of the dataset name.
    """
    results = []
    for name, value in evaluation["metrics"].items():
        metric_type, metric_args = METRIC_TYPES.get(name, (_slug(name), None))
        results.append(
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name=TASK_NAME,
                dataset_type=dataset_id or _slug(evaluation["dataset"]),
                dataset_name=evaluation["dataset"],
                dataset_split=evaluation["split"],
                metric_type=metric_type,
                metric_name=name,
                metric_value=round(float(value), 4),
                metric_config=evaluation["convention"],
                metric_args=metric_args,
            )
        )
    return results


def build_model_card(
    repo_id: str,
    evaluation: dict | None = None,
    config: RsccConfig | None = None,
    recipe: dict | None = None,
    base_model: str = DEFAULT_MODEL,
    license: str = DEFAULT_LICENSE,
    dataset_id: str | None = None,
    template_path: str | os.PathLike = MODEL_CARD_TEMPLATE,
    revision: str | None = None,
) -> ModelCard:
    """Fill the rscc model-card template.

    Args:
        repo_id (`str`): the Hub repository, `user/name`; `name` is the model-index name.
        evaluation (`dict`, *optional*): from [`load_evaluation`]; gives the `model-index` results.
        config ([`RsccConfig`], *optional*): for the architecture section.
        recipe (`dict`, *optional*): training settings (name -> value), shown as a table.
        base_model (`str`): the Hub id the model was built from.
        license (`str`): a Hub license id.
        dataset_id (`str`, *optional*): Hub dataset id of the evaluation dataset.
        template_path (`str` or `os.PathLike`): the Jinja template.
        revision (`str`, *optional*): the commit the card's loading example pins; a placeholder when unknown (a
            card is written before its commit exists).
    """
    check_repo_id(repo_id)
    model_name = repo_id.split("/")[-1]
    eval_results = eval_results_from_evaluation(evaluation, dataset_id) if evaluation else None
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=TAGS,
        base_model=base_model,
        datasets=[eval_results[0].dataset_type] if eval_results else None,
        metrics=CARD_METRICS,
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        architecture=describe_architecture(config),
        evaluation=evaluation,
        recipe=recipe,
        revision=revision or "COMMIT_SHA",
        transformers_window=TESTED_TRANSFORMERS,
        transformers_requirement=TRANSFORMERS_REQUIREMENT,
    )


def validate_model_card(card: ModelCard) -> None:
    """Check a card offline with huggingface_hub's own parser, and the metadata the Hub page relies on.

    Raises:
        HubInputError: the YAML or `model-index` does not parse, or metadata is missing.
    """
    try:
        parsed = ModelCard(str(card))
    except ValueError as error:
        raise HubInputError(f"the model card does not parse: {error}") from None
    metadata = parsed.data.to_dict()
    missing = [key for key in REQUIRED_CARD_METADATA if not metadata.get(key)]
    if missing:
        raise HubInputError(f"the model card lacks metadata: {', '.join(missing)}")
    if not parsed.text.strip():
        raise HubInputError("the model card has no text")


def check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo_id or "") or ".." in repo_id:
        raise HubInputError(f"--repo-id {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.')")


@contextlib.contextmanager
def hub_upload_failures(kept: str | os.PathLike | None = None) -> Iterator[None]:
    """Raise a failed upload (the Hub refused, or could not be reached) as a [`HubUnreachableError`], naming the
    folder `kept` for another try."""
    try:
        yield
    except HUB_ERRORS as error:
        note = f" (the folder is kept in {kept})" if kept else ""
        raise HubUnreachableError(f"the Hub upload failed: {error}{note}") from error


def check_new_folder(out: str | os.PathLike | None) -> Path:
    if out is None or not str(out).strip():
        raise HubInputError("--out is an empty path; expected a folder to create")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HubInputError(f"--out {out} already exists and is not an empty folder; choose a new path")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def check_rscc_folder(folder: str | os.PathLike) -> RsccConfig:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubInputError(f"FOLDER {folder}: no config.json; expected a folder saved by rscc (save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:  # a config.json that is not JSON, or not a config
        raise HubInputError(f"FOLDER {folder}: config.json cannot be read ({error})") from None
    if config.model_type != RsccConfig.model_type:
        raise HubInputError(f"FOLDER {folder} holds a '{config.model_type}' model; expected an rscc checkpoint")
    check_model_folder(folder)
    return config


def assemble_hub_folder(folder: str | os.PathLike, out: str | os.PathLike, card: ModelCard) -> Path:
    """Write the folder to upload: safetensors weights, remote-code files with `auto_map`, processor files, card.

    The model is loaded with rscc's classes and saved again, so weights become safetensors whatever the source
    format, and the remote-code files are those of the installed rscc. The change-captioning pipeline
    (`pipeline_rscc.py`, with the files it imports) is added and registered in `config.json`'s `custom_pipelines`, so
    that
    `transformers.pipeline(model=REPO, trust_remote_code=True)` captions pairs. Written to a temporary folder
    next to `out`, renamed at the end.

    Args:
        folder (`str` or `os.PathLike`): an rscc checkpoint folder.
        out (`str` or `os.PathLike`): the folder to create (absent or empty).
        card (`ModelCard`): the card, saved as README.md.
    """
    check_rscc_folder(folder)
    out = check_new_folder(out)
    validate_model_card(card)
    model, processor = load_model_and_processor(str(folder), dtype="auto")
    model.config.custom_pipelines = pipeline_rscc.CUSTOM_PIPELINES
    with staged_folder(out) as temporary:
        model.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        for code_file in [pipeline_rscc.__file__, *get_relative_import_files(pipeline_rscc.__file__)]:
            shutil.copyfile(code_file, temporary / Path(code_file).name)
        card.save(temporary / "README.md")
    return out


@dataclass(frozen=True)
class PublishResult:
    """What `publish` did.

    Args:
        folder (`Path`, *optional*): the assembled folder (None when it was temporary).
        url (`str`, *optional*): the commit URL on the Hub (None for a dry run).
    """

    folder: Path | None
    url: str | None


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    card: ModelCard,
    out: str | os.PathLike | None = None,
    private: bool = False,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> PublishResult:
    """Assemble the Hub folder and upload it (create the repository if needed).

    Args:
        folder (`str` or `os.PathLike`): an rscc checkpoint folder.
        repo_id (`str`): `user/name` on the Hub.
        card (`ModelCard`): the model card.
        out (`str` or `os.PathLike`, *optional*): where to assemble; required for a dry run, else a temporary
            folder removed after the upload.
        private (`bool`): create the repository private.
        dry_run (`bool`): assemble only.
        api (`HfApi`, *optional*): the client (its token comes from the usual huggingface_hub login).
    """
    check_repo_id(repo_id)
    if dry_run and out is None:
        raise HubInputError("--dry-run writes the folder only, so it needs --out DIR")
    if out is not None:
        assembled = assemble_hub_folder(folder, out, card)
        if dry_run:
            return PublishResult(folder=assembled, url=None)
        with hub_upload_failures(kept=out):
            return PublishResult(folder=assembled, url=_upload(assembled, repo_id, card, private, api or HfApi()))
    with tempfile.TemporaryDirectory(prefix="rscc-publish-") as scratch:
        assembled = assemble_hub_folder(folder, Path(scratch) / repo_id.split("/")[-1], card)
        with hub_upload_failures():
            return PublishResult(folder=None, url=_upload(assembled, repo_id, card, private, api or HfApi()))


def _upload(folder: Path, repo_id: str, card: ModelCard, private: bool, api: HfApi) -> str:
    card.validate()  # the Hub's own metadata validator, before anything is created
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=folder, repo_id=repo_id, repo_type="model", commit_message="Upload rscc model"
    )
    return commit.commit_url


__all__ = [
    "HUB_ERRORS",
    "HubInputError",
    "PublishResult",
    "assemble_hub_folder",
    "build_model_card",
    "check_new_folder",
    "check_repo_id",
    "check_rscc_folder",
    "describe_architecture",
    "eval_results_from_evaluation",
    "hub_upload_failures",
    "load_evaluation",
    "publish",
    "validate_model_card",
]
