"""Change-captioning datasets: one schema for every source, validated Parquet builds, training views.

Every source (LEVIR-CC, Dubai-CC, CCExpert records, a user's CSV/JSONL manifest, or a mixture of built datasets)
becomes rows of `FEATURES`:

    id            str, unique within its source
    before, after datasets.Image, the original encoded bytes (never re-encoded)
    captions      list of str, whitespace-collapsed but otherwise as written in the source
    change_flag   0 (nothing changed) or 1
    change_mask   datasets.Image or null, bytes as in the source (LEVIR-MCI 0/128/255, LEVIR-CD 0/255)
    source        str, e.g. "levir_cc"

A converter yields `ChangeRecord`s; `build_dataset` validates all of them, writes `data/{split}-*.parquet` and a
dataset card (README.md) whose YAML makes `datasets.load_dataset(folder)` return the splits, and which the Hub takes
as it is (`hf upload USER/NAME FOLDER --repo-type dataset`, or `HfApi.upload_folder`).

Where each part lives: `schema` (FEATURES, ChangeRecord, problems), one module per source converter (`levir_cc`,
`dubai_cc`, `ccexpert`, `manifest`, `from_masks` (change-detection sets captioned from their masks), `mixture`;
the files they read in `source_files`), `validation` (one record),
`build` (`build_dataset`), `card` (the dataset card), `views` (`load_change_dataset`, `caption_view`) and `cli`
(`rscc data`).
"""

from .build import DEFAULT_MAX_SHARD_SIZE, ROWS_PER_ROW_GROUP, BuildSummary, build_dataset
from .card import KNOWN_SOURCES
from .ccexpert import ccexpert_records
from .dubai_cc import DUBAI_CC_SPLITS, dubai_cc_records, is_dubai_cc_no_change_caption
from .from_masks import from_masks_records
from .levir_cc import LEVIR_CC_SPLITS, levir_cc_records
from .manifest import MANIFEST_FIELDS, manifest_captions, manifest_dates, manifest_records, read_manifest
from .mixture import MixtureComponent, mixture_records
from .schema import (
    FEATURES,
    MAX_MASK_CLASSES,
    ChangeRecord,
    DataInputError,
    ImageSource,
    InvalidRecordsError,
    Problem,
    summarize_problems,
)
from .views import CaptionMode, caption_view, load_change_dataset, normalize_caption, streaming_caption_view

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "DUBAI_CC_SPLITS",
    "FEATURES",
    "KNOWN_SOURCES",
    "LEVIR_CC_SPLITS",
    "MANIFEST_FIELDS",
    "MAX_MASK_CLASSES",
    "ROWS_PER_ROW_GROUP",
    "BuildSummary",
    "CaptionMode",
    "ChangeRecord",
    "DataInputError",
    "ImageSource",
    "InvalidRecordsError",
    "MixtureComponent",
    "Problem",
    "build_dataset",
    "caption_view",
    "ccexpert_records",
    "dubai_cc_records",
    "from_masks_records",
    "is_dubai_cc_no_change_caption",
    "levir_cc_records",
    "load_change_dataset",
    "manifest_captions",
    "manifest_dates",
    "manifest_records",
    "mixture_records",
    "normalize_caption",
    "read_manifest",
    "streaming_caption_view",
    "summarize_problems",
]
