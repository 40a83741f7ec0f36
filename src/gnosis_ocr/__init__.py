"""gnosis-ocr: documents to Markdown with a vision-language model, served from a provably offline model cache.

Importing this package is cheap: it never imports torch, transformers or huggingface_hub.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
