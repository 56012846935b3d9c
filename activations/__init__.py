"""Hidden states in, batches of vectors out: text packing, model adapters, the activation stream.

This package never imports `sae`.
"""

from activations.cache import CacheError
from activations.hooks import HookPoints
from activations.mixing import interleave_order
from activations.models import ModelAdapter, load_model
from activations.source import TextSource
from activations.stream import ActivationStream
from activations.text import embedded_corpus, load_text

__all__ = [
    "ActivationStream",
    "CacheError",
    "HookPoints",
    "ModelAdapter",
    "TextSource",
    "embedded_corpus",
    "interleave_order",
    "load_model",
    "load_text",
]
