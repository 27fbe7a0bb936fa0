"""Mixture recipes: a YAML file naming the built datasets of a mixture, their upsampling factors and the pair
counts of the paper it follows (`mixtures/cc_foundation.yaml`), so that a mixture is built from whatever sources a
user has, the missing ones listed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import yaml

from ..errors import read_text_file
from .mixture import MixtureComponent
from .schema import DataInputError

_SOURCE_KEYS = {"name", "path", "split", "factor", "paper_pairs", "build"}


@dataclass(frozen=True)
class RecipeSource:
    """One source of a recipe: its built dataset (`path`, relative to the sources root), split, upsampling factor,
    pair count in the paper (None if it gives none) and the command that builds it."""

    name: str
    path: str
    split: str = "train"
    factor: int = 1
    paper_pairs: Optional[int] = None
    build: str = ""


@dataclass
class Recipe:
    """A mixture recipe: its name, the split of the mixture, its sources."""

    name: str
    split: str
    sources: list

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Recipe":
        """Read a recipe file; anything that is not a recipe is a `DataInputError` naming the file and source."""
        path = Path(path)
        try:
            content = yaml.safe_load(read_text_file(path))
        except yaml.YAMLError as error:
            raise DataInputError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(content, dict) or not isinstance(content.get("sources"), list) or not content["sources"]:
            raise DataInputError(f"{path}: expected a mapping with a non-empty list `sources`")
        sources = []
        for position, item in enumerate(content["sources"]):
            where = f"{path}: sources[{position}]"
            if not isinstance(item, dict) or not {"name", "path"} <= set(item):
                raise DataInputError(f"{where} must be a mapping with at least name and path")
            unknown = sorted(set(item) - _SOURCE_KEYS)
            if unknown:
                raise DataInputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected "
                                     f"{', '.join(sorted(_SOURCE_KEYS))}")
            for key in ("factor", "paper_pairs"):
                value = item.get(key, 1 if key == "factor" else None)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                    raise DataInputError(f"{where}: {key} must be a positive integer, got {value!r}")
            sources.append(RecipeSource(**{key: item[key] if key in ("factor", "paper_pairs") else str(item[key])
                                           for key in item}))
        names = [source.name for source in sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataInputError(f"{path}: source(s) {', '.join(repeated)} listed more than once")
        return cls(str(content.get("name") or path.stem), str(content.get("split") or "train"), sources)

    def components(self, sources_root: Union[str, os.PathLike], require_all: bool = False) -> tuple:
        """(mixture components of the sources built under `sources_root`, the sources that are not).

        Raises `DataInputError` when a source is missing and `require_all`, or when none is present.
        """
        root = Path(sources_root)
        present = [source for source in self.sources if (root / source.path).is_dir()]
        missing = [source for source in self.sources if source not in present]
        if missing and require_all or not present:
            raise DataInputError(
                f"recipe {self.name}: {len(missing)} of {len(self.sources)} sources not built under {root}: "
                + ", ".join(f"{source.name} ({root / source.path})" for source in missing))
        return [MixtureComponent(str(root / source.path), source.split, source.factor) for source in present], missing

    def card_lines(self, missing: list) -> list:
        """The card's recipe section: each source's pairs in the paper, its factor, its share of the paper's
        upsampled mixture, and whether it was present."""
        weights = {source.name: (source.paper_pairs or 0) * source.factor for source in self.sources}
        total = sum(weights.values())
        lines = ["", f"## Recipe: {self.name}", "",
                 "The sources the recipe names, their pairs in the paper and the upsampling factor applied here. "
                 "Shares are of the paper's mixture after upsampling.", "",
                 "| source | pairs in the paper | factor | share | in this build |", "|---|---|---|---|---|"]
        for source in self.sources:
            share = f"{weights[source.name] / total:.1%}" if total and source.paper_pairs else "-"
            lines.append(f"| {source.name} | {source.paper_pairs or '-'} | {source.factor} | {share} | "
                         f"{'missing' if source in missing else 'yes'} |")
        if missing:
            lines += ["", "Missing sources, and the commands that build them:", ""]
            lines += [f"- {source.name}: `{source.build}`" if source.build else f"- {source.name}"
                      for source in missing]
        return lines
