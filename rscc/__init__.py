"""rscc: remote-sensing image change captioning on Hugging Face transformers.

Importing the package registers the rscc classes with the transformers Auto classes, so saved rscc folders load
with `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoProcessor` without remote code.

With `RSCC_LAZY_IMPORT=1` in the environment, `import rscc` imports neither torch nor transformers (about 8 s
less): the classes load, and register, on first access. `rscc eval` runs so, since scoring needs neither.
"""

import importlib
import os

__version__ = "0.1.0"

_CLASS_MODULES = {
    "RsccConfig": "configuration_rscc",
    "RsccModel": "modeling_rscc",
    "RsccPreTrainedModel": "modeling_rscc",
    "RsccForConditionalGeneration": "modeling_rscc",
    "RsccProcessor": "processing_rscc",
    "RsccImageProcessor": "processing_rscc",
}
__all__ = list(_CLASS_MODULES)


def register_auto_classes() -> None:
    """Register the rscc classes with the transformers Auto classes (again: a no-op)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from .configuration_rscc import RsccConfig
    from .modeling_rscc import RsccForConditionalGeneration
    from .processing_rscc import RsccImageProcessor, RsccProcessor

    AutoConfig.register(RsccConfig.model_type, RsccConfig, exist_ok=True)
    # AutoModel gives the captioning model (as remote-code VLMs do), so `AutoModel.from_pretrained(...).generate`
    # works the same whether or not rscc is installed.
    AutoModel.register(RsccConfig, RsccForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(RsccConfig, RsccForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(RsccConfig, image_processor_classes={"pil": RsccImageProcessor}, exist_ok=True)
    AutoProcessor.register(RsccConfig, RsccProcessor, exist_ok=True)


def __getattr__(name: str):
    # Reached only for names not yet in the module's namespace: under RSCC_LAZY_IMPORT, the classes' first access.
    if name not in _CLASS_MODULES:
        raise AttributeError(f"module 'rscc' has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{_CLASS_MODULES[name]}", __name__), name)
    globals()[name] = value
    return value


if os.environ.get("RSCC_LAZY_IMPORT") != "1":
    register_auto_classes()
    from .configuration_rscc import RsccConfig
    from .modeling_rscc import RsccForConditionalGeneration, RsccModel, RsccPreTrainedModel
    from .processing_rscc import RsccImageProcessor, RsccProcessor
