"""The dataset card of a build: YAML that makes `datasets.load_dataset(folder)` return the splits, and the text."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from .schema import FEATURES

# Card text and licence of the sources this module converts; other sources are listed by name only.
KNOWN_SOURCES = {
    "levir_cc": {
        "name": "LEVIR-CC",
        "license": "other",
        "text": "LEVIR-CC (Liu et al., \"Remote Sensing Image Change Captioning With Dual-Branch Transformers: A New "
                "Method and a Large Scale Dataset\", IEEE TGRS 2022): 10,077 pairs of 256x256 images at 0.5 m/px "
                "with 5 captions each. For academic use only; see the dataset's terms. LEVIR-MCI adds change masks "
                "(0 background, 128 road, 255 building).",
    },
    "dubai_cc": {
        "name": "Dubai-CC",
        "license": "other",
        "text": "Dubai-CC (Hoxha et al., \"Change Captioning: A New Paradigm for Multitemporal Remote Sensing Image "
                "Analysis\", IEEE TGRS 2022): 500 Landsat pairs of Dubai (2000, 2010) with 5 captions each. "
                "change_flag is derived: 0 when all captions say nothing changed. See the dataset's terms.",
    },
    "clevr_change": {
        "name": "CLEVR-Change",
        "license": "unknown",
        "text": "CLEVR-Change (Park, Darrell and Rohrbach, \"Robust Change Captioning\", ICCV 2019): synthetic CLEVR "
                "scenes, each with a semantically changed after image (change_flag 1) and a viewpoint/lighting "
                "distractor (change_flag 0). No licence is stated by its publishers.",
    },
    "spot_the_diff": {
        "name": "Spot-the-diff",
        "license": "unknown",
        "text": "Spot-the-diff (Jhamtani and Berg-Kirkpatrick, EMNLP 2018): surveillance-video frame pairs with "
                "crowd-written difference sentences. No licence is stated by its publishers.",
    },
    "image_editing_request": {
        "name": "Image Editing Request",
        "license": "unknown",
        "text": "Image Editing Request (Tan et al., \"Expressing Visual Relationships via Language\", ACL 2019): "
                "photo-editing requests from Reddit and Zhopped with the source and edited images. No licence is "
                "stated by its publishers.",
    },
    "stvchrono": {
        "name": "STVchrono",
        "license": "unknown",
        "text": "STVchrono (Sun et al., CVPR 2024): Mapillary street-view sequences; the two-image sequences, with "
                "the captions of both annotation projects. No licence is stated by its publishers.",
    },
    "vismin": {
        "name": "VisMin",
        "license": "cc-by-sa-4.0",
        "text": "VisMin (Awal et al., NeurIPS 2024): COCO and VSR images with minimally edited copies "
                "(training set cc-by-sa-4.0 on the Hub).",
    },
    "second": {
        "name": "SECOND",
        "license": "unknown",
        "text": "SECOND (Yang et al., \"Asymmetric Siamese Networks for Semantic Change Detection in Aerial "
                "Images\", TGRS 2021): 512x512 aerial pairs with land-cover labels of the changed areas.",
    },
}


def _size_category(num_pairs: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_pairs < limit:
            return name
    return "1M<n<10M"


def write_card(folder: Path, writers: dict, skipped: list, *, pretty_name: Optional[str], license: Optional[str],
               mixture: Optional[list], source_notes: Optional[dict] = None,
               recipe_section: Optional[list] = None) -> None:
    """Write `folder/README.md` for the closed split writers of a build, the problems of the records it skipped,
    the components of a mixture, `source_notes` (source name -> how its data was made, e.g. template
    captions) and the lines of a mixture recipe's section (`Recipe.card_lines`)."""
    sources = sorted({source for writer in writers.values() for source in writer.stats_by_source})
    source_names = [KNOWN_SOURCES.get(source, {}).get("name", source) for source in sources]
    if license is None:
        licenses = {KNOWN_SOURCES.get(source, {}).get("license", "unknown") for source in sources}
        license = licenses.pop() if len(licenses) == 1 else "unknown"
    pretty_name = pretty_name or " + ".join(source_names)
    card_data = _card_data(folder, writers, pretty_name, license)
    body = _overview(pretty_name, sources, writers)
    if source_notes:
        body += ["", "## How the captions were made", ""]
        body += [f"- `{source}`: {note}" for source, note in sorted(source_notes.items())]
    if mixture:
        body += _mixture_section(mixture)
    if recipe_section:
        body += recipe_section
    if skipped:
        body += _skipped_section(skipped)
    body += ["", "## Usage", "", "```python", "from rscc.data import load_change_dataset", "",
             'dataset = load_change_dataset("<this folder or repo id>", split="train")',
             "```", ""]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
    card.save(folder / "README.md")


def _card_data(folder: Path, writers: dict, pretty_name: str, license: str) -> DatasetCardData:
    """The card's YAML: Hub metadata, and the `dataset_info` and `configs` that `datasets.load_dataset` reads."""
    splits = datasets.SplitDict()
    for split, writer in writers.items():
        splits.add(datasets.SplitInfo(name=split, num_bytes=writer.num_bytes, num_examples=writer.num_rows))
    info = datasets.DatasetInfo(
        features=FEATURES, splits=splits,
        download_size=sum(shard.stat().st_size for shard in (folder / "data").iterdir()),
        dataset_size=sum(writer.num_bytes for writer in writers.values()),
    )
    # The Hub asks for a name and a link with license "other": the card's source list states each source's terms.
    license_details = {"license_name": "source-dataset-terms", "license_link": "README"} if license == "other" else {}
    card_data = DatasetCardData(
        license=license,
        **license_details,
        pretty_name=pretty_name,
        task_categories=["image-to-text"],
        tags=["remote-sensing", "change-detection", "change-captioning", "rscc"],
        size_categories=[_size_category(sum(writer.num_rows for writer in writers.values()))],
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": f"data/{split}-*"} for split in writers]}],
    )
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return card_data


def _overview(pretty_name: str, sources: list, writers: dict) -> list:
    """The card's title, sources, columns and per-split statistics, as lines."""
    body = [f"# {pretty_name}", "",
            "Bi-temporal remote-sensing image pairs with change captions, in the `rscc` change-captioning schema. "
            "Images and masks are stored as their original encoded bytes.", ""]
    body += [f"- {KNOWN_SOURCES[source]['text']}" for source in sources if source in KNOWN_SOURCES]
    body += ["", "## Columns", "",
             "| column | type | meaning |", "|---|---|---|",
             "| `id` | string | pair identifier, unique within its source |",
             "| `before`, `after` | image | the earlier and the later image, co-registered |",
             "| `captions` | list of string | reference captions |",
             "| `change_flag` | int8 | 0: nothing changed, 1: something changed |",
             "| `change_mask` | image or null | per-pixel change mask, same size as the images |",
             "| `source` | string | source dataset |",
             "| `images` | list of image | a series' dates between `before` (the first) and `after` (the last), "
             "oldest first; empty for a pair |",
             "", "## Splits", "",
             "| split | source | pairs | captions | no-change pairs | with mask |", "|---|---|---|---|---|---|"]
    for split, writer in writers.items():
        rows = sorted(writer.stats_by_source.items())
        if len(rows) > 1:
            rows.append(("all", sum(writer.stats_by_source.values(), Counter())))
        body += [f"| {split} | {source} | {stats['pairs']} | {stats['captions']} | {stats['no_change']} | "
                 f"{stats['masks']} |" for source, stats in rows]
    return body


def _mixture_section(mixture: list) -> list:
    """The card's list of mixture components, as lines."""
    body = ["", "## Mixture", "",
            "Each pair of a component appears `factor` times; repeats have ids `<id>#<k>`.", "",
            "| component | split | factor |", "|---|---|---|"]
    body += [f"| `{component.path}` | {component.split} | {component.factor} |" for component in mixture]
    return body


def _skipped_section(skipped: list) -> list:
    """The card's list of skipped records and their problems, as lines."""
    by_record = defaultdict(list)
    for problem in skipped:
        by_record[problem.id].append(problem)
    body = ["", "## Skipped records", "",
            f"{len(by_record)} invalid record(s) were left out of this build:", ""]
    body += [f"- {count} x {kind}" for kind, count in Counter(p.kind for p in skipped).most_common()]
    body += ["", "<details><summary>Skipped ids</summary>", ""]
    body += [f"- `{record_id}`: " + "; ".join(f"{p.kind} ({p.file}: {p.detail})" for p in record_problems)
             for record_id, record_problems in by_record.items()]
    body += ["", "</details>"]
    return body
