"""Circuit tracing: attribution graphs over transcoders (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer).

`attribute(model, transcoders, prompt)` splices per-layer transcoders or a CLT into a Hugging Face causal LM,
freezes its attention patterns and normalisation denominators, and returns the `Graph` of direct linear
effects between active features, error nodes, token embeddings and next-token logits. docs/circuits.md gives
the definitions and their sources.
"""

from sae.circuits.attribute import attribute
from sae.circuits.graph import ERROR, FEATURE, TARGET, TOKEN, Graph
from sae.circuits.validate import Validation, validate

__all__ = ["ERROR", "FEATURE", "TARGET", "TOKEN", "Graph", "Validation", "attribute", "validate"]
