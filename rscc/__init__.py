"""rscc: remote-sensing image change captioning on Hugging Face transformers.

Importing the package registers the rscc classes with the transformers Auto classes, so saved rscc folders load
with `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoProcessor` without remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_rscc import RsccConfig
from .modeling_rscc import RsccForConditionalGeneration, RsccModel, RsccPreTrainedModel
from .processing_rscc import RsccProcessor

__version__ = "0.1.0"

AutoConfig.register(RsccConfig.model_type, RsccConfig, exist_ok=True)
# AutoModel gives the captioning model (as remote-code VLMs do), so `AutoModel.from_pretrained(...).generate`
# works the same whether or not rscc is installed.
AutoModel.register(RsccConfig, RsccForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(RsccConfig, RsccForConditionalGeneration, exist_ok=True)
AutoProcessor.register(RsccConfig, RsccProcessor, exist_ok=True)

__all__ = ["RsccConfig", "RsccModel", "RsccPreTrainedModel", "RsccForConditionalGeneration", "RsccProcessor"]
