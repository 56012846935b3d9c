"""`attribute`: the attribution graph of one prompt (Ameisen et al. 2025; circuit-tracer 0.5.0's algorithm).

1. One forward of the plain model records each layer's transcoder input and MLP output: the active features
   (activation a_s, encoder vector, decoder vectors a_s W_dec_s), the error nodes (MLP output minus the
   transcoders' prediction) and the token embeddings. On a causal LM, position 0 (the BOS, prepended when
   missing) has no features and no error: its activations are outliers, and constant across prompts. On an
   encoder every position has them, [CLS] and [SEP] included (see `prompt_tokens`).
2. A forward of `batch_size` copies of the prompt through the local replacement model (sae.circuits.replacement;
   sae.circuits.backends says which model each backend is traced on).
3. Backward passes, one row per copy: a target's direction (a demeaned unembedding row, or an encoder's
   `Direction`, at the final hidden state; or a feature's encoder vector at its transcoder's input) is injected
   at its position (a pooled direction: v / P at every position), and the gradient at each MLP output and at the
   embeddings, dotted with every source's vector there, is that source's direct effect.
   Targets first; then features, all of them, or with `max_feature_nodes` the most influential first (influence
   on the targets through the rows computed so far, re-ranked every `update_interval` batches).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from sae.circuits.backends import local_replacement, traceable_model
from sae.circuits.dictionaries import Components, Transcoders
from sae.circuits.graph import POOLED, Graph, node_tables
from sae.circuits.replacement import ReachedHead, Record
from sae.circuits.targets import Targets, choose_targets, direction_targets, directions, target_ids
from sae.model import SparseAutoencoder


def attribute(
    model: Any,
    transcoders: SparseAutoencoder | Sequence[SparseAutoencoder],
    prompt: str | Sequence[int] | torch.Tensor,
    target: Any = None,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 256,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    progress: bool = True,
) -> Graph:
    """The attribution graph of `prompt` through `transcoders` (one per layer, or a CLT) spliced into `model`.

    `model`: a causal LM or BERT-style encoder as `activations.load_model` gives it: plain Hugging Face, a
    transformer-lens >= 4 `TransformerBridge` (traced through the Hugging Face model it wraps: the same graph) or a
    transformer-lens < 4 `HookedTransformer` causal LM (sae.circuits.replacement_tl); a name or path is loaded
    as plain Hugging Face. `prompt`: text or token ids. Causal LM: text is tokenised without
    special tokens, and a BOS is prepended unless the prompt starts with a special token; `target` is None (the
    top logits reaching `desired_logit_prob`, at most `max_n_logits`) or token ids / single-token strings.
    Encoder: text is tokenised with the tokenizer's special tokens ([CLS] ... [SEP]), token ids are used as
    given; `target` is None (the pooled embedding's own unit direction) or one or several
    `sae.circuits.targets.Direction`. `batch_size` rows per backward pass (and copies of the prompt in the
    forward: memory grows with it). Returns the full, unpruned graph.
    """
    started = time.time()
    adapter = traceable_model(model, hooked=True)
    causal = bool(adapter.is_causal)
    _check_options(max_n_logits, desired_logit_prob, batch_size, max_feature_nodes, update_interval)
    tc = Transcoders(transcoders, adapter.n_layers, adapter.device)
    adapter.check_hooks(tc.input_hooks + tc.output_hooks)
    replacement = local_replacement(adapter, tc)
    unembed = replacement.unembed
    tokens = prompt_tokens(adapter, prompt, replacement.vocab)
    L, P = adapter.n_layers, len(tokens)
    wanted = target_ids(target, adapter.tokenizer, replacement.vocab) if causal else directions(target, adapter.d_model, P)

    with torch.no_grad(), replacement.capture() as rec:
        out = replacement.forward(tokens[None].to(adapter.device))[0]  # logits, or an encoder's final hidden state
    inputs = [rec.inputs[layer][0] for layer in range(L)]
    outputs = [rec.outputs[layer][0] for layer in range(L)]
    tc.check_widths(inputs, outputs)
    skipped = 1 if causal else 0  # positions without features and errors (a causal LM's BOS)
    comps = tc.components(torch.stack(inputs), zero_positions=skipped)
    errors = torch.stack(outputs).to(comps.prediction.dtype) - comps.prediction
    errors[:, :skipped] = 0
    assert rec.embed is not None
    token_vectors = rec.embed[0].detach()
    targets: Targets
    if causal:
        assert unembed is not None and not isinstance(wanted, list)
        targets = choose_targets(out[-1], unembed, wanted, max_n_logits, desired_logit_prob, P)
    else:
        assert isinstance(wanted, list)
        targets = direction_targets(out, wanted)

    n_active = len(comps.features)
    n_targets = len(targets.ids)
    n_select = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    copies = max(1, min(batch_size, max(n_targets, n_select)))
    source_cols = n_active + (L + 1) * P
    edges = torch.zeros(n_select + n_targets, source_cols + n_targets)
    row_node = torch.zeros(n_select + n_targets, dtype=torch.long)

    with torch.enable_grad(), replacement.frozen() as frozen:
        batch = tokens[None].expand(copies, P).to(adapter.device)
        try:
            replacement.forward(batch)
        except ReachedHead:
            pass
        rows = _RowComputer(frozen, comps, errors, token_vectors, L, P)
        for i in range(0, n_targets, copies):
            vec = targets.vectors[i : i + copies]
            edges[i : i + len(vec), :source_cols] = rows(torch.full((len(vec),), L), targets.positions[i : i + copies], vec)
            row_node[i : i + len(vec)] = torch.arange(i, i + len(vec)) + source_cols
        visited = _feature_rows(rows, comps, edges, row_node, targets, n_targets, n_select, copies, update_interval, progress)

    selected = torch.nonzero(visited).flatten()
    if n_select < n_active:
        edges = edges[:, torch.cat([selected, torch.arange(n_active, source_cols + n_targets)])]
    edges = edges[row_node.argsort()]
    n = edges.shape[1]
    matrix = torch.zeros(n, n)
    matrix[:n_select] = edges[:n_select]
    matrix[n - n_targets :] = edges[n_select:]

    features = comps.features.cpu()
    values = comps.values.float().cpu()
    tables = node_tables(features[selected], values[selected], L, tokens, targets.ids, targets.weights, targets.positions)
    info = {
        "model": adapter.name,
        "transcoders": "clt" if tc.clt is not None else "per-layer",
        "skip": tc.skip,
        "n_active_features": n_active,
        "batch_size": copies,
        "seconds": round(time.time() - started, 3),
        "peak_memory_bytes": _peak_memory(adapter.device),
        "token_strings": [str(adapter.tokenizer.decode([t])) for t in tokens.tolist()],
    }
    if causal:
        info["target_strings"] = [str(adapter.tokenizer.decode([t])) for t in targets.ids.tolist()]
    else:
        info.update(target_kind="direction", target_strings=targets.labels, target_values=targets.values.tolist())
    return Graph(
        adjacency_matrix=matrix,
        **tables,
        tokens=tokens.cpu(),
        active_features=features,
        active_values=values,
        n_layers=L,
        prompt=str(adapter.tokenizer.decode(tokens.tolist())),
        info=info,
        target_vectors=None if causal else targets.vectors.float().cpu(),
    )


class _RowComputer:
    """Direct-effect rows of a batch of targets, from one backward pass through the frozen forward."""

    def __init__(
        self, rec: Record, comps: Components, errors: torch.Tensor, token_vectors: torch.Tensor, n_layers: int, n_pos: int
    ) -> None:
        assert rec.embed is not None and rec.final is not None
        self.rec, self.comps, self.errors, self.token_vectors = rec, comps, errors, token_vectors
        self.L, self.P = n_layers, n_pos
        self.n_active = len(comps.features)
        # decoder vectors ordered by (layer written, position): each (layer, position) group is one slice, dotted
        # with that position's gradients by one matrix product
        order = torch.argsort(comps.decoder_layer * n_pos + comps.decoder_pos, stable=True)
        comps.decoder_layer, comps.decoder_pos = comps.decoder_layer[order], comps.decoder_pos[order]
        comps.decoder_node, comps.decoder_vectors = comps.decoder_node[order], comps.decoder_vectors[order]
        keys = (comps.decoder_layer * n_pos + comps.decoder_pos).tolist()
        bounds = torch.searchsorted(torch.tensor(keys, dtype=torch.long), torch.arange(n_layers * n_pos + 1)).tolist()
        self.groups = [
            [(p, bounds[layer * n_pos + p], bounds[layer * n_pos + p + 1]) for p in range(n_pos)] for layer in range(n_layers)
        ]

    def _seed_site(self, layer: int) -> torch.Tensor:
        """Where a target of `layer` is read: its transcoder's input, or the final hidden state (layer L)."""
        at = self.rec.final if layer == self.L else self.rec.inputs[layer]
        assert at is not None
        return at

    def __call__(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        rec, k = self.rec, len(layers)
        seeds: dict[int, torch.Tensor] = {}
        for layer in layers.unique().tolist():
            seed = seeds.setdefault(layer, torch.zeros_like(self._seed_site(layer)))
            here = layers == layer
            mine = torch.nonzero(here & (positions != POOLED)).flatten()
            seed[mine.to(seed.device), positions[mine].to(seed.device)] = vectors[mine.to(vectors.device)].to(seed.dtype)
            pooled = torch.nonzero(here & (positions == POOLED)).flatten()  # v . mean_p h[p]: v / P at every position
            seed[pooled.to(seed.device)] = (vectors[pooled.to(vectors.device)] / self.P).to(seed.dtype)[:, None, :]
        outs = [self._seed_site(layer) for layer in seeds]
        assert rec.embed is not None
        wrt = [rec.embed, *(rec.outputs[layer] for layer in range(self.L))]
        grads = torch.autograd.grad(outs, wrt, grad_outputs=list(seeds.values()), retain_graph=True, allow_unused=True)
        row = torch.zeros(k, self.n_active + (self.L + 1) * self.P, dtype=self.comps.decoder_vectors.dtype, device=vectors.device)
        for layer in range(self.L):
            g = grads[1 + layer]
            if g is None:
                continue
            g = g[:k].to(row.dtype)
            for p, lo, hi in self.groups[layer]:
                if hi > lo:
                    scores = g[:, p] @ self.comps.decoder_vectors[lo:hi].T
                    row.index_add_(1, self.comps.decoder_node[lo:hi], scores)
            start = self.n_active + layer * self.P
            row[:, start : start + self.P] = torch.einsum("kpd,pd->kp", g, self.errors[layer].to(row.dtype))
        if grads[0] is not None:
            start = self.n_active + self.L * self.P
            row[:, start:] = torch.einsum("kpd,pd->kp", grads[0][:k].to(row.dtype), self.token_vectors.to(row.dtype))
        return row.float().cpu()


def _feature_rows(
    rows: _RowComputer,
    comps: Components,
    edges: torch.Tensor,
    row_node: torch.Tensor,
    targets: Targets,
    n_targets: int,
    n_select: int,
    batch: int,
    update_interval: int,
    progress: bool,
) -> torch.Tensor:
    """Fill the feature rows of `edges` (after the target rows), most influential first when not all are kept."""
    n_active = len(comps.features)
    visited = torch.zeros(n_active, dtype=torch.bool)
    layers, positions = comps.features[:, 0].cpu(), comps.features[:, 1].cpu()
    done, filled = 0, n_targets
    bar = tqdm(total=n_select, desc="attribution: feature rows", disable=not progress)
    while done < n_select:
        if n_select == n_active:
            pending = torch.arange(n_active)
        else:
            influence = partial_influences(edges[:filled], targets.weights, row_node[:filled])
            rank = torch.argsort(influence[:n_active], descending=True)
            pending = rank[~visited[rank]][: min(update_interval * batch, n_select - done)]
        for start in range(0, len(pending), batch):
            idx = pending[start : start + batch]
            vec = comps.encoder_vectors[idx.to(comps.encoder_vectors.device)]
            edges[filled : filled + len(idx), : rows.n_active + (rows.L + 1) * rows.P] = rows(layers[idx], positions[idx], vec)
            row_node[filled : filled + len(idx)] = idx
            visited[idx] = True
            filled += len(idx)
            done += len(idx)
            bar.update(len(idx))
    bar.close()
    return visited


def partial_influences(
    edges: torch.Tensor, probabilities: torch.Tensor, row_node: torch.Tensor, max_iter: int = 128
) -> torch.Tensor:
    """Each node's influence on the targets through the rows computed so far: the sum over path lengths of the
    target-weighted (probability-weighted, for logits) products of row-normalised absolute edge weights."""
    norm = edges.abs()
    norm = norm / norm.sum(dim=1, keepdim=True).clamp(min=1e-8)
    influence = torch.zeros(edges.shape[1])
    prod = torch.zeros(edges.shape[1])
    prod[-len(probabilities) :] = probabilities
    for _ in range(max_iter):
        prod = prod[row_node] @ norm
        if not prod.any():
            return influence
        influence += prod
    raise RuntimeError(f"feature influence did not converge in {max_iter} steps (a cycle in the graph?)")


def prompt_tokens(adapter: Any, prompt: str | Sequence[int] | torch.Tensor, vocab: int) -> torch.Tensor:
    """The prompt as token ids [P], checked against the model's context and vocabulary.

    Causal LM: a special token first (the BOS prepended when it does not start with one). Encoder: text gets the
    tokenizer's special tokens ([CLS] ... [SEP] for BERT), as in training and in sentence-transformers' pooling;
    token ids are used as given."""
    tok = adapter.tokenizer
    causal = bool(adapter.is_causal)
    if isinstance(prompt, str):
        ids = list(tok(prompt, add_special_tokens=not causal).input_ids)
    elif isinstance(prompt, torch.Tensor):
        if prompt.dim() > 1 and prompt.shape[0] != 1:
            raise ValueError(f"prompt tokens must be one sequence, got shape {tuple(prompt.shape)}")
        ids = prompt.flatten().tolist()
    else:
        ids = list(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    special = set(getattr(tok, "all_special_ids", []) or [])
    if causal and ids[0] not in special:
        candidates = [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, *sorted(special)]
        bos = next((c for c in candidates if c is not None), None)
        if bos is not None:
            ids = [bos, *ids]
    if len(ids) > adapter.max_context:
        extra = "BOS" if causal else "special tokens"
        raise ValueError(
            f"the prompt is {len(ids)} tokens (with its {extra}), longer than the {adapter.max_context}-token context of "
            f"model {adapter.name!r}"
        )
    return torch.tensor(ids, dtype=torch.long)


def _check_options(max_n_logits: int, desired: float, batch_size: int, max_features: int | None, interval: int) -> None:
    for name, value in (("max_n_logits", max_n_logits), ("batch_size", batch_size), ("update_interval", interval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected an int >= 1")
    if not 0 < desired <= 1:
        raise ValueError(f"desired_logit_prob={desired!r}; expected a probability in (0, 1]")
    if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 1):
        raise ValueError(f"max_feature_nodes={max_features!r}; expected None or an int >= 1")


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
