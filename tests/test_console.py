"""The command line as a first-time user meets it: help and argument errors without torch, stdout holding only a
command's result, progress bars that follow the command, captions made safe for a terminal."""

import io
import subprocess
import sys

import pytest

from rscc.cli import SUBCOMMANDS, build_parser, command_help
from rscc.terminal import for_terminal, print_result, stdout_for_results_only

from conftest import REPO_ROOT

_RUN_CONSOLE = (
    "import sys\n"
    "import rscc_console\n"
    "sys.argv = ['rscc', *sys.argv[1:]]\n"
    "try:\n"
    "    code = rscc_console.main()\n"
    "except SystemExit as stop:\n"
    "    code = stop.code\n"
    "print('heavy modules:', sorted(name for name in ('torch', 'transformers') if name in sys.modules), "
    "file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.mark.parametrize(
    "arguments, exit_code",
    [
        (["--help"], 0),
        (["caption", "--help"], 0),
        (["scene", "--help"], 0),
        (["data", "--help"], 0),
        (["data", "levir-cc", "--help"], 0),
        (["demo", "--help"], 0),
        (["card", "--help"], 0),
        (["tiny-checkpoint", "--help"], 0),
        (["caption"], 2),  # no INPUT
        (["scene", "a.tif", "b.tif", "--dtype", "float8"], 2),
        (["no-such-command"], 2),
    ],
)
def test_help_and_argument_errors_import_neither_torch_nor_transformers(arguments, exit_code):
    result = subprocess.run([sys.executable, "-c", _RUN_CONSOLE, *arguments], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=60)
    assert result.returncode == exit_code, result.stderr
    assert "heavy modules: []" in result.stderr, result.stderr


def test_top_level_help_lists_every_command_with_its_own_help_line():
    top = build_parser().format_help()
    for command in SUBCOMMANDS:
        assert command in top
        parser = build_parser(command)
        (chosen,) = [action for action in parser._subparsers._group_actions[0]._choices_actions
                     if action.dest == command]
        assert chosen.help == command_help(command), f"rscc {command}'s parser shows another help line"


def test_help_defaults_match_the_library(tmp_path):
    from rscc import captioning_rscc, defaults, loading

    assert defaults.DEFAULT_MAX_NEW_TOKENS == captioning_rscc.DEFAULT_MAX_NEW_TOKENS
    assert set(loading.DTYPES) == set(defaults.DTYPE_NAMES)


@pytest.mark.slow
def test_tiny_checkpoint_prints_one_line_and_no_library_output(tmp_path):
    """DeepSpeed (installed with the test extra) prints "Setting accelerator to CPU" on stdout when transformers
    imports it; transformers draws progress bars on a stderr that is not a terminal: neither may reach the output."""
    out = tmp_path / "tiny"
    result = subprocess.run([sys.executable, "-m", "rscc", "tiny-checkpoint", str(out)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n", result.stdout
    assert "it/s]" not in result.stderr and "%|" not in result.stderr, result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_control_characters_are_escaped_on_a_terminal_and_kept_in_a_pipe():
    caption = "a road \x1b[31mred\x1b[0m\r\x07is built"
    assert for_terminal(caption, _Terminal()) == "a road \\x1b[31mred\\x1b[0m\\r\\x07is built"
    assert for_terminal(caption, io.StringIO()) == caption
    assert for_terminal("ü 道路 are kept", _Terminal()) == "ü 道路 are kept"


def test_results_go_to_stdout_and_library_prints_to_stderr(capsys):
    with stdout_for_results_only():
        print("a library's chatter")
        print_result("two\nlines", multiline=True)
        print_result("one\nline")
    captured = capsys.readouterr()
    assert captured.out == "two\nlines\none\nline\n"
    assert captured.err == "a library's chatter\n"
