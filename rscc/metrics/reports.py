"""Reports of an evaluation: the versions the scores depend on, the JSON file, the plain-text table, and the
`model-index` entries of a caption report."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from .meteor import java_version


def package_versions() -> dict[str, str | None]:
    """Versions of what the scores depend on (recorded in every report)."""
    from .. import __version__

    versions: dict[str, str | None] = {"rscc": __version__, "python": platform.python_version()}
    for package in ("pycocoevalcap", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["java"] = java_version()
    versions["meteor"] = "1.5"
    return versions


def write_report(report: Mapping, path: str | Path) -> Path:
    """Write a report as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def model_index_results(
    report: Mapping,
    dataset_name: str = "LEVIR-CC",
    dataset_type: str = "levir-cc",
    split: str | None = None,
) -> list[dict]:
    """`model-index` result entries (Hugging Face model card metadata) for a caption report.

    Only the scores on all pairs go in, each named with its convention (`"BLEU-4 (ccexpert)"`) and carrying it
    as `config`, so that numbers computed under different conventions never look comparable.

    Args:
        report: What `evaluate_captions` (or `rscc eval`) returned.
        dataset_name: Dataset shown on the card.
        dataset_type: Dataset id on the card.
        split: Split scored; by default the report's `references.split` when present.

    Returns:
        A list with one result entry: `{"task": ..., "dataset": ..., "metrics": [...]}`.
    """
    convention = report["convention"]["name"]
    split = split or report.get("references", {}).get("split")
    dataset = {"name": dataset_name, "type": dataset_type, **({"split": split} if split else {})}
    metrics = [
        {"type": name.lower(), "name": f"{name} ({convention})", "value": round(value, 2), "config": convention}
        for name, value in report["metrics"]["all"].items()
        if value is not None
    ]
    accuracy = report.get("change_decision", {}).get("accuracy")
    if accuracy is not None:
        metrics.append(
            {"type": "accuracy", "name": "Change/no-change accuracy", "value": round(accuracy, 2), "config": convention}
        )
    task = {"type": "image-to-text", "name": "Remote-sensing image change captioning"}
    return [{"task": task, "dataset": dataset, "metrics": metrics}]


def format_table(report: Mapping) -> str:
    """The report's caption scores as a plain-text table."""
    metrics = list(report["metrics"]["all"])
    counts = report["counts"]
    pairs = {"all": counts["pairs"], "change": counts["change_pairs"], "no_change": counts["no_change_pairs"]}
    lines = [f"convention: {report['convention']['name']} ({report['convention']['description']}); scale 0-100"]
    lines.append(f"{'subset':<10}{'pairs':>7}" + "".join(f"{name:>9}" for name in metrics))
    for subset, scores in report["metrics"].items():
        cells = "".join(f"{'-' if value is None else f'{value:.2f}':>9}" for value in scores.values())
        lines.append(f"{subset:<10}{pairs[subset]:>7}" + cells)
    decision = report["change_decision"]
    if decision["accuracy"] is not None:
        parts = [
            f"{key.removesuffix('_accuracy')} {decision[key]:.2f}"
            for key in ("change_accuracy", "no_change_accuracy")
            if decision[key] is not None
        ]
        lines.append(f"change/no-change accuracy {decision['accuracy']:.2f} ({', '.join(parts)})")
    if report.get("meteor_error"):
        lines.append(f"METEOR not computed: {report['meteor_error']}")
    return "\n".join(lines)
