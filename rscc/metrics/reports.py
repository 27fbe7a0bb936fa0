"""Reports of an evaluation: the versions the scores depend on, the JSON file and the plain-text table.

A report's `model-index` entries for a model card are made in one place, `rscc.hub.eval_results_from_evaluation`."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from ..output_files import atomic_output
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
    """Write a report as indented JSON (parent folders created; all or nothing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


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
