"""Captioning on Ray Data: archives of pairs on one machine or a cluster, imagery and outputs in object storage.

The pipeline: samples (two folders, a manifest, a built rscc dataset in Parquet, or any Ray Dataset of sample rows)
-> CPU tasks that read and decode the images (local paths, pyarrow file-system URIs such as `s3://`, or the bytes a
Parquet dataset stores) -> a pool of `num_workers` captioning actors (`map_batches` with [`Captioner`]: one model
load per actor, `num_gpus`, `batch_size`) that caption through `rscc.captioning.caption_samples`, the captioning path of
`rscc caption` -> shards written by Ray to `OUT.shards/` (JSON lines or Parquet, on any pyarrow file system) -> one
output in input order, written by the driver once every sample is done, after which the shards are removed.

Faults: Ray restarts a killed captioning actor and reruns its batch; the merge keeps one line per sample id, so a
batch written twice counts once. A sample that cannot be read or captioned becomes an error row of its shard: it is
reported once with its id when the run ends and is not retried within the run (the rest are captioned). A rerun reads
the shards (and a finished output whose input has grown) and captions only what is not done; lines made by another
model or options (`made_by`, the record every engine writes) are refused, not mixed.

Scenes (`rscc scene --engine ray`) are captioned on Ray Data by `rscc.ray_scene`. Ray is imported when a function
needs it, so `rscc caption` without `--engine ray` runs without Ray installed.
"""

import json
import logging
import math
import os
import signal
import sys
import threading
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .batch import BatchInputError, BatchSummary, SampleRecord, check_images_exist, record_paths
from .errors import RsccInputError
from .output_files import check_output_file
from .input_fingerprint import FINGERPRINTS_FIELD, fingerprints
from .ray_storage import (
    PARQUET_SUFFIX,
    SHARDS_SUFFIX,
    Location,
    fetched_image,
    finished_lines,
    remove_location,
    write_output,
)

# The options that only --engine ray reads.
RAY_OPTIONS = ("address", "num_workers", "gpus_per_worker")


class RayEngineError(RsccInputError):
    """Samples the Ray engine could not caption, or an option it cannot use."""


def check_engine_arguments(args, batch: bool = True) -> None:
    """Refuse the options of --engine ray under another engine, --engine ray for one sample, and counts that cannot
    work.

    Args:
        args (`argparse.Namespace`): the command's options (see `rscc.commands.caption`).
        batch (`bool`): whether the command captions a batch (two folders, a manifest, a dataset or a scene).
    """
    if args.engine == "ray" and not batch:
        raise BatchInputError("--engine ray captions batches (two folders, a manifest or a Parquet dataset); one "
                              "pair or series runs in this process")
    if args.engine == "ray" and args.device != "cpu":
        raise BatchInputError("--device is for --engine accelerate; with --engine ray give --gpus-per-worker")
    given = [f"--{name.replace('_', '-')}" for name in RAY_OPTIONS if getattr(args, name) is not None]
    if args.engine != "ray" and given:
        raise BatchInputError(f"{given[0]} is an option of --engine ray")
    if args.num_workers is not None and args.num_workers < 1:
        raise BatchInputError(f"--num-workers must be at least 1, got {args.num_workers}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise BatchInputError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayEngineError("--engine ray needs Ray Data: pip install 'rscc[ray]'") from None
    return ray


# ---------------------------------------------------------------------------------------------------------------
# Samples as Ray Dataset rows: {"id", "images": names oldest first, "references", "mask", "image_bytes"}.


def _sample_row(record: SampleRecord) -> dict:
    return {"id": record.id, "images": list(record.images), "references": record.references, "mask": record.mask}


def _record_of(row: dict) -> SampleRecord:
    return SampleRecord(id=str(row["id"]), images=tuple(row["images"]), references=list(row.get("references") or []),
                        mask=row.get("mask") or None)


def _built_dates(row: dict) -> list[dict]:
    """A built rscc dataset row's dates, oldest first: `before`, the series' middle `images`, `after`."""
    return [row["before"], *(row.get("images") or []), row["after"]]


def _built_row(row: dict) -> dict:
    """A sample row of a built rscc dataset row (see `rscc.data.schema`): images stored as {bytes, path}."""
    dates = _built_dates(row)
    return {"id": str(row["id"]), "images": [date["path"] for date in dates], "references": list(row["captions"]),
            "mask": None, "image_bytes": [date["bytes"] for date in dates]}


def parquet_files(dataset: str | os.PathLike, split: str | None = None,
                  filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a built rscc dataset: a `.parquet` file, or a folder of `data/{split}-*.parquet` (every
    split when `split` is None), local or at a pyarrow URI.

    Raises:
        BatchInputError: no such file or folder, or no Parquet files for `split`.
    """
    where = Location.parse(dataset, filesystem)
    info = where.filesystem.get_file_info(where.path)
    if info.type == pafs.FileType.File:
        return where.filesystem, [where.path]
    if info.type == pafs.FileType.NotFound:
        raise BatchInputError(f"dataset {where.uri}: no such file or folder; expected a .parquet file or a built "
                              "rscc dataset folder (data/*.parquet)")
    data = where.path.rstrip("/") + "/data"
    found = where.filesystem.get_file_info(pafs.FileSelector(data, allow_not_found=True))
    files = sorted(entry.path for entry in found if entry.path.endswith(PARQUET_SUFFIX)
                   and (split is None or Path(entry.path).name.startswith(f"{split}-")))
    if not files:
        raise BatchInputError(f"dataset {where.uri}: no {'' if split is None else split + ' '}Parquet files in "
                              f"{data}; expected a built rscc dataset (rscc data build)")
    return where.filesystem, files


def records_from_parquet(filesystem: pafs.FileSystem, files: list[str]) -> list[SampleRecord]:
    """The samples of a built rscc dataset, in file order, without their image bytes (read batch by batch)."""
    records = []
    for file in files:
        with filesystem.open_input_file(file) as handle:
            parquet = pq.ParquetFile(handle)
            columns = [name for name in ("id", "before", "after", "images", "captions")
                       if name in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=columns):
                records.extend(_record_of(_built_row(row)) for row in batch.to_pylist())
    return records


# ---------------------------------------------------------------------------------------------------------------
# The stages.


def decode_images(batch: pa.Table, record_inputs: bool = False) -> dict:
    """CPU stage: read and decode each sample's images into uint8 RGB arrays with `load_image` (what `rscc caption`
    gives the processor), so the captioning actors only run the model. A sample that cannot be read gets an `error`.

    Args:
        batch (`pyarrow.Table`): sample rows (see `_sample_row`).
        record_inputs (`bool`): also give the fingerprints of the local files read (`input_fingerprints`, JSON), as
            `rscc caption` writes them, so that a rerun captions again the samples whose files changed.

    Returns:
        The rows with `pixels` (raw bytes per date), `shapes`, `input_fingerprints` and `error` added, `image_bytes`
        dropped.
    """
    from .processing_rscc import load_image

    rows = batch.to_pylist()
    with tempfile.TemporaryDirectory(prefix="rscc-ray-") as folder:
        for row in rows:
            stored = row.pop("image_bytes", None) or [None] * len(row["images"])
            local = [path for path, data in zip(row["images"], stored) if data is None and "://" not in path]
            local += [row["mask"]] if row.get("mask") and "://" not in row["mask"] else []
            row.update(pixels=None, shapes=None, error=None,
                       input_fingerprints=json.dumps(fingerprints(local)) if record_inputs else None)
            try:
                arrays = [np.asarray(load_image(fetched_image(source, data, folder, number), name=source))
                          for number, (source, data) in enumerate(zip(row["images"], stored))]
            except (RsccInputError, ValueError, OSError) as error:
                row["error"] = f"{type(error).__name__}: {error}"
                continue
            row.update(pixels=[array.tobytes() for array in arrays], shapes=[list(array.shape) for array in arrays])
    return as_columns(rows, ("id", "images", "references", "mask", "pixels", "shapes", "input_fingerprints", "error"))


class Captioner:
    """Captioning actor: loads the model once, then captions batches of decoded samples into result lines.

    Args:
        model (`str`): an rscc or LLaVA-OneVision checkpoint (Hub id or folder every node can read).
        made_by (`dict`): what makes the captions, written on every line (see `rscc.commands.caption.made_by`).
        max_new_tokens (`int`): caption length limit.
        dtype (`str`): weights dtype name (`float32`, `bfloat16`, `float16`).
        device (`str`): torch device (`cuda` for an actor given a GPU: Ray makes it the actor's only one).
    """

    def __init__(self, model: str, made_by: dict, max_new_tokens: int, dtype: str = "float32", device: str = "cpu"):
        from .captioning import uses_input_masks
        from .loading import DTYPES, load_captioner

        self.model, self.processor = load_captioner(model, device=device, dtype=DTYPES[dtype])
        self.takes_masks = uses_input_masks(self.model.config)
        self.made_by, self.max_new_tokens = made_by, max_new_tokens

    def _caption(self, rows: list[dict]) -> list[str]:
        from .captioning import caption_samples

        samples = [[np.frombuffer(data, dtype=np.uint8).reshape(shape) for data, shape in zip(row["pixels"],
                                                                                          row["shapes"])]
                   for row in rows]
        masks = [row["mask"] for row in rows] if self.takes_masks and any(row["mask"] for row in rows) else None
        return caption_samples(self.model, self.processor, samples, batch_size=len(rows),
                             max_new_tokens=self.max_new_tokens, change_masks=masks)

    def __call__(self, batch: pa.Table) -> dict:
        rows = batch.to_pylist()
        readable = [row for row in rows if not row["error"]]
        captions = dict(zip((row["id"] for row in readable), each_or_alone(readable, self._caption)))
        lines = [None if row["error"] else json.dumps(self._result_line(row, captions[row["id"]])) for row in rows]
        return {"id": [row["id"] for row in rows], "line": lines, "error": [row["error"] for row in rows]}

    def _result_line(self, row: dict, caption: str) -> dict:
        inputs = row.get("input_fingerprints")
        return {**_record_of(row).result_line(caption, self.made_by),
                **({FINGERPRINTS_FIELD: json.loads(inputs)} if inputs else {})}


def each_or_alone(rows: list[dict], caption: Callable[[list[dict]], list]) -> list:
    """`caption(rows)`, one result per row. One row's fault fails its batch: then each row is captioned alone, to tell
    which, and a failing row gets an `error` (and a None result) while the others are kept."""
    if not rows:
        return []
    try:
        return caption(rows)
    except (RsccInputError, ValueError, OSError):
        results = []
        for row in rows:
            try:
                results.extend(caption([row]))
            except (RsccInputError, ValueError, OSError) as error:
                row["error"] = f"{type(error).__name__}: {error}"
                results.append(None)
        return results


def stage_options(ray, num_workers: int, gpus_per_worker: float) -> tuple[dict, dict]:
    """`map_batches` options of the CPU stages (reading, decoding, writing) and of the captioning actors' stage.

    CPU actors hold a core each: the CPU stages then reserve none (else they would wait on the actors), and run in
    as many tasks at a time as there are actors (else Ray starts a worker process per block). Resources that differ
    from the actors' keep the CPU stages in their own tasks (Ray Data fuses stages of equal resources). A killed
    actor is restarted and its batch run again: Ray Data's defaults for actor pools (max_restarts=-1,
    max_task_retries=-1).
    """
    cpu_stage = {"num_cpus": 1 if gpus_per_worker else 0,
                 "compute": ray.data.TaskPoolStrategy(size=None if gpus_per_worker else num_workers)}
    actor_stage = {"compute": ray.data.ActorPoolStrategy(size=num_workers), "num_gpus": gpus_per_worker or None,
                   "num_cpus": None if gpus_per_worker else 1}
    return cpu_stage, actor_stage


def as_columns(rows: list[dict], names: Iterable[str]) -> dict:
    """Row dicts as the columns of a `map_batches` result."""
    return {name: [row.get(name) for row in rows] for name in names}


# ---------------------------------------------------------------------------------------------------------------
# The run.


def ray_initialized(address: str | None = None):
    """Ray, connected to the cluster at `address` (or RAY_ADDRESS, else a local instance) unless it is already; the
    second value says whether this call connected (and should shut down).

    `ray.init` sets a SIGTERM handler that exits with status 15; a handler the caller set is put back (the `rscc`
    commands' ends the run with 143 and its usual cleanup and message).
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
             **({} if address or os.environ.get("RAY_ADDRESS") else {"include_dashboard": False}))
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return ray, True


def quiet_ray_data(progress: bool) -> None:
    """Ray Data's progress on stderr only with --progress (its execution log otherwise shows every few seconds)."""
    ray = _import_ray()
    ray.data.DataContext.get_current().enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)


def caption_records(
    records: list[SampleRecord],
    model: str,
    out: str | os.PathLike,
    *,
    dataset=None,
    num_workers: int = 1,
    gpus_per_worker: float = 0.0,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    filesystem: pafs.FileSystem | None = None,
    record_inputs: bool = False,
) -> BatchSummary:
    """Caption samples on Ray Data into one output in the records' order, resuming an earlier run into `out`.

    Args:
        records (`list[SampleRecord]`): the samples, ids unique: the output's order, and what resuming checks.
        model (`str`): checkpoint every Ray node can load (a Hub id, or a folder on a shared file system).
        out (`str` or `os.PathLike`): a `.jsonl` or `.parquet` file, a local path or a pyarrow URI (`s3://...`).
            Shards go to `OUT.shards/` beside it and are removed once `out` is written.
        dataset (`ray.data.Dataset`, *optional*): the samples as rows of a built rscc dataset (images as stored
            bytes); by default the records are the rows.
        num_workers (`int`): captioning actors, one model each.
        gpus_per_worker (`float`): GPUs per actor (0: CPU).
        batch_size (`int`): samples per `generate` call.
        max_new_tokens (`int`, *optional*): caption length limit (default: `rscc caption`'s).
        dtype (`str`): weights dtype name.
        overwrite (`bool`): discard earlier results in `out` and its shards.
        filesystem (`pyarrow.fs.FileSystem`, *optional*): the file system of `out` (then a path on it), for one a
            URI cannot configure.
        record_inputs (`bool`): write each sample's local input fingerprints on its line, as `rscc caption` does
            (`rscc.input_fingerprint`); a rerun captions again the samples whose files changed.

    Returns:
        [`BatchSummary`].

    Raises:
        RayEngineError: samples that could not be read or captioned, each named once; the others are kept in the
            shards and a rerun captions only what is missing.
    """
    from .captioning import DEFAULT_MAX_NEW_TOKENS

    if batch_size < 1 or num_workers < 1 or gpus_per_worker < 0:
        raise BatchInputError(f"batch_size and num_workers must be at least 1 and gpus_per_worker 0 or more, got "
                              f"{batch_size}, {num_workers}, {gpus_per_worker}")
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    made_by = captioner_made_by(model, max_new_tokens, dtype)
    out = Location.parse(out, filesystem)
    shards = out.sibling(SHARDS_SUFFIX)
    if overwrite:
        remove_location(shards)
    lines, _ = ({}, {}) if overwrite else finished_lines(out, records, made_by)
    resumed = sum(record.id in lines for record in records)
    pending = [record for record in records if record.id not in lines]
    if pending:
        ray, connected = ray_initialized()
        try:
            _run_pipeline(ray, pending, dataset, shards, model, made_by, num_workers, gpus_per_worker, batch_size,
                          max_new_tokens, dtype, out.path.endswith(PARQUET_SUFFIX), record_inputs)
        finally:
            if connected:
                ray.shutdown()
        lines, errors = finished_lines(out, records, made_by)
        if errors:
            listed = "; ".join(f"{key}: {error}" for key, error in errors.items())
            raise RayEngineError(f"{len(errors)} sample(s) could not be captioned ({listed}); the other samples are "
                                 f"kept in {shards.uri}, rerun to caption what is missing")
        missing = [record.id for record in records if record.id not in lines]
        if missing:
            raise RayEngineError(f"the shards in {shards.uri} lack {len(missing)} sample(s) ({', '.join(missing[:5])}"
                                 "); rerun the same command to caption them")
    write_output(out, [lines[record.id] for record in records])
    remove_location(shards)
    return BatchSummary(total=len(records), captioned=len(pending), resumed=resumed)


def _run_pipeline(ray, pending, dataset, shards: Location, model, made_by, num_workers, gpus_per_worker, batch_size,
                  max_new_tokens, dtype, parquet_shards: bool, record_inputs: bool) -> None:
    blocks = max(1, math.ceil(len(pending) / batch_size))
    if dataset is None:
        samples = ray.data.from_items([_sample_row(record) for record in pending], override_num_blocks=blocks)
    else:
        wanted = {record.id for record in pending}
        samples = dataset.flat_map(lambda row: [_built_row(row)] if str(row["id"]) in wanted else [])
    cpu_stage, actor_stage = stage_options(ray, num_workers, gpus_per_worker)
    decoded = samples.map_batches(decode_images, fn_kwargs={"record_inputs": record_inputs}, batch_size=batch_size,
                                  batch_format="pyarrow", **cpu_stage)
    captioned = decoded.map_batches(
        Captioner, batch_format="pyarrow",
        fn_constructor_kwargs=dict(model=model, made_by=made_by, max_new_tokens=max_new_tokens, dtype=dtype,
                                   device="cuda" if gpus_per_worker else "cpu"),
        batch_size=batch_size, **actor_stage,
    )
    write = captioned.write_parquet if parquet_shards else captioned.write_json
    write(shards.path, filesystem=shards.filesystem, ray_remote_args={"num_cpus": cpu_stage["num_cpus"]},
          concurrency=cpu_stage["compute"].size)


# ---------------------------------------------------------------------------------------------------------------
# The Python API and `rscc caption --engine ray`.


def caption_dataset(dataset, model: str, out: str | os.PathLike, **options) -> BatchSummary:
    """Caption a Ray Dataset of samples into one output in the dataset's order.

    Rows are either sample rows (`id`, `images`: paths or URIs oldest first, optional `references`, `mask`) or rows
    of a built rscc dataset (`ray.data.read_parquet` of `rscc data build`'s `data/*.parquet`: `id`, `before`,
    `after`, `images`, `captions`, images as stored bytes). The dataset is read twice: once, in order, for every
    row's id and image names (not the images), gathered on the driver to order the output and check a rerun; then
    by the pipeline.

    Args:
        dataset (`ray.data.Dataset`): the samples.
        model (`str`): rscc or LLaVA-OneVision checkpoint (Hub id, or a folder every node can read).
        out (`str` or `os.PathLike`): `.jsonl` or `.parquet` output, local or a pyarrow URI.
        options: `num_workers`, `gpus_per_worker`, `batch_size`, `max_new_tokens`, `dtype`, `overwrite`,
            `filesystem` (see [`caption_records`]).

    Returns:
        [`BatchSummary`].
    """
    built = "before" in dataset.columns()
    names = ("id", "before", "after", "images", "captions") if built else ("id", "images", "references", "mask")
    execution = dataset.context.execution_options  # the dataset's own, which it was created with
    in_order, execution.preserve_order = execution.preserve_order, True
    try:
        rows = dataset.select_columns([name for name in names if name in dataset.columns()]).iter_rows()
        records = [_record_of(_built_row(row) if built else row) for row in rows]
    finally:
        execution.preserve_order = in_order
    seen = set()
    for record in records:
        if record.id in seen:
            raise BatchInputError(f"dataset: id {record.id!r} is used by more than one row; ids must be unique")
        seen.add(record.id)
    return caption_records(records, model, out, dataset=dataset if built else None, **options)


def captioner_config(model: str):
    """The config of a model the driver does not load (the workers do): it names the model and its revision, and
    tells its change head and input size. A missing model fails here, before Ray starts."""
    from transformers import AutoConfig

    from .loading import _check_available

    _check_available(model)
    return AutoConfig.from_pretrained(model)


def captioner_made_by(model: str, max_new_tokens: int, dtype: str) -> dict:
    """`rscc.commands.caption.made_by` of a model the driver does not load: its config alone gives the revision."""
    from argparse import Namespace

    from .commands.caption import made_by

    config = captioner_config(model)
    return made_by(model, Namespace(config=config), Namespace(max_new_tokens=max_new_tokens, dtype=dtype))


def _is_parquet_dataset(inputs: list[str]) -> bool:
    if len(inputs) != 1:
        return False
    where = Location.parse(inputs[0])
    if where.path.endswith(PARQUET_SUFFIX):
        return True
    return where.filesystem.get_file_info(where.path.rstrip("/") + "/data").type == pafs.FileType.Directory


def caption_command(args, batch_records) -> int:
    """`rscc caption ... --engine ray`: batch captioning of two folders, a manifest or a built rscc dataset (a
    `.parquet` file or a `rscc data build` folder, local or a URI) on Ray Data.

    Args:
        args (`argparse.Namespace`): the parsed `rscc caption` options.
        batch_records (`Callable[[list[str]], list[SampleRecord]]`): the records of two folders or a manifest, as
            `rscc caption` reads them.
    """
    from .cli import EXIT_OK
    from .commands.options import batch_size_of, show_progress

    if args.out is None:
        raise BatchInputError("--engine ray writes shards and one output: --out is needed")
    parquet = _is_parquet_dataset(args.inputs)
    if parquet:
        filesystem, files = parquet_files(args.inputs[0])
        records = records_from_parquet(filesystem, files)
    else:
        records = batch_records(args.inputs)
        check_images_exist([record for record in records if not any("://" in path for path in record.images)])
    if "://" not in args.out:
        check_output_file(args.out, "--out", "a .jsonl or .parquet file path",
                          inputs=[*args.inputs, *(path for path in record_paths(records) if "://" not in path)])
    captioner_made_by(args.model, args.max_new_tokens, args.dtype)  # a missing model fails before Ray starts
    ray, connected = ray_initialized(args.address)
    quiet_ray_data(show_progress(args))
    try:
        summary = caption_records(
            records, args.model, args.out, num_workers=args.num_workers or 1,
            dataset=ray.data.read_parquet(files, filesystem=filesystem) if parquet else None,
            gpus_per_worker=args.gpus_per_worker or 0.0, batch_size=batch_size_of(args),
            max_new_tokens=args.max_new_tokens, dtype=args.dtype, overwrite=args.overwrite, record_inputs=True,
        )
    finally:
        if connected:
            ray.shutdown()
    print(f"rscc caption: {summary.captioned} sample(s) captioned, {summary.resumed} already done, {args.out} "
          "(engine ray)", file=sys.stderr)
    return EXIT_OK


__all__ = [
    "Captioner",
    "Location",
    "RayEngineError",
    "caption_command",
    "caption_dataset",
    "caption_records",
    "check_engine_arguments",
    "decode_images",
    "parquet_files",
    "records_from_parquet",
]
