"""The change-captioning demo: a Gradio page for `rscc demo`, and the Hub Space folder `rscc space` writes.

    rscc demo [--model M] [--port P] [--host H] [--share]
    rscc space MODEL --out DIR [--repo-id USER/NAME]

The page takes a before and an after image file (PNG, JPEG, TIFF including 16-bit and GeoTIFF: the readers of
`rscc caption`), and optionally a change mask for the model's token filter; it shows the caption and, for a model with
a change-detection head, the predicted mask drawn over the after image with the changed fraction. Bad input is a
message in the page naming the input, never a traceback. The page loads nothing from the internet (no analytics, no
web fonts), so it works on a closed network. A Space's `app.py` calls `launch_demo`, the function `rscc demo` runs.
"""

import contextlib
import importlib.metadata
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from .batch import IMAGE_SUFFIXES
from .errors import HubUnreachableError, RsccInputError
from .captioning import DEFAULT_MAX_NEW_TOKENS, describe_changes, uses_input_masks
from .loading import DEFAULT_MODEL, DTYPES, load_captioner
from .output_files import staged_folder
from . import image_processing_rscc, processing_rscc
from .processing_rscc import load_image

logger = logging.getLogger(__name__)

IMAGE_FILE_TYPES = list(IMAGE_SUFFIXES)  # gradio takes a list
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "levir_cc"  # in a source checkout
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)
OVERLAY_OPACITY = 0.55
# gradio's share links are tunnels through this server (huggingface.co runs it).
SHARE_SERVER = ("api.gradio.app", 443)
# The system's fonts: gradio's default theme fetches its fonts from Google Fonts, which a closed network lacks.
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONOSPACE_FONTS = ["ui-monospace", "monospace"]


class DemoInputError(RsccInputError):
    """An option of `rscc demo` or `rscc space` (examples folder, output folder, repo id) is not as expected."""


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports to gradio's servers
    try:
        import gradio
    except ImportError:
        raise DemoInputError(
            'the demo needs gradio, which is not installed: pip install "rscc[demo]" (see README, Demo)'
        ) from None
    return gradio


def examples_or_own(folder: str | os.PathLike | None) -> str | os.PathLike | None:
    """`folder`, or by default rscc's own examples when it is installed with them."""
    return folder if folder is not None else (EXAMPLES if EXAMPLES.is_dir() else None)


def example_pairs(folder: str | os.PathLike | None) -> list[list[str]]:
    """The `[before, after]` pairs of an examples folder in LEVIR-CC's layout (`A/`, `B/`, same file names).

    Args:
        folder (`str` or `os.PathLike`, *optional*): the folder; none gives no examples.
    """
    if folder is None:
        return []
    folder = Path(folder)
    if not (folder / "A").is_dir() or not (folder / "B").is_dir():
        raise DemoInputError(f"--examples {folder}: expected a folder with A/ (before) and B/ (after) images")
    names = sorted(path.name for path in (folder / "A").iterdir() if path.suffix.lower() in IMAGE_FILE_TYPES)
    return [[str(folder / "A" / name), str(folder / "B" / name)] for name in names if (folder / "B" / name).is_file()]


def overlay_mask(image: Image.Image, change_mask: np.ndarray) -> np.ndarray:
    """`image` with the changed pixels of `change_mask` (class ids, 0 no change) tinted red, as an RGB array.

    Args:
        image (`Image.Image`): the after image, RGB.
        change_mask (`np.ndarray` of shape `(height, width)`): the predicted classes, at the before image's size.
    """
    changed = np.asarray(Image.fromarray((change_mask > 0).astype(np.uint8) * 255).resize(image.size,
                                                                                      Image.Resampling.NEAREST)) > 0
    pixels = np.asarray(image, dtype=np.float32)
    pixels[changed] = (1 - OVERLAY_OPACITY) * pixels[changed] + OVERLAY_OPACITY * OVERLAY_COLOUR
    return pixels.round().astype(np.uint8)


class _Collected(logging.Handler):
    def __init__(self, messages: list):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _warnings_of_the_processor() -> Iterator[list]:
    """The processor's warnings about the inputs during the block (e.g. a mask resized to its images), for the page:
    a terminal shows them, a browser would not."""
    messages = []
    handler = _Collected(messages)
    loggers = [logging.getLogger(module.logger.name) for module in (processing_rscc, image_processing_rscc)]
    for processor_logger in loggers:
        processor_logger.addHandler(handler)
    try:
        yield messages
    finally:
        for processor_logger in loggers:
            processor_logger.removeHandler(handler)


class Captioner:
    """A loaded model and what the page does with it.

    Args:
        model: an rscc (or LLaVA-OneVision) model in eval mode.
        processor ([`RsccProcessor`]).
        name (`str`): the model's Hub id or folder, shown in the page.
        max_new_tokens (`int`): caption length limit.
    """

    def __init__(self, model, processor, name: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        self.model, self.processor, self.name, self.max_new_tokens = model, processor, name, max_new_tokens
        self.has_change_head = bool(getattr(model.config, "use_change_head", False))
        self.takes_masks = uses_input_masks(model.config)

    def describe(self, before: str | None, after: str | None, mask: str | None = None):
        """Caption one uploaded pair.

        Returns:
            `(caption, overlay, changed, message)`: the caption, the after image with the predicted mask drawn over it
            (None without a change head), the changed fraction in words, and a message for the page: an error (the
            other values are then empty), the processor's warnings about the inputs (a mask resized to its images),
            or empty.
        """
        try:
            with _warnings_of_the_processor() as warned:
                caption, overlay, changed = self._describe(before, after, mask)
            notes = "\n\n".join(f"**Note:** {_without_upload_folders(text, before, after, mask)}" for text in warned)
            return caption, overlay, changed, notes
        except RsccInputError as error:
            return "", None, "", f"**Error:** {_without_upload_folders(str(error), before, after, mask)}"
        except Exception as error:  # the page shows a sentence, the server's log the traceback
            logger.exception("captioning failed")
            return "", None, "", f"**Error:** rscc could not caption this pair ({type(error).__name__}: {error})"

    def _describe(self, before, after, mask):
        missing = [name for name, path in (("before", before), ("after", after)) if not path]
        if missing:
            raise RsccInputError(f"upload the {' and the '.join(missing)} image")
        after_image = load_image(after, name="AFTER")
        pair = [load_image(before, name="BEFORE"), after_image]
        if mask and not self.takes_masks:
            raise RsccInputError(f"change mask: the model {self.name} has no token filter that takes a change mask; "
                                 "leave the mask out")
        (description,) = describe_changes(self.model, self.processor, [pair], change_masks=[mask] if mask else None,
                                          max_new_tokens=self.max_new_tokens)
        if description.change_mask is None:
            return description.caption, None, "this model has no change-detection head"
        changed = f"changed fraction: {description.changed_fraction:.4f}"
        return description.caption, overlay_mask(after_image, description.change_mask), changed

    def preview(self, path: str | None, name: str):
        """An uploaded image as the model sees it (16-bit stretched to 8 bits) and, when it cannot be read, a message
        naming the problem; `None` for the message otherwise (the page keeps what it shows: a preview of one input
        must not clear the message about the other)."""
        if not path:
            return None, None
        try:
            return np.asarray(load_image(path, name=name)), None
        except RsccInputError as error:
            return None, f"**Error:** {_without_upload_folders(str(error), path)}"


def _page_update(gr, preview, message):
    return preview, gr.update() if message is None else message


def _without_upload_folders(message: str, *paths: str | None) -> str:
    """A message with gradio's upload folders left out of the paths it names: the file name is what the user knows."""
    for path in paths:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message


def build_demo(captioner: Captioner, examples: list[list[str]] = ()):
    """The Gradio page of a captioner.

    Args:
        captioner ([`Captioner`]).
        examples (`list[list[str]]`): `[before, after]` file pairs offered below the inputs; a click captions one.

    Returns:
        `gradio.Blocks`.
    """
    gr = _import_gradio()
    with gr.Blocks(title="rscc: remote-sensing change captioning", analytics_enabled=False) as demo:
        gr.Markdown(f"# Remote-sensing change captioning\nModel: `{captioner.name}`. Upload two images of the same "
                    "area, before and after (PNG, JPEG, TIFF including 16-bit and GeoTIFF), and press Describe.")
        with gr.Row():
            before = gr.File(label="Before", file_types=IMAGE_FILE_TYPES, elem_id="rscc-before")
            after = gr.File(label="After", file_types=IMAGE_FILE_TYPES, elem_id="rscc-after")
            mask = gr.File(label="Change mask (optional, for the token filter)", file_types=IMAGE_FILE_TYPES,
                           elem_id="rscc-mask", visible=captioner.takes_masks)
        with gr.Row():
            before_preview = gr.Image(label="Before, as the model sees it", interactive=False, height=256,
                                      elem_id="rscc-before-preview")
            after_preview = gr.Image(label="After, as the model sees it", interactive=False, height=256,
                                     elem_id="rscc-after-preview")
        message = gr.Markdown(elem_id="rscc-message")
        submit = gr.Button("Describe the change", variant="primary", elem_id="rscc-submit")
        caption = gr.Textbox(label="Caption", interactive=False, elem_id="rscc-caption")
        with gr.Row(visible=captioner.has_change_head):
            overlay = gr.Image(label="Predicted change over the after image", interactive=False, format="png",
                               elem_id="rscc-overlay", height=320)
            changed = gr.Textbox(label="Changed", interactive=False, elem_id="rscc-changed")
        for upload, preview, name in ((before, before_preview, "BEFORE"), (after, after_preview, "AFTER")):
            upload.change(lambda path, name=name: _page_update(gr, *captioner.preview(path, name)), upload,
                          [preview, message])
        outputs = [caption, overlay, changed, message]
        submit.click(captioner.describe, [before, after, mask], outputs)
        if examples:
            gr.Examples(examples=[list(pair) for pair in examples], inputs=[before, after],
                        fn=lambda before_path, after_path: captioner.describe(before_path, after_path),
                        outputs=outputs, run_on_click=True, cache_examples=False, label="Example pairs (LEVIR-CC)")
    return demo


def _check_share_server(timeout: float = 5.0) -> None:
    try:
        socket.create_connection(SHARE_SERVER, timeout=timeout).close()
    except OSError as error:
        raise HubUnreachableError(
            f"--share needs the internet: gradio's share server {SHARE_SERVER[0]} cannot be reached ({error}); "
            "serve on the local network instead with --host 0.0.0.0"
        ) from None


def launch_demo(
    model: str = DEFAULT_MODEL,
    examples: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> None:
    """Load `model` and serve its page until interrupted: `rscc demo`, and a Space's `app.py`.

    Args:
        model (`str`): Hub id or folder of an rscc (or LLaVA-OneVision) checkpoint.
        examples (`str` or `os.PathLike`, *optional*): a folder of example pairs (`A/`, `B/`).
        host (`str`): the address to listen on (`0.0.0.0` for the local network; a Space sets its own).
        port (`int`, *optional*): the port; by default gradio's (7860, or `GRADIO_SERVER_PORT`).
        share (`bool`): also open a public link through gradio's share server (needs the internet).
        device (`str`): torch device.
        dtype (`str`): weights dtype, a key of `rscc.loading.DTYPES`.
        max_new_tokens (`int`): caption length limit.
    """
    gr = _import_gradio()
    pairs = example_pairs(examples)
    if share:
        _check_share_server()
    loaded, processor = load_captioner(model, device=device, dtype=DTYPES[dtype])
    demo = build_demo(Captioner(loaded, processor, model, max_new_tokens), pairs)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONOSPACE_FONTS)
    demo.launch(server_name=host, server_port=port, share=share, theme=theme, ssr_mode=False, pwa=False,
                allowed_paths=[str(Path(examples).resolve())] if pairs else None, show_error=False,
                mcp_server=False)


# --- the Space folder ------------------------------------------------------------------------------------------------

SPACE_APP = '''"""rscc's change-captioning demo for {model} (a Hugging Face Space written by `rscc space`)."""

from rscc.demo import launch_demo

launch_demo({model!r}, examples="examples", host="0.0.0.0")
'''

SPACE_README = """---
title: {title}
emoji: 🛰️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {gradio}
app_file: app.py
pinned: false
license: apache-2.0
models:
- {model}
tags:
- rscc
- remote-sensing
- change-captioning
---

# {title}

Describe the change between two remote-sensing images of the same area with [{model}](https://huggingface.co/{model}):
upload a before and an after image (PNG, JPEG, TIFF including 16-bit and GeoTIFF) and read the caption; a model with a
change-detection head also draws the changed pixels over the after image. The example pairs are from LEVIR-CC (Liu et
al., TGRS 2022; academic use).

Written by `rscc space` (rscc {rscc}); `requirements.txt` pins the versions rscc was tested on, and `rscc/` is the rscc
package that wrote it.
"""


def _release(name: str) -> str:
    # A local build's label (torch's `+cpu`) names no release a Space can install.
    return Version(importlib.metadata.version(name)).public


def space_gradio_version() -> str:
    """The gradio release a Space's SDK runs: the installed one (where the demo was tried), else `rscc[demo]`'s floor."""
    try:
        return _release("gradio")
    except importlib.metadata.PackageNotFoundError:
        demo_extra = [Requirement(line) for line in importlib.metadata.requires("rscc") or [] if 'extra == "demo"' in line]
        return next(spec.version for spec in demo_extra[0].specifier if spec.operator == ">=")


def space_requirements() -> list[str]:
    """The Space's pip requirements: rscc's own, each pinned to the release installed here, so the Space runs what
    was tried here. gradio is not among them: the Space's SDK installs it at the README's `sdk_version`."""
    names = [Requirement(line).name for line in importlib.metadata.requires("rscc") or [] if "extra ==" not in line]
    return [f"{name}=={_release(name)}" for name in names]


def write_space(model: str, out: str | os.PathLike, examples: str | os.PathLike | None = None,
                title: str | None = None) -> Path:
    """Write a Hub Space folder that serves the demo of a published model.

    The folder holds `app.py` (calls [`launch_demo`] on `model`), `README.md` (the Space's metadata: the gradio SDK at
    the installed release, the model), `requirements.txt` (rscc's requirements at the installed releases), the
    `rscc` package itself (no released wheel to install) and `examples/` (the example pairs). Written to a temporary folder, then renamed.

    Args:
        model (`str`): the model's Hub id, `USER/NAME`.
        out (`str` or `os.PathLike`): the folder to create (absent or empty).
        examples (`str` or `os.PathLike`, *optional*): example pairs (`A/`, `B/`) to copy; by default rscc's own.
        title (`str`, *optional*): the Space's title; by default from the model's name.
    """
    from .hub import check_new_folder, check_repo_id

    check_repo_id(model)
    out = check_new_folder(out)
    pairs = example_pairs(examples_or_own(examples))
    with staged_folder(out) as temporary:
        (temporary / "app.py").write_text(SPACE_APP.format(model=model), encoding="utf-8")
        (temporary / "README.md").write_text(SPACE_README.format(
            title=title or f"{model.split('/')[-1]} change captioning", model=model, gradio=space_gradio_version(),
            rscc=importlib.metadata.version("rscc")), encoding="utf-8")
        (temporary / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
        shutil.copytree(Path(__file__).resolve().parent, temporary / "rscc",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for before, after in pairs:
            for side, path in (("A", before), ("B", after)):
                (temporary / "examples" / side).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, temporary / "examples" / side / Path(path).name)
    return out


__all__ = ["Captioner", "DemoInputError", "build_demo", "example_pairs", "launch_demo", "overlay_mask", "write_space"]
