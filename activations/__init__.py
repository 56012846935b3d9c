"""Hidden states in, batches of vectors out: text packing, model adapters, the activation stream.

This package never imports `sae`.
"""

from activations.models import ModelAdapter, load_model
from activations.store import ActivationStream, CacheError
from activations.text import embedded_corpus, load_text

__all__ = ["ActivationStream", "CacheError", "ModelAdapter", "embedded_corpus", "load_model", "load_text"]
