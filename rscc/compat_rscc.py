"""The transformers releases rscc is tested on, and the few places where those releases differ.

rscc's remote-code files meet whatever transformers a Hub user has installed, so they declare the tested window and
check it on import (`configuration_rscc` and `processing_rscc` call `check_transformers_version`): below the floor a
clear ImportError, above the ceiling one warning. Every difference between
the releases in the window lives in this file; nothing else in rscc branches on the transformers version.
"""

import os
import re
import sys
import warnings

import torch
import transformers

# The window the test suite ran on: its floor and its ceiling (the newest release checked), both by `.ci/run`.
# Widening it is `bash .ci/test_transformers_version.sh X.Y.Z`, then this line. Releases are named by minor version:
# every patch release of a tested minor counts as tested. The install itself admits every release up to the next
# major (setup.cfg, TRANSFORMERS_REQUIREMENT): a newer minor release gets a warning at import, not a refusal.
TESTED_TRANSFORMERS = ("5.23", "5.25")
TRANSFORMERS_REQUIREMENT = f"transformers>={TESTED_TRANSFORMERS[0]},<{int(TESTED_TRANSFORMERS[1].split('.')[0]) + 1}"
_CEILING_MAJOR, _CEILING_MINOR = TESTED_TRANSFORMERS[1].split(".")
INSTALL_COMMAND = f'pip install "transformers>={TESTED_TRANSFORMERS[0]},<{_CEILING_MAJOR}.{int(_CEILING_MINOR) + 1}"'


def release_numbers(version: str) -> tuple[int, ...]:
    """`(major, minor, patch)` of a version string such as `5.24.0`, `5.25.0.dev0` or `5.24.0rc1`."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("rc")[0].split(".dev")[0])[:3])


def _is_import_machinery(filename: str) -> bool:
    # The frames `warnings.warn` itself leaves out when it counts `stacklevel`.
    return "importlib" in filename and "_bootstrap" in filename


def _stacklevel_of_first_outside_caller() -> int:
    """The `stacklevel` that makes a warning raised by this module's caller name the first frame outside rscc's
    files and transformers (which runs rscc's remote code): the user's `import rscc` or `from_pretrained` line."""
    inside = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(transformers.__file__)))
    frame, level = sys._getframe(2), 2
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_import_machinery(filename):
            if not os.path.abspath(filename).startswith(inside):
                return level
            level += 1
        frame = frame.f_back
    return level


def check_transformers_version(installed: str = transformers.__version__) -> None:
    """Refuse a transformers older than the tested floor; warn on one newer than the tested ceiling, at the line of
    the user's code that imported rscc.

    Raises:
        ImportError: naming the installed version, the tested window and the pip command that installs it.
    """
    floor, ceiling = (release_numbers(bound) for bound in TESTED_TRANSFORMERS)
    version = release_numbers(installed)
    if version[:2] < floor:
        raise ImportError(
            f"rscc needs transformers {TESTED_TRANSFORMERS[0]} or newer (tested on {TESTED_TRANSFORMERS[0]} to "
            f"{TESTED_TRANSFORMERS[1]}); transformers {installed} is installed. Run: {INSTALL_COMMAND}"
        )
    if version[:2] > ceiling[:2]:
        warnings.warn(
            f"rscc was tested with transformers {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}; transformers "
            f"{installed} is installed and may behave differently. If rscc fails, run: {INSTALL_COMMAND}",
            stacklevel=_stacklevel_of_first_outside_caller(),
        )


def given_cache(kwargs: dict):
    """The key-value cache a caller passed to `generate` or `forward`: `cache` from 5.24 on, `past_key_values` before
    (5.24 still accepts the old name, with a deprecation warning)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def image_features_seen(output) -> torch.Tensor | None:
    """The projected image features the language model received, `(num_image_tokens, text_hidden_size)`, from a
    LLaVA-OneVision (or rscc) model output: `image_hidden_states` up to 5.23, `image_outputs.pooler_output` from 5.24
    (a list of one tensor per image)."""
    if "image_outputs" in type(output).__dataclass_fields__:
        image_outputs = output.image_outputs
        if image_outputs is None:
            return None
        return torch.cat(list(image_outputs.pooler_output), dim=0)
    return output.image_hidden_states
