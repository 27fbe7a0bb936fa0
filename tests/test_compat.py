"""The tested transformers window, and every transformers name rscc relies on that is not a documented public API.

Each test in the second half pins one such name: when a release renames or changes it, the failure names it, so the
port starts from the message rather than from a traceback deep in a forward pass.
"""

import configparser
import inspect
import os
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import LlavaOnevisionModel

from rscc.tiny_checkpoints import build_tiny_tokenizer, tiny_config
from rscc.compat_rscc import (
    INSTALL_COMMAND,
    TESTED_TRANSFORMERS,
    TRANSFORMERS_REQUIREMENT,
    check_transformers_version,
    release_numbers,
)
from rscc.modeling_rscc import RsccForConditionalGeneration

from conftest import REPO_ROOT


def test_a_release_below_the_floor_is_refused_with_the_window_and_the_command():
    with pytest.raises(ImportError) as error:
        check_transformers_version("5.22.2")
    message = str(error.value)
    assert "5.22.2" in message and TESTED_TRANSFORMERS[0] in message and TESTED_TRANSFORMERS[1] in message
    assert INSTALL_COMMAND in message


def test_a_release_above_the_ceiling_warns_once_and_releases_inside_are_silent():
    major, minor = release_numbers(TESTED_TRANSFORMERS[1])[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_transformers_version(f"{major}.{minor}.3")
        check_transformers_version(f"{TESTED_TRANSFORMERS[0]}.0")
        assert not caught
        check_transformers_version(f"{major}.{minor + 1}.0.dev0")
    assert len(caught) == 1 and f"{major}.{minor + 1}.0.dev0" in str(caught[0].message)


def test_setup_cfg_declares_the_tested_window():
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    requirements = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()]
    assert TRANSFORMERS_REQUIREMENT in requirements, f"setup.cfg and rscc/compat_rscc.py disagree: {requirements}"


def _declared_requirements():
    sys.path.insert(0, str(REPO_ROOT / ".ci"))
    try:
        from floor_constraints import declared_requirements
    finally:
        sys.path.remove(str(REPO_ROOT / ".ci"))
    return declared_requirements(REPO_ROOT / "setup.cfg")


def _is_a_major_release_above(ceiling, floor) -> bool:
    return len(ceiling.release) == 1 and ceiling.major > floor.major


def test_every_requirement_has_a_floor_and_a_ceiling_only_at_a_major_release():
    """A library is installed beside what users already have: each requirement admits every release from the floor
    CI tests up to a major release (`<N`: 0.x up to 1.0; pillow <14 as 13 was tested too). A tighter ceiling needs a named break: a comment line in
    setup.cfg right above it that names the release and what broke."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    setup_lines = (REPO_ROOT / "setup.cfg").read_text().splitlines()
    declared = {str(requirement) for requirement in _declared_requirements()}
    too_tight, checked = [], set()
    for number, line in enumerate(setup_lines):
        try:
            requirement = Requirement(line.strip())
        except InvalidRequirement:
            continue
        if str(requirement) not in declared:
            continue
        checked.add(str(requirement))
        floor = next(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")
        for spec in requirement.specifier:
            named_break = setup_lines[number - 1].strip().startswith("#")
            if spec.operator in ("==", "<=", "~=", "===") or (
                spec.operator == "<" and not _is_a_major_release_above(Version(spec.version), floor) and not named_break
            ):
                too_tight.append(line.strip())
    assert checked == declared, f"requirements not found line by line in setup.cfg: {declared - checked}"
    assert not too_tight, f"setup.cfg ceilings below the next major release, with no comment naming the break: {too_tight}"


def test_the_floor_constraints_pin_every_requirement_at_its_lower_bound():
    sys.path.insert(0, str(REPO_ROOT / ".ci"))
    try:
        from floor_constraints import floor_pins
    finally:
        sys.path.remove(str(REPO_ROOT / ".ci"))
    requirements = _declared_requirements()
    pins = dict(pin.split("==") for pin in floor_pins(requirements))
    assert pins["transformers"] == TESTED_TRANSFORMERS[0] and pins["torch"].startswith("2.13")
    for requirement in requirements:
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (requirement, pins)


def test_the_demo_and_test_extras_hold_gradio_and_the_test_extra_holds_every_other_extra():
    """`pip install -e ".[test]"` is one resolution with the demo and training stacks (README, Set up)."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    extras = {name: {line.strip() for line in value.splitlines() if line.strip()}
              for name, value in setup["options.extras_require"].items()}
    assert any(line.startswith("gradio") for line in extras["demo"])
    assert any(line.startswith("deepspeed") for line in extras["train"])
    missing = {name: lines - extras["test"] for name, lines in extras.items() if name != "test" and lines - extras["test"]}
    assert not missing, f"setup.cfg: the test extra lacks {missing}"


def test_the_warning_about_a_newer_transformers_points_at_the_users_import(tmp_path):
    """The warning names the line of the user's code that imported rscc, not a line inside rscc."""
    script = tmp_path / "user_script.py"
    script.write_text(
        "import warnings\n"
        "import transformers\n"
        "import transformers.image_processing_utils, transformers.models, transformers.processing_utils\n"
        "transformers.__version__ = '5.999.0'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import rscc\n"
        "print([(w.filename, w.lineno) for w in caught if 'tested with' in str(w.message)])\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                            env={**os.environ, "RSCC_LAZY_IMPORT": "0"})
    assert result.stdout.strip() == str([(str(script), 7)]), result.stdout + result.stderr


# --- transformers names that are not documented public API --------------------------------------------------------


def test_pinned_checkpoint_conversion_mapping():
    """`transformers.conversion_mapping.{get,register}_checkpoint_conversion_mapping`: rscc registers LLaVA-OneVision's
    key renaming for its model type and for `RsccModel`, so rscc checkpoints use the stock (legacy) key layout."""
    from transformers import conversion_mapping

    for name in ("get_checkpoint_conversion_mapping", "register_checkpoint_conversion_mapping"):
        assert hasattr(conversion_mapping, name), f"transformers.conversion_mapping.{name} is gone"
    for key in ("llava_onevision", "LlavaOnevisionModel", "rscc", "RsccModel"):
        assert conversion_mapping.get_checkpoint_conversion_mapping(key), f"no conversion mapping for {key!r}"


def test_pinned_pack_image_features_signature():
    """`LlavaOnevisionModel.pack_image_features(image_features, image_sizes, image_newline, vision_aspect_ratio)`
    appends each image's newline token after rscc's own projection."""
    parameters = list(inspect.signature(LlavaOnevisionModel.pack_image_features).parameters)
    assert parameters[:5] == ["self", "image_features", "image_sizes", "image_newline", "vision_aspect_ratio"], (
        f"LlavaOnevisionModel.pack_image_features changed: {parameters}"
    )


def test_pinned_forward_accepts_mm_encoder_outputs():
    """`mm_encoder_outputs` (transformers >= 5.18): rscc hands LLaVA-OneVision the features of the kept tokens."""
    assert "mm_encoder_outputs" in inspect.signature(LlavaOnevisionModel.forward).parameters, (
        "LlavaOnevisionModel.forward no longer takes mm_encoder_outputs"
    )


def test_pinned_vision_tower_selects_hidden_states_by_index():
    """`vision_tower(..., output_hidden_states=[i, ...])`: rscc asks for the levels it reads by index."""
    config = tiny_config(build_tiny_tokenizer())
    model = RsccForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    with torch.no_grad():
        output = model.model.vision_tower(torch.zeros(1, 3, size, size), output_hidden_states=[-1, -3])
    assert output.hidden_states is not None and output.hidden_states[-1].shape[1] == config.vision_grid_size**2, (
        "the vision tower no longer returns hidden states for output_hidden_states=[...]"
    )


def test_pinned_vision_encoder_layers_and_their_hooked_outputs():
    """`vision_tower.encoder.layers[i]` returns its hidden states and a forward hook's return replaces them in what
    follows and in the recorded `hidden_states`: the bi-temporal filter hooks there."""
    config = tiny_config(build_tiny_tokenizer(), bitemporal_filter_layers=[2])
    model = RsccForConditionalGeneration(config).eval()
    layers = model.model.vision_tower.encoder.layers
    assert len(layers) == config.vision_config.num_hidden_layers, "SiglipVisionModel.encoder.layers moved"
    size = config.vision_config.image_size
    shift = layers[1].register_forward_hook(lambda module, args, output: output + 1.0)
    with torch.no_grad():
        pixels = torch.zeros(2, 3, size, size)
        hooked = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        shift.remove()
        plain = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hooked[2], plain[2] + 1.0)


def test_pinned_is_custom_code():
    """`PreTrainedModel.is_custom_code`: rscc answers False so that missing weights initialise as in `__init__`
    (transformers' custom-code shortcut skips SigLIP's parameter-less attention and MLP modules)."""
    from transformers import PreTrainedModel

    assert callable(getattr(PreTrainedModel, "is_custom_code", None)), "PreTrainedModel.is_custom_code is gone"
    assert RsccForConditionalGeneration.is_custom_code() is False


def test_pinned_attn_implementation_and_init_weights():
    """`config._attn_implementation` (read by the difference module's attention) and
    `PreTrainedModel._init_weights` (extended for the new modules) are transformers' extension points."""
    config = tiny_config(build_tiny_tokenizer())
    model = RsccForConditionalGeneration(config)
    assert model.config._attn_implementation in ("sdpa", "eager"), "config._attn_implementation changed meaning"
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", "set_attn_implementation no longer sets the top config"
    assert torch.count_nonzero(model.model.difference_module.role_embedding) > 0, "_init_weights was not called"
    assert not torch.count_nonzero(model.model.difference_module.output_scale), "output_scale must start at zero"


@pytest.mark.parametrize(
    "module, name, use",
    [
        ("transformers.models.llava_onevision.modeling_llava_onevision", "LlavaOnevisionModelOutputWithPast",
         "base of RsccModelOutputWithPast"),
        ("transformers.models.llava_onevision.modeling_llava_onevision", "LlavaOnevisionCausalLMOutputWithPast",
         "base of RsccCausalLMOutputWithPast"),
        ("transformers.models.llava_onevision.modeling_llava_onevision", "LlavaOnevisionPreTrainedModel",
         "base of RsccPreTrainedModel"),
        ("transformers.modeling_layers", "GradientCheckpointingLayer", "base of the change-aware block"),
        ("transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS", "the difference module's attention kernels"),
        ("transformers.utils.generic", "can_return_tuple", "return_dict=False support of rscc's forwards"),
    ],
)
def test_pinned_import_locations(module, name, use):
    imported = __import__(module, fromlist=[name])
    assert hasattr(imported, name), f"{module}.{name} ({use}) is gone"
