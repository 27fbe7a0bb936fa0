"""The exit-code contract of every command (README, "Errors"), checked command by command."""

import json
import signal

import pytest
import torch

from rscc.cli import (
    EXIT_BAD_INPUT,
    EXIT_HUB,
    EXIT_INTERRUPTED,
    EXIT_INVALID_RECORDS,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_TERMINATED,
    main,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def commands(tiny_checkpoint, example_pairs, shared_data, tmp_path):
    """Per command: a good command line, a bad-input one, and the function its run goes through (to stop it)."""
    chips = shared_data / "geotiff_xview2"
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"before": b, "after": a, "caption": "houses appear"}) + "\n"
                                for b, a in example_pairs))
    predictions = tmp_path / "preds.jsonl"
    references = tmp_path / "refs.json"
    references.write_text(json.dumps({"images": [{"filename": "p1.png", "split": "test",
                                                  "sentences": [{"raw": "a road is built"}]}]}))
    predictions.write_text(json.dumps({"id": "p1", "caption": "a road is built"}) + "\n")
    eval_json = tmp_path / "eval.json"
    model = ["--model", str(tiny_checkpoint), "--max-new-tokens", "1"]
    return {
        "caption": ([*example_pairs[0], *model], [example_pairs[0][0], str(tmp_path / "gone.png"), *model],
                    "rscc.loading.load_captioner"),
        "scene": ([str(chips / "pre" / "0_pre.tif"), str(chips / "post" / "0_post.tif"), "--out",
                   str(tmp_path / "s.geojson"), "--tile-size", "512", *model],
                  [str(chips / "pre" / "0_pre.tif"), str(tmp_path / "gone.tif"), "--out", str(tmp_path / "s.geojson"),
                   *model], "rscc.loading.load_captioner"),
        "data": (["manifest", "--manifest", str(manifest), "--out", str(tmp_path / "built")],
                 ["manifest", "--manifest", str(tmp_path / "gone.csv"), "--out", str(tmp_path / "built2")],
                 "rscc.data.build.build_dataset"),
        "eval": (["--predictions", str(predictions), "--references", str(references), "--split", "test",
                  "--metrics", "BLEU-1", "--output", str(eval_json)],
                 ["--predictions", str(tmp_path / "gone.jsonl"), "--references", str(references)],
                 "rscc.metrics.cli.evaluate_captions"),
        "card": ([str(eval_json), "--repo-id", "user/name", "--out", str(tmp_path / "README.md")],
                 [str(tmp_path / "gone.json"), "--repo-id", "user/name", "--out", str(tmp_path / "README.md")],
                 "rscc.hub.validate_model_card"),
        "publish": ([str(tiny_checkpoint), "--repo-id", "user/name", "--dry-run", "--out", str(tmp_path / "hub")],
                    [str(tmp_path / "gone"), "--repo-id", "user/name", "--dry-run", "--out", str(tmp_path / "hub")],
                    "rscc.hub.publish"),
        "tiny-checkpoint": ([str(tmp_path / "tiny")], [str(tiny_checkpoint)],
                            "rscc.tiny_checkpoints.make_tiny_checkpoint"),
    }


ORDER = ["caption", "scene", "data", "eval", "tiny-checkpoint", "card", "publish"]  # eval writes card's input


def test_ok_and_bad_input(commands, capsys):
    for command in ORDER:
        good, bad, _ = commands[command]
        assert main([command, *good]) == EXIT_OK, (command, capsys.readouterr().err)
        assert main([command, *bad]) == EXIT_BAD_INPUT, command
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ORDER)
@pytest.mark.parametrize("stop, code", [("interrupt", EXIT_INTERRUPTED), ("terminate", EXIT_TERMINATED)])
def test_interrupted_and_terminated(command, stop, code, commands, monkeypatch, capsys):
    good, _, stopped_function = commands[command]

    def stopping(*args, **kwargs):
        if stop == "interrupt":
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(stopped_function, stopping)
    if command in ("card", "publish"):  # their input is the eval report
        monkeypatch.setattr("rscc.hub.load_evaluation", lambda path: {})
    handler = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's when an earlier test started Ray
    assert main([command, *good]) == code
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("command", ["caption", "scene"])
def test_out_of_memory(command, commands, monkeypatch):
    good, _, load = commands[command]

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(load, out_of_memory)
    assert main([command, *good]) == EXIT_OUT_OF_MEMORY


def test_invalid_records_of_a_data_build(example_pairs, tmp_path, capsys):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"before": example_pairs[0][0], "after": example_pairs[0][1], "caption": "."}))
    assert main(["data", "manifest", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == \
        EXIT_INVALID_RECORDS
    assert "empty caption" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_hub_failing(example_pairs, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import requests

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("[Errno 101] Network is unreachable")

    # A Hub id that passes the offline check (as if online), then a download that cannot connect.
    monkeypatch.setattr("rscc.loading._check_available", lambda model: None)
    monkeypatch.setattr("rscc.loading.AutoConfig.from_pretrained", unreachable)
    assert main(["caption", *example_pairs[0], "--model", "someone/rscc-levir"]) == EXIT_HUB
    assert "the Hugging Face Hub failed" in capsys.readouterr().err

    monkeypatch.undo()
    monkeypatch.setattr("rscc.hub._upload", unreachable)
    argv = ["publish", str(tiny_checkpoint), "--repo-id", "user/name", "--out", str(tmp_path / "hub")]
    assert main(argv) == EXIT_HUB


def test_usage_errors_are_bad_input():
    for argv in (["nonsense"], ["caption"], ["scene", "a.tif"], ["data"], ["eval"], ["caption", "a", "b",
                                                                                     "--batch-size", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == EXIT_BAD_INPUT, argv
