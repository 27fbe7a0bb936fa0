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

import importlib

# Each name this package exports -> the module that defines it, imported on first use: `rscc data --help` and the
# modules that need one name (a manifest reader) do not import every converter.
_EXPORTS = {
    "DEFAULT_MAX_SHARD_SIZE": "build",
    "ROWS_PER_ROW_GROUP": "build",
    "BuildSummary": "build",
    "build_dataset": "build",
    "KNOWN_SOURCES": "card",
    "ccexpert_records": "ccexpert",
    "DUBAI_CC_SPLITS": "dubai_cc",
    "dubai_cc_records": "dubai_cc",
    "is_dubai_cc_no_change_caption": "dubai_cc",
    "from_masks_records": "from_masks",
    "LEVIR_CC_SPLITS": "levir_cc",
    "levir_cc_records": "levir_cc",
    "MANIFEST_FIELDS": "manifest",
    "manifest_captions": "manifest",
    "manifest_dates": "manifest",
    "manifest_records": "manifest",
    "read_manifest": "manifest",
    "MixtureComponent": "mixture",
    "mixture_records": "mixture",
    "FEATURES": "schema",
    "MAX_MASK_CLASSES": "schema",
    "ChangeRecord": "schema",
    "DataInputError": "schema",
    "ImageSource": "schema",
    "InvalidRecordsError": "schema",
    "Problem": "schema",
    "summarize_problems": "schema",
    "CaptionMode": "views",
    "caption_view": "views",
    "load_change_dataset": "views",
    "normalize_caption": "views",
    "streaming_caption_view": "views",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rscc.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = list(_EXPORTS)
