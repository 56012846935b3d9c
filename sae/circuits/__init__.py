"""Circuit tracing: attribution graphs over transcoders (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer).

`attribute(model, transcoders, prompt)` splices per-layer transcoders or a CLT into a causal LM or BERT-style
encoder (plain Hugging Face, a transformer-lens TransformerBridge, or a HookedTransformer causal LM), freezes
its attention patterns and normalisation denominators, and returns the `Graph` of direct linear effects between
active features, error nodes, token embeddings and the targets: next-token logits of a causal LM, or
`Direction`s in an encoder's final hidden state (at a position, or on the mean-pooled embedding).
docs/circuits.md gives the definitions and their sources.
"""

from sae.circuits.attribute import attribute
from sae.circuits.graph import ERROR, FEATURE, POOLED, TARGET, TOKEN, Graph
from sae.circuits.targets import Direction
from sae.circuits.validate import Validation, validate

__all__ = ["ERROR", "FEATURE", "POOLED", "TARGET", "TOKEN", "Direction", "Graph", "Validation", "attribute", "validate"]
