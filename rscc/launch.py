"""`rscc launch`: `accelerate launch` with rscc's exit codes, and the launch contract of data-parallel runs.

`accelerate launch` turns any failure of its processes into exit code 1 behind its own traceback (torchrun's
`ChildFailedError`, or `CalledProcessError` for one process), so a refused input does not exit with the documented
2 there. `rscc launch` takes `accelerate launch`'s arguments unchanged, runs the same launcher, and exits with the
processes' own exit code (the main process's, else the first failing one's), their one-line messages being the
only error output.

`accelerate launch --num_processes N` without `--multi_gpu` (or a config file with a distributed type) starts ONE
process: accelerate's simple launcher. [`report_process_mismatch`] notices it in the process (the launcher sets
`MASTER_ADDR`/`MASTER_PORT` for N > 1 but no `WORLD_SIZE`) and says so; `--multi_gpu` selects torchrun, which starts
N processes, over gloo on CPUs.
"""

import argparse
import logging
import os
import subprocess
import sys

from .cli import EXIT_BAD_INPUT, EXIT_OK

# torchrun logs every failure of a process (with a traceback of the agent) and the SIGTERM it sends the others.
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")


def report_process_mismatch(world_size: int) -> None:
    """Say on stderr when the launcher started fewer processes than were asked for.

    Args:
        world_size (`int`): the processes this run has (`WORLD_SIZE`, 1 without a launcher).
    """
    launched_by_accelerate = "ACCELERATE_USE_CPU" in os.environ
    asked_for_several = "MASTER_PORT" in os.environ and "WORLD_SIZE" not in os.environ
    if launched_by_accelerate and asked_for_several and world_size == 1:
        print("rscc: note: accelerate launch was asked for several processes (--num_processes > 1) and started one: "
              "without --multi_gpu (also for CPU processes, where it selects torchrun over gloo) accelerate runs a "
              "single process. This run captions everything in this one process; add --multi_gpu for several",
              file=sys.stderr)


def _exit_code(failures: list[tuple[int, float]]) -> int:
    """The exit code of a launch whose processes failed, from `(exit code, time)` of each failed process: the first
    process that exited by itself (the launcher then stops the others with SIGTERM), signals as the shell gives them.
    """
    code = min(failures, key=lambda failure: (failure[0] < 0, failure[1]))[0] if failures else 1
    return 128 - code if code < 0 else code


def _run_launch(args: argparse.Namespace) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch_args = launch_command_parser().parse_args(args.arguments)
    except SystemExit as error:  # argparse has printed its usage line
        return error.code if isinstance(error.code, int) else EXIT_BAD_INPUT
    for name in _LAUNCHER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        launch_command(launch_args)
    except ValueError as error:  # accelerate's own checks of its options
        print(f"rscc launch: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ChildFailedError as error:
        return _exit_code([(failure.exitcode, failure.timestamp) for failure in error.failures.values()])
    except subprocess.CalledProcessError as error:
        return _exit_code([(error.returncode, 0.0)])
    return EXIT_OK


def make_parser(subparsers) -> None:
    # No options of its own ("+" prefixes none): every argument, --cpu or --help included, is accelerate launch's.
    parser = subparsers.add_parser(
        "launch", prefix_chars="+", add_help=False,
        help="accelerate launch with rscc's exit codes: rscc launch [ACCELERATE LAUNCH OPTIONS] -m rscc COMMAND ...",
        description="Run `accelerate launch` with the same arguments, exiting with the processes' own exit code "
        "(2 for bad input, ...) and no launcher traceback. Example: rscc launch --multi_gpu --num_processes 8 -m "
        "rscc caption A/ B/ --model MODEL --out captions.jsonl --device cuda",
        usage="rscc launch [ACCELERATE LAUNCH OPTIONS] -m rscc COMMAND [ARGS]",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="accelerate launch's arguments")
    parser.set_defaults(run=_run_launch)


__all__ = ["report_process_mismatch"]
