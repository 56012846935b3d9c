"""Train a tiny cross-layer transcoder on the embedded MiniLM and trace the attribution graph of one sentence
(= notebooks/04_trace_a_circuit.ipynb).

    python examples/04_trace_a_circuit.py      # writes runs/circuit/ (the CLT, the graph files and graph.html)
"""

# %% [markdown]
# # 04 · Trace a circuit
#
# An attribution graph (Ameisen et al. 2025, "Circuit Tracing"; `docs/circuits.md`) explains one prompt: every
# MLP is replaced by transcoder features plus an error term per layer and position, attention patterns and
# LayerNorm denominators are frozen at their values on the prompt, and the graph's edges are the exact linear
# effects of each active feature, error and token embedding on every later feature and on the target.
#
# Here: harvest the MLP inputs and outputs of all 6 layers of the embedded MiniLM in one forward per batch,
# train a cross-layer transcoder (CLT) over layers 0-5 with the library's trainer, trace the graph of one
# sentence's embedding, rank its features by influence, check it by ablating its top features in the model, and
# save it (safetensors, circuit-tracer's JSON and the offline graph view). **This CLT is tiny and trained for a
# few seconds, for the demonstration only**: its features are rough and its error nodes carry much of the graph.
# A useful one takes more tokens and steps:
# `python -m sae train --clt --layers 0-5 --tokens 400000 --out runs/clt` (README, "Transcoders").

# %%
from pathlib import Path

import torch

from activations import ActivationStream, HookPoints, load_model
from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.circuits import Graph, attribute, validate
from sae.circuits.export import write_graph_files
from sae.circuits.graph import ERROR, FEATURE, TOKEN
from sae.circuits.prune import influence, normalized, prune, target_weights
from sae.circuits.targets import Direction
from sae.circuits.view import view_url, write_graph_view
from sae.data import PairBatches

OUT = Path("runs/circuit")
MLP_IN, MLP_OUT = "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out"
model = load_model("minilm", backend="hf")  # attribution runs on the plain Hugging Face model

# %% [markdown]
# The pairs: each token's MLP input and output at every layer, `x, y [tokens, 6, 384]`, from one forward per
# batch of contexts. [CLS] and [SEP] are kept (`exclude_special_tokens=False`): the graph has features and errors
# at every position, and the pooled embedding reads those two as well.

# %%
points = HookPoints(layers="0-5", hook_template=MLP_IN, target_template=MLP_OUT, clt=True)
stream = ActivationStream(
    model, points, batch_size=4096, total_tokens=20_480, seed=0, exclude_special_tokens=False, progress=False
)
x, y = (torch.cat(part) for part in zip(*stream, strict=True))
print("pairs:", tuple(x.shape), tuple(y.shape))

# %% [markdown]
# The CLT: 128 features per layer, the 8 largest of each layer active per token (TopK); layer l's features write
# to layer l and every later one. A linear skip term per layer starts at the least-squares fit of its output on
# its input (over the first 4,096 pairs, like the scales and b_dec). One pass over 16,384 pairs in batches of 512
# (32 steps); the loss is the sum of the layers' FVUs. Each layer's FVU is then measured on the 4,096 pairs held
# out of training.

# %%
cfg = SAEConfig(
    d_in=x.shape[-1], d_out=y.shape[-1], n_latents=128, k=8, layers=6, skip=True,
    hook_name=MLP_IN, target_hook=MLP_OUT, model_name="minilm",
)  # fmt: skip
clt = SparseAutoencoder(cfg, seed=0)
x, y, held_x, held_y = x[:-4096], y[:-4096], x[-4096:], y[-4096:]
tcfg = TrainConfig(
    tokens=len(x), batch_size=512, skip_init="lstsq", init_tokens=4096, dead_window_tokens=16_384, checkpoint_every=1000
)
result = train(clt, PairBatches(x, y, tcfg.batch_size, seed=0), tcfg, out_dir=OUT / "clt")
clt.fold_input_scale()
clt.save(OUT / "clt")
with torch.no_grad():
    residual = (held_y - clt.predict(held_x)).pow(2).sum((0, 2))
    fvu = residual / (held_y - held_y.mean(0)).pow(2).sum((0, 2))
print(f"{result.steps} steps in {result.seconds:.1f} s; FVU of each layer's MLP output:", [round(v, 3) for v in fvu.tolist()])

# %% [markdown]
# The graph of one sentence. The default target of an encoder is the pooled embedding's own unit direction
# `m / |m|` (`m` the mean of the final hidden states over every position, what sentence-transformers normalises
# into the embedding), whose read-out is `|m|`. Nodes: the active features (layer, position, index), one error
# per layer and position, one token embedding per position, and the target.

# %%
PROMPT = "The cat sat on the warm mat."
graph = attribute(model, clt, PROMPT, batch_size=128, progress=False)
print(graph)
print("tokens:", model.tokenizer.convert_ids_to_tokens(graph.tokens.tolist()))
print(f"target {graph.info['target_strings'][0]!r} = {graph.info['target_values'][0]:.3f}")

# %% [markdown]
# Influence: a node's influence on the target sums, over every path from it to the target, the products of the
# row-normalised absolute edge weights (Ameisen et al. §5.2). `prune` keeps the most influential nodes until
# they hold 80% of it (tokens and the target always), then the edges holding 98%; the same influence is computed
# here to rank the features and to see how much of it the error nodes hold.

# %%
pruned = prune(graph, node_threshold=0.8, edge_threshold=0.98)
print(f"pruned: {int(pruned.node_mask.sum())} of {graph.n_nodes} nodes, {int(pruned.edge_mask.sum())} edges kept")


def influence_shares(graph: Graph, top: int = 10) -> None:
    """Print the share of the influence each kind of node holds, and the `top` features by influence."""
    share = influence(normalized(graph.adjacency_matrix), target_weights(graph))
    share = share / share.sum()
    for kind, name in ((FEATURE, "features"), (ERROR, "errors"), (TOKEN, "tokens")):
        print(f"{name:>9} hold {float(share[graph.nodes(kind)].sum()):.0%} of the influence")
    words = model.tokenizer.convert_ids_to_tokens(graph.tokens.tolist())
    features = graph.nodes(FEATURE)
    print(f"the {top} most influential features: layer, position, token, feature, activation, share of the influence")
    for i in features[share[features].argsort(descending=True)[:top]].tolist():
        layer, pos, index = int(graph.node_layer[i]), int(graph.node_pos[i]), int(graph.node_index[i])
        print(f"  L{layer} {pos:2d} {words[pos]:>6}  #{index:<4} {float(graph.node_value[i]):6.3f}  {float(share[i]):.2%}")


influence_shares(graph)

# %% [markdown]
# Another target: a `Direction` in the final hidden state, at one position or (position None) on the pooled
# mean. Here the pooled embedding's projection on the difference between the embeddings of two other
# sentences, "A dog." minus "A cat." (each normalised): which features push this sentence towards the dog?

# %%
with torch.no_grad():
    ids = model.tokenizer(["A dog.", "A cat."], return_tensors="pt", padding=True)
    hidden = model.model(**ids).last_hidden_state
    pooled = (hidden * ids.attention_mask[..., None]).sum(1) / ids.attention_mask.sum(1, keepdim=True)
probe = torch.nn.functional.normalize(pooled[0], dim=0) - torch.nn.functional.normalize(pooled[1], dim=0)
dog = attribute(model, clt, PROMPT, target=Direction(probe, label="dog - cat"), batch_size=128, progress=False)
value = dog.info["target_values"][0]
print(f"target {dog.info['target_strings'][0]!r} = {value:.3f}: nearer {'A dog.' if value > 0 else 'A cat.'!r}")
influence_shares(dog, top=5)

# %% [markdown]
# Check the graph by intervention (`sae.circuits.validate`; docs/circuits.md, "Checks by intervention"): each of
# its 10 most influential features is ablated in the model itself (the CLT spliced in, its errors held, attention
# and LayerNorms recomputed), and the change of the target's value is compared with the graph's prediction, its
# direct edge and its total effect through the graph's feature paths. The frozen replacement model must match the
# graph to float precision; the model departs from it, by how much is what the check measures.

# %%
check = validate(graph, model, clt, top=10, progress=False)  # kept in graph.info: graph.save writes it
s = check.summary()
print(f"measured vs predicted: correlation {s['correlation_direct']:.2f} (direct), {s['correlation_total']:.2f} (total)")
print(f"relative error {s['relative_error_direct']:.2f} (direct), {s['relative_error_total']:.2f} (total)")
print(f"frozen model vs graph: {s['frozen_relative_deviation']:.1e}; splice deviation {s['splice_deviation']:.1e}")

# %% [markdown]
# Save the graph: the full matrix and node tables as safetensors (`Graph.load` reads it back), the pruned graph as
# circuit-tracer's JSON (what Neuronpedia's graph viewer reads), and the offline graph view: nodes at x =
# position and y = layer, edges by weight with a threshold slider, hover for values. Open the printed URL in a web
# browser (it needs no server and no network; a notebook's IFrame will not show a file:// page).

# %%
OUT.mkdir(parents=True, exist_ok=True)
graph.save(OUT / "graph.safetensors")
assert torch.equal(Graph.load(OUT / "graph.safetensors").adjacency_matrix, graph.adjacency_matrix)
print(write_graph_files(graph, OUT, slug="cat"))
page = write_graph_view(graph, OUT, slug="cat")
print(view_url(page, "cat"))
