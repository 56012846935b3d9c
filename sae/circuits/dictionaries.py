"""Per-layer transcoders or one cross-layer transcoder (CLT), as the local replacement model reads them.

Each layer l of the model gets the dictionary (or the CLT layer) that reads the MLP's input at that layer
(`blocks.{l}.mlp.hook_in`, or the residual before the MLP's norm, `blocks.{l}.hook_mlp_in`) and predicts the
MLP's output (`blocks.{l}.mlp.hook_out` / `blocks.{l}.hook_mlp_out`). Dataset scales are folded in first, so
every vector here acts on raw activations.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sae.model import SparseAutoencoder

INPUT_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_mlp_in|mlp\.hook_in)$")
OUTPUT_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_mlp_out|mlp\.hook_out)$")
AFFINE_NORMALIZATIONS = ("none", "dataset_scalar")  # after folding, both read raw activations as they are


@dataclass
class Components:
    """What one prompt's forward gives the attribution: the active features (sorted by layer, position, index),
    their encoder vectors (the gradient of their pre-activation), their decoder vectors scaled by the
    activation (one per layer written: a CLT feature writes into its layer and every later one) and the
    dictionaries' predictions of every MLP output."""

    features: torch.Tensor  # [n, 3] (layer, pos, feature)
    values: torch.Tensor  # [n]
    encoder_vectors: torch.Tensor  # [n, d_in]
    decoder_layer: torch.Tensor  # [m] the layer each decoder vector writes into
    decoder_pos: torch.Tensor  # [m]
    decoder_node: torch.Tensor  # [m] the feature (row of `features`) it belongs to
    decoder_vectors: torch.Tensor  # [m, d_out], activation times decoder
    prediction: torch.Tensor  # [L, P, d_out]


class Transcoders:
    """Per-layer transcoders (one per model layer, in any order) or one CLT over all of the model's layers."""

    def __init__(self, transcoders: SparseAutoencoder | Sequence[SparseAutoencoder], n_layers: int, device: torch.device) -> None:
        self.n_layers = n_layers
        self.device = device
        if not isinstance(transcoders, SparseAutoencoder) and len(transcoders) == 1:
            transcoders = transcoders[0]  # a folder of one CLT loads as a list of one
        if isinstance(transcoders, SparseAutoencoder) and transcoders.cfg.is_clt:
            self.clt: SparseAutoencoder | None = self._ready(transcoders)
            self.per_layer: list[SparseAutoencoder] = []
            self._hooks_of_clt(self.clt)
        else:
            items = [transcoders] if isinstance(transcoders, SparseAutoencoder) else list(transcoders)
            if not all(isinstance(t, SparseAutoencoder) for t in items):
                kinds = sorted({type(t).__name__ for t in items})
                raise TypeError(f"transcoders must be SparseAutoencoder transcoders (one per layer) or a CLT, got {kinds}")
            if any(t.cfg.is_clt for t in items):
                raise ValueError("a CLT replaces every MLP by itself: give it alone, not with other transcoders")
            self.clt = None
            self.per_layer = self._one_per_layer([self._ready(t) for t in items])
        self.skip = bool(self.clt.cfg.skip) if self.clt is not None else any(t.cfg.skip for t in self.per_layer)

    def _ready(self, t: SparseAutoencoder) -> SparseAutoencoder:
        """`t` checked, its dataset scales folded in, on the model's device (a copy where that changes it)."""
        t = _checked(t).folded()
        if t.W_enc.device != self.device:
            t = copy.deepcopy(t).to(self.device)
        return t

    # --- hooks ------------------------------------------------------------------------------
    def _hooks_of_clt(self, clt: SparseAutoencoder) -> None:
        cfg, L = clt.cfg, self.n_layers
        if cfg.first_layer != 0 or cfg.layers != L:
            have = list(range(cfg.first_layer, cfg.first_layer + cfg.layers))
            missing = sorted(set(range(L)) - set(have))
            raise ValueError(
                f"the CLT covers layers {have[0]}-{have[-1]} of a {L}-layer model: circuit tracing needs every layer "
                f"0-{L - 1} (missing {missing}); train it with --layers 0-{L - 1}"
            )
        self.input_hooks = [_hook(cfg.hook_name.format(layer), INPUT_HOOK, layer, "input") for layer in range(L)]
        self.output_hooks = [_hook(cfg.target_hook.format(layer), OUTPUT_HOOK, layer, "target") for layer in range(L)]

    def _one_per_layer(self, items: list[SparseAutoencoder]) -> list[SparseAutoencoder]:
        by_layer: dict[int, SparseAutoencoder] = {}
        for t in items:
            m = INPUT_HOOK.match(t.cfg.hook_name)
            if m is None:
                _hook(t.cfg.hook_name, INPUT_HOOK, None, "input")
            layer = int(m.group(1)) if m else -1
            if layer in by_layer:
                raise ValueError(f"two transcoders read layer {layer} ({t.cfg.hook_name!r}): give one per layer")
            by_layer[layer] = t
        out_of_range = sorted(layer for layer in by_layer if layer >= self.n_layers)
        missing = sorted(set(range(self.n_layers)) - set(by_layer))
        if out_of_range or missing:
            raise ValueError(
                f"transcoders read layers {sorted(by_layer)}; this model has {self.n_layers} layers and circuit tracing "
                f"needs one transcoder for each of 0-{self.n_layers - 1}"
                + (f" (missing {missing})" if missing else "")
                + (f" (no such layers: {out_of_range})" if out_of_range else "")
            )
        ordered = [by_layer[layer] for layer in range(self.n_layers)]
        self.input_hooks = [t.cfg.hook_name for t in ordered]
        self.output_hooks = [_hook(t.cfg.target_hook, OUTPUT_HOOK, layer, "target") for layer, t in enumerate(ordered)]
        return ordered

    def check_widths(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Each dictionary's d_in and d_out against the widths of its hooks in this model."""
        for layer, (x, y) in enumerate(zip(inputs, outputs)):
            cfg = self.clt.cfg if self.clt is not None else self.per_layer[layer].cfg
            what = "the CLT" if self.clt is not None else f"the transcoder of layer {layer}"
            if cfg.d_in != x.shape[-1]:
                raise ValueError(
                    f"{what} reads d_in={cfg.d_in}, but {self.input_hooks[layer]!r} is {x.shape[-1]} wide in this model"
                )
            if cfg.out_width != y.shape[-1]:
                raise ValueError(
                    f"{what} writes d_out={cfg.out_width}, but {self.output_hooks[layer]!r} is {y.shape[-1]} wide in this model"
                )

    # --- the replacement --------------------------------------------------------------------
    def skip_term(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The linear skip term x W_skip^T of layer `layer` (None without one): the part of the replacement
        MLP through which gradients flow."""
        if self.clt is not None:
            return x @ self.clt.W_skip[layer].T.to(x.dtype) if self.clt.cfg.skip else None
        t = self.per_layer[layer]
        return x @ t.W_skip.T.to(x.dtype) if t.cfg.skip else None

    @torch.no_grad()
    def components(self, inputs: torch.Tensor, zero_positions: int = 1) -> Components:
        """The attribution's pieces from the MLP inputs [L, P, d_in] of one prompt; features at the first
        `zero_positions` positions are left out (circuit-tracer's: the BOS position is an outlier)."""
        if self.clt is not None:
            return self._clt_components(inputs, zero_positions)
        feats, values, enc, dec, preds = [], [], [], [], []
        for layer, t in enumerate(self.per_layer):
            x = inputs[layer].to(t.W_enc.dtype)
            _check_affine(t, x, f"the transcoder of layer {layer}")
            dense = t.encode_dense(x)
            dense[:zero_positions] = 0
            pos, f = torch.nonzero(dense, as_tuple=True)
            a = dense[pos, f]
            feats.append(torch.stack([torch.full_like(pos, layer), pos, f], 1))
            values.append(a)
            enc.append(t.W_enc[:, f].T)
            dec.append(t.W_dec[f] * a[:, None])
            preds.append(t.predict(x))
        features = torch.cat(feats)
        n = len(features)
        return Components(
            features=features,
            values=torch.cat(values),
            encoder_vectors=torch.cat(enc),
            decoder_layer=features[:, 0],
            decoder_pos=features[:, 1],
            decoder_node=torch.arange(n, device=features.device),
            decoder_vectors=torch.cat(dec),
            prediction=torch.stack(preds),
        )

    def _clt_components(self, inputs: torch.Tensor, zero_positions: int) -> Components:
        clt = self.clt
        assert clt is not None
        L, n = clt.cfg.layers, clt.cfg.latents
        x = inputs.transpose(0, 1).to(clt.W_enc.dtype)  # [P, L, d_in]
        _check_affine(clt, x, "the CLT")
        dense = clt.encode_dense(x).view(x.shape[0], L, n).transpose(0, 1).contiguous()  # [L, P, n]
        dense[:, :zero_positions] = 0
        layer, pos, f = torch.nonzero(dense, as_tuple=True)
        a = dense[layer, pos, f]
        decoders = clt.decoders()
        d_layer, d_pos, d_node, d_vec = [], [], [], []
        for src in range(L):
            mine = torch.nonzero(layer == src).flatten()
            if len(mine) == 0:
                continue
            W = decoders[src][f[mine]] * a[mine, None, None]  # [k, L - src, d_out]
            k, span = len(mine), L - src
            d_layer.append(torch.arange(src, L, device=W.device).repeat(k))
            d_pos.append(pos[mine].repeat_interleave(span))
            d_node.append(mine.repeat_interleave(span))
            d_vec.append(W.reshape(k * span, -1))
        if not d_vec:  # no active feature
            d_layer, d_pos, d_node = [layer], [pos], [pos]
            d_vec = [torch.zeros(0, clt.cfg.out_width, dtype=clt.W_enc.dtype, device=layer.device)]
        return Components(
            features=torch.stack([layer, pos, f], 1),
            values=a,
            encoder_vectors=clt.W_enc[layer, :, f],
            decoder_layer=torch.cat(d_layer),
            decoder_pos=torch.cat(d_pos),
            decoder_node=torch.cat(d_node),
            decoder_vectors=torch.cat(d_vec),
            prediction=clt.predict(x).transpose(0, 1),
        )


def _hook(name: str, pattern: re.Pattern[str], layer: int | None, what: str) -> str:
    m = pattern.match(name)
    want = (
        "blocks.{l}.mlp.hook_in or blocks.{l}.hook_mlp_in"
        if what == "input"
        else "blocks.{l}.mlp.hook_out or blocks.{l}.hook_mlp_out"
    )
    if m is None or (layer is not None and int(m.group(1)) != layer):
        at = "" if layer is None else f" at layer {layer}"
        raise ValueError(
            f"a transcoder's {what} hook {name!r}{at} is not an MLP's {what} of its layer: circuit tracing splices "
            f"transcoders that read the MLP's input and predict its output ({want})"
        )
    return name


def _checked(t: SparseAutoencoder) -> SparseAutoencoder:
    cfg = t.cfg
    if not cfg.is_transcoder:
        raise ValueError(
            f"dictionary at {cfg.hook_name!r} is an SAE (it reconstructs its input): circuit tracing needs transcoders "
            "that predict the MLP's output (SAEConfig d_out, target_hook)"
        )
    if cfg.normalize not in AFFINE_NORMALIZATIONS:
        raise ValueError(
            f"transcoder at {cfg.hook_name!r} normalises each token ({cfg.normalize!r}): its features are not linear in "
            f"the MLP's input, so the graph would not be exact; expected normalize in {AFFINE_NORMALIZATIONS}"
        )
    return t


def _check_affine(t: SparseAutoencoder, x: torch.Tensor, what: str) -> None:
    """The pre-activations must be x W_enc + constant: the encoder vector is then a column of W_enc."""
    pre = t.pre_activations(x)
    if t.cfg.is_clt:
        lin = torch.einsum("pld,ldn->pln", x, t.W_enc).reshape(x.shape[0], -1)
    else:
        lin = x @ t.W_enc
    offset = pre - lin
    spread = (offset - offset[:1]).abs().max()
    if spread > 1e-4 * (1.0 + float(pre.abs().max())):
        raise ValueError(
            f"{what} (family {t.cfg.family!r}) has pre-activations that are not x W_enc + b: circuit tracing needs "
            "an affine encoder (ReLU, JumpReLU and the top-k families have one)"
        )
