"""The Ray Data engine (`rscc.ray`) on a local Ray instance of 2 CPUs, real LEVIR-CD pairs and a tiny checkpoint:
the same records as `rscc caption`'s one process, a captioning worker killed mid-run, resume across engines, failing
inputs, and outputs on `file://` and S3 (a local moto server) URIs."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pytest
import ray

from rscc.cli import EXIT_BAD_INPUT, EXIT_OK, main
from rscc.ray import RayEngineError, caption_dataset, caption_records

PAIR_NAMES = [
    "test_102_0512_0000.png", "test_121_0768_0256.png", "test_2_0000_0000.png", "test_2_0000_0512.png",
    "test_55_0256_0000.png", "test_77_0512_0256.png",
]


@pytest.fixture(scope="module")
def pair_folders(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """Six real LEVIR-CD pairs as BEFORE/ and AFTER/ folders."""
    root = tmp_path_factory.mktemp("pairs")
    for date, folder in (("A", "before"), ("B", "after")):
        (root / folder).mkdir()
        for name in PAIR_NAMES:
            shutil.copyfile(shared_data / "levir_cd_samples" / date / name, root / folder / name)
    return root / "before", root / "after"


@pytest.fixture(scope="module")
def single_process_lines(pair_folders, tiny_checkpoint, tmp_path_factory) -> list[str]:
    """`rscc caption BEFORE AFTER` in this process (the accelerate engine, one process): the expected records."""
    out = tmp_path_factory.mktemp("single") / "captions.jsonl"
    assert main(["caption", *map(str, pair_folders), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--batch-size", "2"]) == EXIT_OK
    return out.read_text().splitlines()


def _caption_args(pair_folders, tiny_checkpoint, out, *options) -> list[str]:
    return ["caption", *map(str, pair_folders), "--model", str(tiny_checkpoint), "--out", str(out),
            "--batch-size", "2", "--engine", "ray", *options]


def test_ray_engine_writes_the_single_process_records(local_ray, pair_folders, tiny_checkpoint,
                                                      single_process_lines, tmp_path):
    out = tmp_path / "captions.jsonl"
    assert main(_caption_args(pair_folders, tiny_checkpoint, out, "--num-workers", "2")) == EXIT_OK
    assert out.read_text().splitlines() == single_process_lines  # byte for byte, in input order, made_by included
    assert not (tmp_path / "captions.jsonl.shards").exists()


def test_ray_engine_resumes_an_accelerate_run_and_refuses_other_options(local_ray, pair_folders, tiny_checkpoint,
                                                                        single_process_lines, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    out.write_text("".join(line + "\n" for line in single_process_lines[:4]))  # a finished run of fewer pairs
    assert main(_caption_args(pair_folders, tiny_checkpoint, out)) == EXIT_OK
    assert "2 sample(s) captioned, 4 already done" in capsys.readouterr().err
    assert out.read_text().splitlines() == single_process_lines

    assert main(_caption_args(pair_folders, tiny_checkpoint, out, "--max-new-tokens", "5")) == EXIT_BAD_INPUT
    assert "captions of different models or options are not mixed" in capsys.readouterr().err
    assert out.read_text().splitlines() == single_process_lines  # untouched


def test_engine_options_are_checked(pair_folders, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    arguments = ["caption", *map(str, pair_folders), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main([*arguments, "--num-workers", "2"]) == EXIT_BAD_INPUT
    assert "--num-workers is an option of --engine ray" in capsys.readouterr().err
    assert main([*arguments, "--engine", "ray", "--num-workers", "0"]) == EXIT_BAD_INPUT
    assert "--num-workers must be at least 1" in capsys.readouterr().err
    before, after = (str(folder / PAIR_NAMES[0]) for folder in pair_folders)
    assert main(["caption", before, after, "--model", str(tiny_checkpoint), "--engine", "ray"]) == EXIT_BAD_INPUT
    assert "--engine ray captions batches" in capsys.readouterr().err


def _records(pair_folders):
    from rscc.batch import pairs_from_folders

    return pairs_from_folders(*pair_folders)


def test_failing_input_is_reported_once_and_a_rerun_resumes(local_ray, pair_folders, tiny_checkpoint,
                                                            single_process_lines, tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(pair_folders[0], before), shutil.copytree(pair_folders[1], after)
    broken = after / PAIR_NAMES[2]
    good = broken.read_bytes()
    broken.write_bytes(b"not an image")
    records = _records((before, after))
    out = tmp_path / "captions.jsonl"
    with pytest.raises(RayEngineError) as failure:
        caption_records(records, str(tiny_checkpoint), out, batch_size=2)
    message = str(failure.value)
    assert message.startswith("1 sample(s) could not be captioned") and message.count(PAIR_NAMES[2]) >= 1
    assert not out.exists() and (tmp_path / "captions.jsonl.shards").is_dir()

    broken.write_bytes(good)
    summary = caption_records(records, str(tiny_checkpoint), out, batch_size=2)
    assert (summary.captioned, summary.resumed) == (1, 5)
    expected = [json.loads(line)["caption"] for line in single_process_lines]
    assert [json.loads(line)["caption"] for line in out.read_text().splitlines()] == expected


def test_a_rerun_captions_again_a_sample_whose_file_changed(local_ray, pair_folders, tiny_checkpoint, tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(pair_folders[0], before), shutil.copytree(pair_folders[1], after)
    records = _records((before, after))
    out = tmp_path / "captions.jsonl"
    caption_records(records, str(tiny_checkpoint), out, batch_size=2, record_inputs=True)
    changed = after / PAIR_NAMES[1]
    changed.write_bytes((after / PAIR_NAMES[0]).read_bytes())  # another picture under the same name
    summary = caption_records(records, str(tiny_checkpoint), out, batch_size=2, record_inputs=True)
    assert (summary.captioned, summary.resumed) == (1, 5)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [record.id for record in records]
    recorded = lines[1]["input_fingerprints"][str(changed)]["sha256"]
    assert recorded == hashlib.sha256(changed.read_bytes()).hexdigest()


def test_caption_dataset_to_a_file_uri_with_parquet_output(local_ray, pair_folders, tiny_checkpoint,
                                                           single_process_lines, tmp_path):
    rows = [{"id": record.id, "images": list(record.images)} for record in _records(pair_folders)]
    out = tmp_path / "run" / "captions.parquet"
    summary = caption_dataset(ray.data.from_items(rows), model=str(tiny_checkpoint), out=f"file://{out}",
                              batch_size=2)
    assert (summary.total, summary.captioned) == (6, 6)
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    expected = [json.loads(line) for line in single_process_lines]
    assert table.column("id").to_pylist() == [line["id"] for line in expected]
    assert table.column("caption").to_pylist() == [line["caption"] for line in expected]
    assert table.column("made_by").to_pylist()[0] == expected[0]["made_by"]
    assert sorted(path.name for path in out.parent.iterdir()) == ["captions.parquet"]


def _captioner_processes() -> list[psutil.Process]:
    """The live processes of captioning actors: Ray titles them after the stage."""
    return [process for process in psutil.process_iter(["cmdline", "status"])
            if "MapBatches(Captioner)" in " ".join(process.info["cmdline"] or [])
            and process.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_output_is_complete(local_ray, pair_folders, tiny_checkpoint,
                                                              single_process_lines, tmp_path):
    records = _records(pair_folders)
    out = tmp_path / "captions.jsonl"
    shards = tmp_path / "captions.jsonl.shards"
    outcome = {}

    def run():
        try:
            outcome["summary"] = caption_records(records, str(tiny_checkpoint), out, batch_size=1, record_inputs=True)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    while not (shards.is_dir() and any(shards.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first captioned batch is written: the worker is mid-run
    workers = _captioner_processes()  # the run's one actor (and any of an earlier run's still shutting down)
    assert workers and runner.is_alive(), "the run ended before its worker could be killed"
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    runner.join(timeout=240)
    assert "error" not in outcome, outcome.get("error")
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    assert out.read_text().splitlines() == single_process_lines  # every sample once, in order


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3_server():
    """A moto S3 server on 127.0.0.1 (a local S3-compatible endpoint)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_images_and_output_in_s3(local_ray, s3_server, pair_folders, tiny_checkpoint, single_process_lines):
    options = f"endpoint_override={s3_server}&scheme=http&region=us-east-1"
    filesystem = pafs.S3FileSystem(access_key="test", secret_key="test", endpoint_override=s3_server,
                                   scheme="http", region="us-east-1", allow_bucket_creation=True)
    filesystem.create_dir("archive")
    rows = []
    for name in PAIR_NAMES:
        for folder, date in zip(pair_folders, ("before", "after")):
            with filesystem.open_output_stream(f"archive/{date}/{name}") as stream:
                stream.write((folder / name).read_bytes())
        rows.append({"id": name, "images": [f"s3://test:test@archive/{date}/{name}?{options}"
                                            for date in ("before", "after")]})
    out = f"s3://test:test@archive/runs/captions.jsonl?{options}"
    summary = caption_dataset(ray.data.from_items(rows), model=str(tiny_checkpoint), out=out, batch_size=2)
    assert summary.captioned == 6
    with filesystem.open_input_stream("archive/runs/captions.jsonl") as stream:
        written = [json.loads(line) for line in stream.read().decode().splitlines()]
    expected = [json.loads(line) for line in single_process_lines]
    assert [(line["id"], line["caption"]) for line in written] == [(line["id"], line["caption"]) for line in expected]
    assert written[0]["before"] == rows[0]["images"][0]
    assert filesystem.get_file_info("archive/runs/captions.jsonl.shards").type == pafs.FileType.NotFound


def test_built_parquet_dataset_on_the_command_line(local_ray, pair_folders, tiny_checkpoint, single_process_lines,
                                                    tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def stored(path: Path) -> dict:
        return {"bytes": path.read_bytes(), "path": path.name}

    rows = [{"id": name, "before": stored(pair_folders[0] / name), "after": stored(pair_folders[1] / name),
             "captions": ["a reference"], "change_flag": 1, "source": "levir_cd", "images": []}
            for name in PAIR_NAMES]
    dataset = tmp_path / "built"
    (dataset / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), dataset / "data" / "test-00000-of-00001.parquet")
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(dataset), "--model", str(tiny_checkpoint), "--out", str(out), "--batch-size", "2",
                 "--engine", "ray"]) == EXIT_OK
    written = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in single_process_lines]
    assert [(line["id"], line["caption"]) for line in written] == [(line["id"], line["caption"]) for line in expected]
    assert written[0]["before"] == PAIR_NAMES[0] and written[0]["references"] == ["a reference"]
