"""Dictionaries fitted on the embedded MiniLM in about a second, and a graph over a short prompt, for the encoder
circuit tests and for any other test that wants an encoder attribution graph (import this module by path, as
the tests here do with tiny_models, and call `model_clt_graph()`; results are cached per process, and each
function takes the MiniLM adapter to use, by default one loaded here once).

The fit: each layer's encoder columns are unit vectors of centred MLP inputs of the harvest, its biases set so
that each feature fires on `FIRING` of the harvested tokens (ReLU); the decoders, b_dec and the skip term are the
ridge least-squares fit of the MLP outputs on those activations (a CLT: on the activations of its own and every
earlier layer). Not trained by gradient descent, but fitted to MiniLM's own activations: the errors are those of a
real (weak) transcoder, and the features fire on the tokens a sparse dictionary's would.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

N_LAYERS, D = 6, 384
MLP_IN, MLP_OUT = "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out"
N_FEATURES = 48  # per layer
FIRING = 0.06  # fraction of harvested tokens on which each feature fires
N_DOCS, DOC_TOKENS = 64, 24  # every document picked has more tokens: one batch, no padding
PROMPT = "The cat sat on the warm mat."
RIDGE = 1e-2


@lru_cache(maxsize=1)
def _own_model() -> Any:
    from activations import load_model

    return load_model("minilm", backend="hf")


def model(m: Any = None) -> Any:
    """`m`, or the embedded MiniLM through plain Hugging Face forward hooks, loaded once."""
    return m if m is not None else _own_model()


@lru_cache(maxsize=2)
def harvest(m: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, L, d], y [N, L, d]): the MLP inputs and outputs of every layer on the first DOC_TOKENS tokens
    (with [CLS] and [SEP], as attribution sees them) of N_DOCS documents of the embedded corpus, float64."""
    from activations.text import embedded_corpus

    m = model(m)
    texts = embedded_corpus("train")[::23]["text"][:N_DOCS]
    ids = m.tokenizer(texts, truncation=True, max_length=DOC_TOKENS, padding=True, return_tensors="pt")
    assert bool(ids.attention_mask.all()), "a document shorter than DOC_TOKENS: padding would leak into the harvest"
    hooks = [h.format(layer) for layer in range(N_LAYERS) for h in (MLP_IN, MLP_OUT)]
    out = m.run(ids.input_ids, hooks)
    x = torch.stack([out[MLP_IN.format(layer)] for layer in range(N_LAYERS)], 2).flatten(0, 1)
    y = torch.stack([out[MLP_OUT.format(layer)] for layer in range(N_LAYERS)], 2).flatten(0, 1)
    return x.double(), y.double()


def _encoders(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W_enc [L, d, n] and b_enc [L, n]: unit vectors of centred inputs, biases at the (1 - FIRING) quantile."""
    g = torch.Generator().manual_seed(seed)
    W, b = [], []
    for layer in range(N_LAYERS):
        xl = x[:, layer]
        centred = xl - xl.mean(0)
        cols = centred[torch.randperm(len(xl), generator=g)[:N_FEATURES]].T
        cols = cols / cols.norm(dim=0, keepdim=True)
        pre = xl @ cols
        W.append(cols)
        b.append(-torch.quantile(pre, 1 - FIRING, dim=0))
    return torch.stack(W), torch.stack(b)


def _ridge(design: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    gram = design.T @ design
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, design.T @ target)


@lru_cache(maxsize=4)
def fitted(cross_layer: bool, skip: bool, m: Any = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A dictionary over all layers in the CLT layout of tiny_models (float64): W_enc [L, d, n], b_enc [L, n],
    b_dec [L, d], W_dec_{l} [n, L - l, d] (a per-layer one writes only its own layer: the others stay zero),
    W_skip [L, d_out, d_in] with `skip`."""
    x, y = harvest(m)
    W_enc, b_enc = _encoders(x, seed)
    acts = torch.relu(torch.einsum("nld,ldf->nlf", x, W_enc) + b_enc)
    t: dict[str, torch.Tensor] = {"W_enc": W_enc, "b_enc": b_enc, "b_dec": torch.zeros(N_LAYERS, D)}
    W_dec = [torch.zeros(N_FEATURES, N_LAYERS - src, D, dtype=torch.float64) for src in range(N_LAYERS)]
    W_skip = torch.zeros(N_LAYERS, D, D, dtype=torch.float64)
    for layer in range(N_LAYERS):
        sources = list(range(layer + 1)) if cross_layer else [layer]
        parts = [torch.ones(len(x), 1, dtype=torch.float64), *(acts[:, s] for s in sources)]
        if skip:
            parts.append(x[:, layer])
        theta = _ridge(torch.cat(parts, 1), y[:, layer])
        t["b_dec"][layer] = theta[0]
        for i, src in enumerate(sources):
            W_dec[src][:, layer - src] = theta[1 + i * N_FEATURES : 1 + (i + 1) * N_FEATURES]
        if skip:
            W_skip[layer] = theta[1 + len(sources) * N_FEATURES :].T
    for src in range(N_LAYERS):
        t[f"W_dec_{src}"] = W_dec[src]
    if skip:
        t["W_skip"] = W_skip
    return {k: v.double() for k, v in t.items()}


def prediction(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The dictionary's prediction of every MLP output from the inputs x [..., L, d] (float64, its own formula)."""
    acts = torch.relu(torch.einsum("...ld,ldf->...lf", x, t["W_enc"]) + t["b_enc"])
    out = t["b_dec"].expand(*x.shape[:-2], N_LAYERS, D).clone()
    for src in range(N_LAYERS):
        out[..., src:, :] += torch.einsum("...f,fkd->...kd", acts[..., src, :], t[f"W_dec_{src}"])
    if "W_skip" in t:
        out += torch.einsum("...ld,lod->...lo", x, t["W_skip"])
    return out


def fvu(t: dict[str, torch.Tensor], m: Any = None) -> float:
    """The fraction of the harvested MLP outputs' variance the dictionary leaves unexplained."""
    x, y = harvest(m)
    residual = (y - prediction(t, x)).pow(2).sum()
    return float(residual / (y - y.mean(0)).pow(2).sum())


def as_clt(t: dict[str, torch.Tensor]) -> Any:
    """The fitted tensors as our CLT (float32)."""
    return tm.our_clt({k: v.float() for k, v in t.items()}, MLP_IN, MLP_OUT)


def as_per_layer(t: dict[str, torch.Tensor]) -> list[Any]:
    """The fitted tensors (of a per-layer fit) as our per-layer transcoders (float32)."""
    out = []
    for layer in range(N_LAYERS):
        per = {
            "W_enc": t["W_enc"][layer].T.float(),
            "W_dec": t[f"W_dec_{layer}"][:, 0].float(),
            "b_enc": t["b_enc"][layer].float(),
            "b_dec": t["b_dec"][layer].float(),
        }
        if "W_skip" in t:
            per["W_skip"] = t["W_skip"][layer].float()
        out.append(tm.our_transcoder(per, layer, MLP_IN, MLP_OUT))
    return out


@lru_cache(maxsize=2)
def model_clt_graph(m: Any = None) -> tuple[Any, Any, Any]:
    """(MiniLM, a CLT with a skip term over its 6 layers, the graph of PROMPT with the default target: the
    pooled embedding's own direction)."""
    from sae.circuits import attribute

    m = model(m)
    clt = as_clt(fitted(cross_layer=True, skip=True, m=m))
    return m, clt, attribute(m, clt, PROMPT, batch_size=128, progress=False)


class FrozenBert:
    """BERT written out by hand in float64 from the Hugging Face module's weights: the real forward of one
    prompt, and the local replacement model's linear map, with the attention patterns and LayerNorm scales of
    that real forward and each MLP replaced by `skip(x) + C` (C the MLP's constant part: b_dec, the features'
    and the error's contributions). Independent of sae.circuits: the reference for the encoder graphs."""

    def __init__(self, bert: Any, ids: torch.Tensor, skip: torch.Tensor | None) -> None:
        def p(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return module.weight.detach().double(), module.bias.detach().double()

        emb = bert.embeddings
        self.ids = ids
        self.P = len(ids)
        self.word = emb.word_embeddings.weight.detach().double()
        self.rest = (emb.position_embeddings.weight[: self.P] + emb.token_type_embeddings.weight[0]).detach().double()
        self.ln_e, self.eps = p(emb.LayerNorm), emb.LayerNorm.eps
        self.heads = bert.config.num_attention_heads
        self.layers = []
        for layer in bert.encoder.layer:
            a = layer.attention
            self.layers.append(
                {
                    "q": p(a.self.query), "k": p(a.self.key), "v": p(a.self.value), "o": p(a.output.dense),
                    "ln1": p(a.output.LayerNorm), "up": p(layer.intermediate.dense), "down": p(layer.output.dense),
                    "ln2": p(layer.output.LayerNorm),
                }
            )  # fmt: skip
        self.skip = skip
        self.scales: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.final = self._real()

    def _ln(self, h: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        return (h - h.mean(-1, keepdim=True)) / scale * wb[0] + wb[1]

    def _scale(self, h: torch.Tensor) -> torch.Tensor:
        centred = h - h.mean(-1, keepdim=True)
        return (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)  # [..., H, P, dh]

    def _attend(self, h: torch.Tensor, w: dict[str, Any], probs: torch.Tensor) -> torch.Tensor:
        v = self._heads(h @ w["v"][0].T + w["v"][1])
        ctx = torch.einsum("hpq,...hqd->...phd", probs, v).flatten(-2)
        return ctx @ w["o"][0].T + w["o"][1]

    def _real(self) -> torch.Tensor:
        """The model's forward, recording the frozen quantities and every MLP's input and output."""
        h = self.word[self.ids] + self.rest
        self.scales.append(self._scale(h))
        h = self._ln(h, self.ln_e, self.scales[-1])
        for w in self.layers:
            q, k = self._heads(h @ w["q"][0].T + w["q"][1]), self._heads(h @ w["k"][0].T + w["k"][1])
            self.probs.append(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1))
            pre = self._attend(h, w, self.probs[-1]) + h
            self.scales.append(self._scale(pre))
            x = self._ln(pre, w["ln1"], self.scales[-1])
            y = torch.nn.functional.gelu(x @ w["up"][0].T + w["up"][1]) @ w["down"][0].T + w["down"][1]
            self.x.append(x)
            self.y.append(y)
            self.scales.append(self._scale(y + x))
            h = self._ln(y + x, w["ln2"], self.scales[-1])
        return h

    def linear(self, embeddings: torch.Tensor, constants: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The replacement model's (final hidden state [..., P, d], MLP inputs [..., L, P, d]) for token embeddings
        [..., P, d] and MLP constants [..., L, P, d]: affine in both, and equal to the real forward at the real
        values."""
        s = iter(self.scales)
        h = self._ln(embeddings + self.rest, self.ln_e, next(s))
        xs = []
        for layer, w in enumerate(self.layers):
            x = self._ln(self._attend(h, w, self.probs[layer]) + h, w["ln1"], next(s))
            xs.append(x)
            y = constants[..., layer, :, :] + (x @ self.skip[layer].T if self.skip is not None else 0)
            h = self._ln(y + x, w["ln2"], next(s))
        return h, torch.stack(xs, -3)
