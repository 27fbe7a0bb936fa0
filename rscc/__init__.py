"""rscc: remote-sensing image change captioning on Hugging Face transformers."""

__version__ = "0.1.0"
