"""transformers' own model tests (`ModelTesterMixin`) for rscc, next to stock LLaVA-OneVision.

The mixin is not copied into this repository: the source distribution of the *installed* transformers version is
downloaded from PyPI with `pip download` (once per machine and version, cached under `$XDG_CACHE_HOME/rscc-tests/`,
`~/.cache/rscc-tests/` without it, or `$RSCC_TEST_CACHE`), and its top-level `tests/*.py` files are imported from there as the package
`transformers_common_tests`. The sdist ships only those top-level files: `tests/generation/` (the generation mixin),
`tests/exporters/` (the export mixin), `tests/utils/` and `tests/models/` are not in it. `test_modeling_common.py`
imports `ExportTesterMixin` and `GenerationTesterMixin` from the first two, so they are replaced by empty
classes: the export tests do not run, and what the generation tests cover is covered by our own
`tests/test_generation_parity.py` and `tests/test_generation_families.py` (docs/stock_parity.md lists which).

Variants, each run for the base model and the captioning model:

* `stock`: LLaVA-OneVision with inputs laid out like transformers' own tester (one image per sample, anyres
  patches); the reference counts.
* `stock_pairs`: LLaVA-OneVision on exactly the inputs the rscc variants get (two images per sample), so that a
  failure caused by that layout shows up for stock too.
* `rscc_diff`: rscc with the difference-integration module.
* `rscc_drop`: rscc with the difference module, a change head and `change_filter="drop"` on the head's predicted
  mask (`change_mask_source="predicted"`), so that samples keep different numbers of vision tokens.

Because the mixin must be a base class when this module is imported, the download runs when pytest collects this
file; when it fails (no network, no pip) the whole module is skipped with the reason. `parameterized`, which the
file imports, must be installed (the module is skipped, saying so, without it).

About a minute per transformers version on 2 idle cores (four classes of ~160 tests), hence the `slow` mark.
"""

import copy
import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.models.auto import modeling_auto

from rscc import RsccConfig, RsccForConditionalGeneration
from rscc.modeling_rscc import RsccModel

pytestmark = pytest.mark.slow

PACKAGE = "transformers_common_tests"
# The sdist's tests/ imports these from folders it does not ship; their mixins are replaced by empty classes.
STUBS = {
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stub: tests/exporters is not in the transformers sdist; the export tests do not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stub: tests/generation is not in the transformers sdist; rscc covers generation in '
        'tests/test_generation_parity.py."""\n\n\nclass GenerationTesterMixin:\n    pass\n'
    ),
}


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rscc-tests"
    return Path(os.environ.get("RSCC_TEST_CACHE", default))


def obtain_common_tests(version: str = transformers.__version__) -> Path:
    """The folder holding the package `transformers_common_tests` (the sdist's `tests/*.py` of `version`).

    Downloads `transformers==version`'s sdist with pip the first time; raises `RuntimeError` saying why on failure.
    """
    folder = cache_root() / f"transformers-{version}"
    package = folder / PACKAGE
    if (package / "test_modeling_common.py").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        command = [
            sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-deps",
            "--no-binary", ":all:", "--retries", "1", "--timeout", "30", "-d", scratch,
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"`{' '.join(command)}` did not run: {error}") from error
        archives = sorted(Path(scratch).glob("transformers-*.tar.gz"))
        if done.returncode or not archives:
            raise RuntimeError(
                f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
            )
        staging = Path(scratch) / PACKAGE
        staging.mkdir()
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                # Only the top-level tests/*.py files (the sdist has no test sub-folders).
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    (staging / parts[2]).write_bytes(archive.extractfile(member).read())
        if not (staging / "test_modeling_common.py").is_file():
            raise RuntimeError(f"{archives[0].name} has no tests/test_modeling_common.py")
        (staging / "__init__.py").write_text("")
        for name, text in STUBS.items():
            (staging / name).parent.mkdir(exist_ok=True)
            (staging / name).write_text(text)
        try:
            staging.rename(package)
        except OSError:
            if not (package / "test_modeling_common.py").is_file():  # (another process may have finished first)
                raise
    return folder


def import_common_tests():
    """`transformers_common_tests.test_modeling_common` of the installed transformers version."""
    folder = str(obtain_common_tests())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")


try:
    import parameterized  # noqa: F401  (test_modeling_common needs it)
except ImportError:
    pytest.skip("transformers' test_modeling_common needs `parameterized` (pip install parameterized)", allow_module_level=True)
try:
    with warnings.catch_warnings():
        # The file's marks (flash_attn_test, torch_compile_test, ...) are registered in transformers' conftest only.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        common = import_common_tests()
except Exception as error:  # noqa: BLE001  (any failure to obtain the file is a skip, with its reason)
    pytest.skip(f"transformers' tests/test_modeling_common.py is unavailable: {error}", allow_module_level=True)

ModelTesterMixin = common.ModelTesterMixin
floats_tensor, ids_tensor = common.floats_tensor, common.ids_tensor


@pytest.fixture(scope="session")
def transformers_common_tests():
    """The imported `test_modeling_common` module of the installed transformers version."""
    return common


def test_common_file_is_the_installed_version(transformers_common_tests):
    path = Path(transformers_common_tests.__file__)
    assert path.parent.parent.name == f"transformers-{transformers.__version__}"
    assert hasattr(transformers_common_tests, "ModelTesterMixin")


# --- model testers -------------------------------------------------------------------------------------------------

IMAGE_TOKEN = 1
PAD_TOKEN = 0
TEXT_CONFIG = {
    "model_type": "qwen2",
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "max_position_embeddings": 580,
    "initializer_range": 0.02,
    "pad_token_id": PAD_TOKEN,
}
VISION_CONFIG = {
    "model_type": "siglip_vision_model",
    "image_size": 16,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    # As in the llava-hf checkpoints: LLaVA-OneVision never reads SigLIP's pooling head.
    "vision_use_head": False,
}
RSCC_OPTIONS = {
    "rscc_diff": {"difference_feature_layers": [1, 2], "difference_num_heads": 4},
    "rscc_drop": {
        "difference_feature_layers": [1, 2],
        "difference_num_heads": 4,
        "use_change_head": True,
        "change_head_hidden_size": 16,
        "change_filter": "drop",
        "change_mask_source": "predicted",
        "change_filter_min_tokens": 4,
    },
}


class PairTester:
    """Tiny config and inputs for `ModelTesterMixin`: every sample holds two 16 px images (before, after), 4x4 vision
    tokens plus a newline token each, then text; `batch_num_images` is 2 for every sample."""

    batch_size = 3
    text_length = 7
    tokens_per_image = (VISION_CONFIG["image_size"] // VISION_CONFIG["patch_size"]) ** 2 + 1
    images_per_sample = 2
    is_training = True

    def __init__(self, parent, config_class=RsccConfig, **options):
        self.parent = parent
        self.config_class = config_class
        self.options = options
        self.num_image_tokens = self.images_per_sample * self.tokens_per_image
        self.seq_length = self.text_length + self.num_image_tokens
        self.vocab_size = TEXT_CONFIG["vocab_size"]
        self.hidden_size = TEXT_CONFIG["hidden_size"]
        self.num_hidden_layers = TEXT_CONFIG["num_hidden_layers"]
        self.num_attention_heads = TEXT_CONFIG["num_attention_heads"]
        self.pad_token_id = PAD_TOKEN

    def get_config(self):
        return self.config_class(
            text_config=dict(TEXT_CONFIG),
            vision_config=dict(VISION_CONFIG),
            image_token_index=IMAGE_TOKEN,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[16, 16]],
            **self.options,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        num_images = self.batch_size * self.images_per_sample
        size = VISION_CONFIG["image_size"]
        pixel_values = floats_tensor([num_images, 1, 3, size, size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[:, : self.num_image_tokens] = IMAGE_TOKEN
        inputs = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor([[size, size]] * num_images),
            "batch_num_images": torch.tensor([self.images_per_sample] * self.batch_size),
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
        }
        return config, inputs


class StockTester(PairTester):
    """The layout of transformers' own LLaVA-OneVision tester: one image per sample, a 45x45 image in anyres patches
    (base view plus the high-resolution patches of the 16x16 pinpoint), no `batch_num_images`."""

    images_per_sample = 1
    num_patches = 2

    def __init__(self, parent):
        super().__init__(parent, config_class=LlavaOnevisionConfig)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        size = VISION_CONFIG["image_size"]
        pixel_values = floats_tensor([self.batch_size, self.num_patches, 3, size, size])
        image_sizes = torch.tensor([[45, 45]] * self.batch_size)
        # Count the image tokens the model computes for this layout rather than assume the anyres arithmetic.
        with torch.no_grad():
            # (a copy: building a model sets the config's attention implementation)
            features = LlavaOnevisionModel(copy.deepcopy(config)).get_image_features(pixel_values[:1], image_sizes[:1]).pooler_output
        self.num_image_tokens = features[0].shape[0]
        self.seq_length = self.text_length + self.num_image_tokens
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[:, : self.num_image_tokens] = IMAGE_TOKEN
        inputs = {
            "pixel_values": pixel_values,
            "image_sizes": image_sizes,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
        }
        return config, inputs


# --- the test classes ----------------------------------------------------------------------------------------------


class CommonTests(ModelTesterMixin):
    """What transformers' own LLaVA-OneVision test class overrides, for every variant alike."""

    _is_composite = True
    test_pruning = False
    test_head_masking = False
    test_resize_embeddings = True

    # transformers' auto-class name tables (`MODEL_MAPPING_NAMES`, ...) under which the mixin finds this model's
    # classes: several tests pick "the base model" or "the image-text-to-text model" by name from them (and skip, or
    # train the base model as if it had a loss, when it is not listed). Only in-library models are in them, so the
    # rscc classes are added for the duration of each test, as transformers lists stock LLaVA-OneVision's.
    auto_names = {}

    def make_tester(self):
        raise NotImplementedError

    def setUp(self):
        self.model_tester = self.make_tester()
        for table, class_name in self.auto_names.items():
            patcher = mock.patch.dict(getattr(modeling_auto, table), {"rscc": class_name})
            patcher.start()
            self.addCleanup(patcher.stop)

    # The same override as transformers' LLaVA-OneVision test: vision-language models take `inputs_embeds` without
    # `pixel_values` (embedding placeholders instead of merged image features).
    def test_inputs_embeds(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            input_ids = inputs.pop("input_ids")
            inputs.pop("pixel_values")
            inputs["inputs_embeds"] = model.get_input_embeddings()(input_ids)
            with torch.no_grad():
                model(**inputs)

    def test_inputs_embeds_matches_input_ids(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            input_ids = inputs.pop("input_ids")
            inputs.pop("pixel_values")
            inputs_embeds = model.get_input_embeddings()(input_ids)
            with torch.no_grad():
                out_ids = model(input_ids=input_ids, **inputs)[0]
                out_embeds = model(inputs_embeds=inputs_embeds, **inputs)[0]
            torch.testing.assert_close(out_embeds, out_ids)

    # transformers' LLaVA-OneVision test: with initializer ranges zeroed, every trainable weight outside the vision
    # tower (SigLIP initialises its own way) and the image newline is initialised to a constant 0 or 1.
    def test_initialization(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        configs_no_init = common._config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=configs_no_init)
            for name, param in model.named_parameters():
                if "image_newline" in name or "vision_tower" in name or not param.requires_grad:
                    continue
                mean = ((param.data.mean() * 1e9).round() / 1e9).item()
                self.assertIn(mean, [0.0, 1.0], msg=f"{name} of {model_class.__name__}")

    # Skips of transformers' own LLaVA-OneVision test, with its reasons.
    @unittest.skip("stock skips it: SigLIP does not compute gradients properly with gradient checkpointing")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip("stock skips it: SigLIP does not compute gradients properly with gradient checkpointing")
    def test_training_gradient_checkpointing_use_reentrant(self):
        pass

    @unittest.skip("stock skips it: SigLIP does not compute gradients properly with gradient checkpointing")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip("as the three above (a name stock's skips predate): SigLIP's post_layernorm, unused, gets no gradient")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass

    @unittest.skip("stock skips it: FlashAttention only supports fp16 and bf16")
    def test_flash_attn_2_fp32_ln(self):
        pass

    @unittest.skip("stock skips it: VLM inputs need many steps to be made padding-free; tested in the LLM's tests")
    def test_flash_attention_2_padding_matches_padding_free_with_position_ids(self):
        pass

    @unittest.skip(
        "the GenerationTesterMixin lives in tests/generation/, outside the sdist; tests/test_stock_parity.py checks "
        "that GenerationMixin is a direct base, tests/test_generation_parity.py and test_generation_families.py "
        "cover generation"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass


class StockLlavaOnevisionTest(CommonTests, unittest.TestCase):
    all_model_classes = (LlavaOnevisionModel, LlavaOnevisionForConditionalGeneration)
    # anyres: the vision tower's batch is the images' patches (2 per image here; as video frames, likewise), not the
    # samples the mixin counts
    skip_test_image_features_output_shape = True
    skip_test_video_features_output_shape = True

    def make_tester(self):
        return StockTester(self)


class PairLayoutTests(CommonTests):
    """Tests whose assertions assume one image per sample: they fail for stock LLaVA-OneVision on pair inputs too."""

    @unittest.skip("asserts one pooler_output entry per sample (one image each); pair inputs hold two per sample")
    def test_get_image_features_pooler_output(self):
        pass

    @unittest.skip("feeds the images as videos and asserts one pooler_output entry per sample; pairs hold two")
    def test_get_video_features_output_0(self):
        pass

    @unittest.skip("feeds the images as videos and asserts one pooler_output entry per sample; pairs hold two")
    def test_get_video_features_output_2(self):
        pass

    @unittest.skip("feeds the images as videos and asserts one pooler_output entry per sample; pairs hold two")
    def test_get_video_features_pooler_output(self):
        pass

    @unittest.skip("asserts one image_outputs.pooler_output entry per sample (one image each); pairs hold two")
    def test_multimodal_outputs_are_returned(self):
        pass


class RsccTests(PairLayoutTests):
    all_model_classes = (RsccModel, RsccForConditionalGeneration)
    auto_names = {
        "MODEL_MAPPING_NAMES": "RsccModel",
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "RsccForConditionalGeneration",
    }
    # The mixin dates a model by the copyright line of its configuration file and skips this test for models older
    # than 2023; rscc's file has no such line, so it would count as oldest.
    test_can_init_all_missing_weights_before_2023 = True


class StockLlavaOnevisionPairsTest(PairLayoutTests, unittest.TestCase):
    all_model_classes = (LlavaOnevisionModel, LlavaOnevisionForConditionalGeneration)

    def make_tester(self):
        return PairTester(self, config_class=LlavaOnevisionConfig)


class RsccDifferenceTest(RsccTests, unittest.TestCase):
    def make_tester(self):
        return PairTester(self, **RSCC_OPTIONS["rscc_diff"])


class RsccDropTest(RsccTests, unittest.TestCase):
    def make_tester(self):
        return PairTester(self, **RSCC_OPTIONS["rscc_drop"])

    @unittest.skip("drop shortens the language model's sequence by design, so it has fewer attention positions")
    def test_attention_outputs(self):
        pass

    @unittest.skip("drop shortens the language model's sequence by design, so its hidden states are shorter")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(
        "drop packs each sample to its own kept length: a batched row is the single row plus padding, placed as "
        "kept_positions says, not a prefix slice (tests/test_masks.py checks batched equals one-by-one)"
    )
    def test_batching_equivalence(self):
        pass
