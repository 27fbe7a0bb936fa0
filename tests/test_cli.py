import os
import subprocess
import sys

import pytest

from rscc.cli import main


def test_caption_prints_one_line_for_a_pair(tiny_checkpoint, example_pairs, capsys):
    assert main(["caption", *example_pairs[0], "--model", str(tiny_checkpoint), "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0]


def test_caption_fails_fast_offline_and_says_how_to_use_a_local_folder(example_pairs, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["caption", *example_pairs[0]]) == 2
    error = capsys.readouterr().err
    assert "llava-hf/llava-onevision-qwen2-0.5b-ov-hf" in error and "--model" in error


def test_caption_names_a_missing_image(tiny_checkpoint, example_pairs, capsys, tmp_path):
    assert main(["caption", str(tmp_path / "gone.png"), example_pairs[0][1], "--model", str(tiny_checkpoint)]) == 2
    assert "gone.png" in capsys.readouterr().err


def test_tiny_checkpoint_command_writes_a_loadable_folder(tmp_path, capsys):
    from rscc import RsccForConditionalGeneration, RsccProcessor

    assert main(["tiny-checkpoint", str(tmp_path / "tiny")]) == 0
    RsccForConditionalGeneration.from_pretrained(tmp_path / "tiny")
    assert RsccProcessor.from_pretrained(tmp_path / "tiny").tokens_per_image == 50


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["nonsense"])
    assert exit_info.value.code == 2


def test_caption_with_a_change_head_writes_the_mask_and_its_fraction(example_pairs, shared_data, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from rscc.tiny_checkpoints import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "head", use_change_head=True, change_filter="drop")
    label = shared_data / "levir_cd_samples" / "label" / "test_2_0000_0000.png"
    mask_out = tmp_path / "predicted.png"
    argv = ["caption", *example_pairs[0], "--model", str(folder), "--mask", str(label), "--mask-out", str(mask_out),
            "--json", "--max-new-tokens", "3"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds the result alone, whatever libraries print
    predicted = np.asarray(Image.open(mask_out))
    assert predicted.shape == (256, 256) and set(np.unique(predicted)) <= {0, 255}
    assert result["changed_fraction"] == (predicted == 255).mean()
    assert result["change_flag"] == int(result["changed_fraction"] > 0)


def test_caption_mask_out_needs_a_change_head(tiny_checkpoint, example_pairs, tmp_path, capsys):
    argv = ["caption", *example_pairs[0], "--model", str(tiny_checkpoint), "--mask-out", str(tmp_path / "m.png")]
    assert main(argv) == 2
    assert "no change-detection head" in capsys.readouterr().err and not (tmp_path / "m.png").exists()


def test_every_subcommand_is_defined_by_the_module_the_registry_names():
    from rscc.cli import SUBCOMMAND_MODULES, build_parser

    for command in SUBCOMMAND_MODULES:
        subparsers = build_parser(command)._subparsers._group_actions[0]
        assert command in subparsers.choices, f"{SUBCOMMAND_MODULES[command]} does not define `rscc {command}`"
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(SUBCOMMAND_MODULES)


def test_eval_imports_neither_torch_nor_transformers_under_lazy_import(tmp_path):
    # What `rscc eval` runs (the console script sets RSCC_LAZY_IMPORT for it); the classes still load on access.
    script = (
        "import sys; from rscc.cli import build_parser; build_parser('eval')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'eval imported torch'\n"
        "import rscc; from transformers import AutoConfig\n"
        "assert rscc.RsccConfig is type(AutoConfig.for_model('rscc')), 'registered on first access'\n"
    )
    environment = {**os.environ, "RSCC_LAZY_IMPORT": "1"}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert completed.returncode == 0, completed.stderr


def test_one_table_gives_every_exception_its_exit_code():
    import torch

    from rscc.cli import EXIT_BAD_INPUT, EXIT_HUB, EXIT_INVALID_RECORDS, EXIT_OUT_OF_MEMORY, exit_code_of
    from rscc.data import InvalidRecordsError
    from rscc.errors import HubUnreachableError, InputFileNotFoundError, RsccInputError
    from rscc.output_files import OutputPathError

    assert exit_code_of(InvalidRecordsError([])) == EXIT_INVALID_RECORDS, "first row wins over its ValueError base"
    assert exit_code_of(HubUnreachableError("down")) == EXIT_HUB
    assert exit_code_of(torch.OutOfMemoryError("CUDA out of memory")) == EXIT_OUT_OF_MEMORY
    for error in (RsccInputError("x"), OutputPathError("x"), InputFileNotFoundError("x"), ValueError("x"),
                  PermissionError("x")):
        assert exit_code_of(error) == EXIT_BAD_INPUT, error
    assert exit_code_of(RuntimeError("a defect")) is None and exit_code_of(KeyError("a defect")) is None


def test_a_command_that_raises_a_defect_shows_its_traceback(monkeypatch, tmp_path):
    def defect(*args, **kwargs):
        raise KeyError("a defect")

    monkeypatch.setattr("rscc.tiny_checkpoints.make_tiny_checkpoint", defect)
    with pytest.raises(KeyError, match="a defect"):
        main(["tiny-checkpoint", str(tmp_path / "tiny")])


def test_training_and_evaluation_import_no_command_module():
    script = (
        "import sys; import rscc.training.arguments, rscc.training.run, rscc.evaluation, rscc.scene, rscc.batch\n"
        "commands = sorted(name for name in sys.modules if name.startswith('rscc.commands'))\n"
        "assert not commands, commands\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_every_class_the_exit_code_table_names_exists():
    import importlib

    from rscc.cli import EXIT_CODE_OF_ERROR

    for name, _ in EXIT_CODE_OF_ERROR:
        module, _, qualname = name.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), qualname), BaseException), name
