"""`rscc demo` and `rscc space`: the Gradio demo served, and a Hub Space folder that serves it written (and uploaded)
(the library code is `rscc.demo`)."""

import argparse

from ..cli import EXIT_OK, command_help, positive_int
from ..defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, DTYPE_NAMES
from ..terminal import print_result
from .options import torch_device


def run_demo(args: argparse.Namespace) -> int:
    """Run `rscc demo`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..demo import examples_or_own, launch_demo

    launch_demo(args.model, examples_or_own(args.examples), host=args.host, port=args.port, share=args.share,
                device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    return EXIT_OK


def run_space(args: argparse.Namespace) -> int:
    """Run `rscc space`; a failure raises (see `rscc.cli.EXIT_CODE_OF_ERROR`)."""
    from ..demo import write_space
    from ..hub import check_repo_id, hub_upload_failures

    if args.repo_id:
        check_repo_id(args.repo_id)
    folder = write_space(args.model, args.out, args.examples, args.title)
    if not args.repo_id:
        print_result(str(folder))
        return EXIT_OK
    from huggingface_hub import HfApi

    with hub_upload_failures(kept=args.out):
        api = HfApi()
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=args.repo_id, repo_type="space",
                                   commit_message=f"rscc demo of {args.model}")
    print_result(commit.commit_url)
    return EXIT_OK


def make_parser(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help=command_help("demo"),
        description="Load --model and serve a page at http://HOST:PORT where two uploaded images (PNG, JPEG, TIFF "
        "including 16-bit and GeoTIFF) get a caption and, for a model with a change-detection head, the predicted "
        "change drawn over the after image with the changed fraction. Needs gradio (README, Demo). Runs until "
        "Ctrl-C. Exit codes: 0 stopped; 2 bad input (model folder missing or unloadable, gradio missing); 4 the "
        "Hugging Face Hub (or, for --share, gradio's share server) could not be reached.",
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help="rscc or LLaVA-OneVision checkpoint (Hub id or folder)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the local network)")
    demo.add_argument("--port", type=positive_int, help="port (default 7860, or GRADIO_SERVER_PORT)")
    demo.add_argument("--share", action="store_true", help="also a public gradio.live link (needs the internet)")
    demo.add_argument("--examples", help="folder of example pairs, A/ and B/ (default: rscc's examples/levir_cc)")
    demo.add_argument("--device", default="cpu", type=torch_device, help="torch device, e.g. cpu, cuda")
    demo.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES), help="weights dtype")
    demo.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    demo.set_defaults(run=run_demo)

    space = subparsers.add_parser(
        "space",
        help=command_help("space"),
        description="Write a Gradio Space folder in --out for the published model MODEL (USER/NAME): app.py, "
        "README.md with the Space metadata (the installed gradio), requirements.txt with rscc's requirements "
        "pinned to the installed releases, the rscc package and the example pairs. With --repo-id, upload it as that "
        "Space (log in first). Exit codes: 0 done; 2 bad input; 4 the Hub refused or could not be reached (the "
        "folder is kept).",
    )
    space.add_argument("model", metavar="MODEL", help="the published model's Hub id, USER/NAME")
    space.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    space.add_argument("--repo-id", help="upload the folder as this Space, USER/NAME")
    space.add_argument("--title", help="the Space's title")
    space.add_argument("--examples", help="folder of example pairs, A/ and B/ (default: rscc's examples/levir_cc)")
    space.set_defaults(run=run_space)
