"""Command-line options shared by the commands that load a model and caption (`rscc caption`, `rscc scene`,
`rscc demo`), and the engine options of `rscc caption` and `rscc scene`."""

import argparse
import sys

from ..cli import positive_int
from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, DTYPE_NAMES


def torch_device(text: str) -> str:
    """argparse type of --device: a device this torch build has (cpu, the default, without importing torch)."""
    if text == "cpu":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device ({error}); expected cpu, cuda, cuda:1, mps")
    available = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if device.type not in available:
        raise argparse.ArgumentTypeError(f"{text!r}: rscc runs on cpu, cuda or mps devices")
    if not available[device.type]():
        count = torch.cuda.device_count() if device.type == "cuda" else 0
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine's torch {torch.__version__} has no such device "
            f"({count} CUDA device(s)); use --device cpu"
        )
    return text


def add_device_arguments(parser) -> None:
    """The model options shared by the commands that caption: --model, --device, --dtype, --batch-size,
    --max-new-tokens.

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
    """
    parser.add_argument("--model", default=DEFAULT_MODEL, help="rscc or LLaVA-OneVision checkpoint (Hub id or folder)")
    parser.add_argument("--device", default="cpu", type=torch_device, help="torch device, e.g. cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES), help="weights dtype")
    parser.add_argument(
        "--batch-size", type=positive_int, help=f"samples per generate call (default {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)


def add_progress_arguments(parser) -> None:
    """--progress / --no-progress (default: a bar when stderr is a terminal).

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
    """
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


ENGINES = ("accelerate", "ray")


def add_engine_arguments(parser, ray_note: str = "") -> None:
    """--engine, and the options of --engine ray: --address, --num-workers, --gpus-per-worker (checked by
    `rscc.ray.check_engine_arguments`).

    Args:
        parser (`argparse.ArgumentParser`): the subcommand's parser.
        ray_note (`str`): what --engine ray takes besides what the command always takes, for its help.
    """
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine", choices=ENGINES, default="accelerate",
        help="accelerate (default): this process, or one process per GPU under `accelerate launch`; ray: Ray Data, "
        f"on a local Ray instance or the cluster of --address (needs rscc[ray]){ray_note}",
    )
    group.add_argument("--address", help="ray: address of a running Ray cluster (default: RAY_ADDRESS, else a "
                       "local Ray instance started for the run)")
    group.add_argument("--num-workers", type=int, help="ray: captioning actors, one model each (default 1)")
    group.add_argument("--gpus-per-worker", type=float,
                       help="ray: GPUs per captioning actor, e.g. 1 or 0.5 (default 0: the actors caption on CPU)")


def batch_size_of(args) -> int:
    """--batch-size, or its default (see `add_device_arguments`)."""
    return DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size


def show_progress(args) -> bool:
    """Whether to draw a progress bar for `args` (see `add_progress_arguments`)."""
    return sys.stderr.isatty() if args.progress is None else args.progress
