"""A saved folder must load and generate through the Auto classes in a process where rscc cannot be imported."""

import json
import os
import subprocess
import sys

import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

import rscc

# Every script run without rscc starts with this: importing rscc fails, as on a machine without it.
HIDE_RSCC = r"""
import importlib.abc, json, sys
import torch

class HideRscc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rscc" or name.startswith("rscc."):
            raise ImportError("rscc is hidden in this process")

sys.meta_path.insert(0, HideRscc())
from transformers import AutoImageProcessor, AutoModel, AutoProcessor
"""

HIDE_RSCC_AND_GENERATE = HIDE_RSCC + r"""

folder, before, after = sys.argv[1:4]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=[[before, after], [after, before]])
captions = processor.post_process_captions(model.generate(**inputs, max_new_tokens=4, do_sample=False), inputs)
print(json.dumps({"model": type(model).__module__ + "." + type(model).__name__,
                  "processor": type(processor).__name__, "captions": captions,
                  "rscc_imported": any(m == "rscc" or m.startswith("rscc.") for m in sys.modules)}))
"""


def run_without_rscc(script: str, arguments: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run a HIDE_RSCC script offline, with an empty Hugging Face cache of its own."""
    return subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")},
        timeout=300,
    )


def test_saved_folder_carries_remote_code_and_auto_map(tiny_checkpoint):
    files = set(os.listdir(tiny_checkpoint))
    assert {"configuration_rscc.py", "modeling_rscc.py", "processing_rscc.py", "compat_rscc.py",
            "model.safetensors"} <= files
    auto_map = json.loads((tiny_checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_rscc.RsccConfig",
        "AutoModel": "modeling_rscc.RsccForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_rscc.RsccForConditionalGeneration",
    }
    processor_map = json.loads((tiny_checkpoint / "processor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoProcessor": "processing_rscc.RsccProcessor"}


def test_remote_code_loads_and_generates_without_rscc(tiny_checkpoint, example_pairs, tmp_path):
    result = run_without_rscc(HIDE_RSCC_AND_GENERATE, [str(tiny_checkpoint), *example_pairs[0]], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.") and report["model"].endswith(
        "modeling_rscc.RsccForConditionalGeneration"
    )
    assert report["processor"] == "RsccProcessor"
    assert len(report["captions"]) == 2 and not report["rscc_imported"]


REMOTE_LOGITS = HIDE_RSCC + r"""

folder, before, after, out = sys.argv[1:5]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    torch.save(model(**processor(images=[[before, after]])).logits, out)
"""


def test_remote_code_computes_the_installed_models_logits(tiny_checkpoint, tiny_model, tiny_processor, example_pairs,
                                                          tmp_path):
    out = tmp_path / "logits.pt"
    result = run_without_rscc(REMOTE_LOGITS, [str(tiny_checkpoint), *example_pairs[0], str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = tiny_model(**tiny_processor(images=[example_pairs[0]])).logits
    assert (torch.load(out) - expected).abs().max().item() <= 1e-5


def test_installed_package_registers_auto_classes(tiny_checkpoint):
    assert isinstance(AutoConfig.from_pretrained(tiny_checkpoint), rscc.RsccConfig)
    assert type(AutoModel.from_pretrained(tiny_checkpoint)) is rscc.RsccForConditionalGeneration
    assert type(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)) is rscc.RsccForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(tiny_checkpoint)) is rscc.RsccProcessor


HIDE_RSCC_AND_LOAD_IMAGE_PROCESSOR = HIDE_RSCC + r"""

folder = sys.argv[1]
image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
print(json.dumps({"image_processor": type(image_processor).__module__ + "." + type(image_processor).__name__,
                  "processor_holds": type(processor.image_processor).__name__,
                  "num_change_classes": image_processor.num_change_classes}))
"""


def test_image_processor_is_saved_as_remote_code_and_loads_without_rscc(tiny_checkpoint, tmp_path):
    image_processor_map = json.loads((tiny_checkpoint / "processor_config.json").read_text())["image_processor"]
    assert image_processor_map["auto_map"]["AutoImageProcessor"] == "image_processing_rscc.RsccImageProcessor"
    result = run_without_rscc(HIDE_RSCC_AND_LOAD_IMAGE_PROCESSOR, [str(tiny_checkpoint)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["image_processor"].startswith("transformers_modules.")
    assert report["image_processor"].endswith("processing_rscc.RsccImageProcessor")
    assert report["processor_holds"] == "RsccImageProcessor" and report["num_change_classes"] == 2


# What a remote-code file may import: the standard library, torch, transformers and what transformers itself needs,
# rasterio (optional, guarded), and its siblings (relative imports).
REMOTE_CODE_IMPORTS = {"torch", "transformers", "huggingface_hub", "numpy", "PIL", "rasterio"}


def _module_trees():
    import ast
    from pathlib import Path

    package = Path(rscc.__file__).parent
    return [(path, ast.parse(path.read_text())) for path in sorted(package.rglob("*.py"))]


def test_remote_code_files_import_only_the_standard_library_torch_transformers_and_siblings():
    import ast

    for path, tree in _module_trees():
        if not path.name.endswith("_rscc.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            third_party = roots - set(sys.stdlib_module_names)
            assert third_party <= REMOTE_CODE_IMPORTS, f"{path.name} imports {third_party - REMOTE_CODE_IMPORTS}"


def test_no_module_assigns_another_modules_globals():
    import ast

    for path, tree in _module_trees():
        # Names bound to modules: `import x`, `import x as y`, `from . import x`.
        module_imports = [node for node in ast.walk(tree)
                          if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module is None)]
        modules = {alias.asname or alias.name.split(".")[0] for node in module_imports for alias in node.names}
        for node in ast.walk(tree):
            for target in node.targets if isinstance(node, ast.Assign) else []:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    assert target.value.id not in modules, f"{path.name} assigns {target.value.id}.{target.attr}"
