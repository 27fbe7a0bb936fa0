"""The one atomic-write helper and the one part-file protocol that batch and scene runs share."""

import json

import pytest

from rscc.errors import RsccInputError
from rscc.output_files import atomic_output
from rscc.parallel import PartFiles, ProcessShare


def test_atomic_output_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    out = tmp_path / "result.txt"
    out.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_output(out, ".txt") as temporary:
            temporary.write_text("half")
            raise RuntimeError("stopped")
    assert out.read_text() == "earlier" and sorted(tmp_path.iterdir()) == [out]
    with atomic_output(out, ".txt") as temporary:
        temporary.write_text("complete")
    assert out.read_text() == "complete" and sorted(tmp_path.iterdir()) == [out]
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert out.stat().st_mode == plain.stat().st_mode, "the output has the permissions of any file written"


def _lines(*keys):
    return "".join(json.dumps({"key": key, "from": tag}) + "\n" for key, tag in keys)


def test_parts_resume_append_and_merge_in_output_order(tmp_path):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial.1").write_text(_lines((3, "rank1"), (1, "rank1")))
    (tmp_path / "out.jsonl.partial").write_text(_lines((0, "single"), (1, "single")) + '{"key": 2, "fr')  # cut
    parts = PartFiles(out, ProcessShare())
    parts.repair()
    finished = parts.finished(lambda part, number, line: line["key"])
    assert finished == {0, 1, 3}, "the line cut off by a stop is dropped, the parts of every process are read"
    parts.append([key for key in range(5) if key not in finished], 1,
                 lambda batch: _lines(*((key, "rerun") for key in batch)), progress=False, total=5, done=3,
                 unit="item")
    merged = [json.loads(raw) for raw in parts.merged(range(5), lambda line: line["key"])]
    assert [(line["key"], line["from"]) for line in merged] == [
        (0, "single"), (1, "single"), (2, "rerun"), (3, "rank1"), (4, "rerun")]
    parts.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_merge_that_lacks_results_names_them_and_writes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text(_lines((0, "single")))
    parts = PartFiles(out, ProcessShare())
    with pytest.raises(RsccInputError, match=r"lack 2 result\(s\) at the merge \(1, 2\)"):
        with atomic_output(out) as temporary, open(temporary, "wb") as merged:
            merged.writelines(parts.merged(range(3), lambda line: line["key"]))
    assert not out.exists() and parts.existing() == [tmp_path / "out.jsonl.partial"]
