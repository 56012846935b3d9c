"""SparseAutoencoder: one module for every family (a family = selection rule + optional loss), and for every kind
of dictionary: an SAE (reconstructs its input), a transcoder (predicts a target, optionally with a linear skip
term) and a cross-layer transcoder (CLT: one encoder per layer, decoders from each layer to it and every later
one; sae/layers.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.config import SAEConfig
from sae.families import Family, TrainStep, get_family
from sae.io import check_size, check_tensors, get_format
from sae.layers import LayerView, clt_decode, code_of_layer, join_codes, layer_family_tensors
from sae.losses import batch_variance
from sae.normalize import denormalize, normalize

FAMILY_PREFIX = "family."  # state-dict prefix of the family's tensors; files hold them without it
LAYER_FAMILY = "layer_family"  # a CLT's per-layer families: state 'layer_family.{l}.X', file 'X' stacked [L, ...]
# dataset statistics: buffers, never in files (folded into the weights on save): the scales, and a centred
# transcoder's input offset (`centres_input`)
SCALES = ("input_scale", "target_scale", "input_offset")


class ForwardOutput(NamedTuple):
    """What one forward pass returns; losses are in the dictionary's normalised space."""

    x_hat: torch.Tensor  # [B, d] the prediction of the raw target (an SAE: the reconstruction of its input)
    code: SparseCode
    loss: torch.Tensor  # total: recon + aux_coef * aux + family extras
    mse: torch.Tensor  # mean squared error per element (normalised space)
    fvu: torch.Tensor  # reconstruction term: fraction of variance unexplained (a CLT: summed over layers)
    aux_loss: torch.Tensor  # AuxK term before its coefficient
    extras: dict[str, torch.Tensor]
    enc: Encoding  # the code in normalised space, with the AuxK code (for family state updates)


class SparseAutoencoder(nn.Module):
    """Sparse dictionary with SAELens-shaped parameters: W_enc [d_in, n], b_enc [n], W_dec [n, d_out], b_dec [d_out]
    (an SAE: d_out = d_in), plus W_skip [d_out, d_in] for a skip transcoder. A CLT over L layers holds
    W_enc [L, d_in, n], b_enc [L, n], one decoder W_dec_{l} [n, L - l, d_out] per source layer, b_dec [L, d_out]
    and W_skip [L, d_out, d_in]."""

    input_scale: torch.Tensor  # buffer [] (a CLT: [L]), fp32
    target_scale: torch.Tensor  # buffer [] (a CLT: [L]), fp32; transcoders only
    input_offset: torch.Tensor  # buffer [d_in] in normalised input space, fp32; centred transcoders only
    family: Family  # a CLT: layer 0's (the per-layer families are `families`)

    def __init__(self, cfg: SAEConfig, device: torch.device | str = "cpu", seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, n, L, d_out = cfg.d_in, cfg.latents, cfg.layers, cfg.out_width
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dtype = cfg.torch_dtype

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.to(dtype=dtype, device=device))

        if not cfg.is_clt:
            W_dec = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            self.W_dec = param(W_dec)
            # an SAE starts tied (its encoder reads the space its decoder writes); a transcoder's input and target
            # are different spaces even where their widths agree, so it starts from random unit columns
            self.W_enc = param(_unit_columns(d, n, gen) if cfg.is_transcoder else W_dec.T.contiguous())
            self.b_enc = param(torch.zeros(n))
            self.b_dec = param(torch.zeros(d_out))
        else:
            for layer in range(L):
                W = torch.randn(n, L - layer, d_out, generator=gen, dtype=torch.float64)
                W /= W.flatten(1).norm(dim=1)[:, None, None]  # each feature's whole decoder has norm 1
                setattr(self, f"W_dec_{layer}", param(W))
            self.W_enc = param(torch.stack([_unit_columns(d, n, gen) for _ in range(L)]))
            self.b_enc = param(torch.zeros(L, n))
            self.b_dec = param(torch.zeros(L, d_out))
        if cfg.skip:
            self.W_skip = param(torch.zeros(*([L] if cfg.is_clt else []), d_out, d))
        # dataset-wide scales (E|s x|^2 = d_in, E|t y|^2 = d_out; per layer for a CLT); 1 once folded into the weights
        scale_shape = (L,) if cfg.is_clt else ()
        self.register_buffer("input_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        if cfg.is_transcoder:
            self.register_buffer("target_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        self._build_family(device)
        if _centres(cfg, self.family):
            # what the input's normalised mean is (set by sae.init from the first batches; zero: no centring)
            self.register_buffer("input_offset", torch.zeros(d, dtype=torch.float32, device=device))
            self.register_load_state_dict_pre_hook(_offset_of_older_state)

    def _build_family(self, device: torch.device | str | None = None) -> None:
        """The family module(s): one, or one per layer for a CLT (`family` then names layer 0's, unregistered)."""
        family_cls = get_family(self.cfg.family)
        if not self.cfg.is_clt:
            self.family = family_cls(self.cfg).to(device) if device is not None else family_cls(self.cfg)
            return
        layers = nn.ModuleList(family_cls(self.cfg) for _ in range(self.cfg.layers))
        setattr(self, LAYER_FAMILY, layers.to(device) if device is not None else layers)
        object.__setattr__(self, "family", layers[0])  # not a second registration: the state dict holds it once

    @property
    def families(self) -> list[Family]:
        """The family of each layer (one for an SAE or a transcoder)."""
        if not self.cfg.is_clt:
            return [self.family]
        return list(getattr(self, LAYER_FAMILY))

    def decoders(self) -> list[torch.Tensor]:
        """The decoder matrices: [W_dec], or a CLT's W_dec_{l} [n, L - l, d_out] for each source layer l."""
        if not self.cfg.is_clt:
            return [self.W_dec]
        return [getattr(self, f"W_dec_{layer}") for layer in range(self.cfg.layers)]

    @property
    def centres_input(self) -> bool:
        """Whether the dictionary subtracts an offset (set at init: the input's mean) from its normalised input: a
        transcoder (not a CLT) whose family reads its input only through W_enc + b_enc. An MLP's input (a
        post-LayerNorm state) has large per-dimension offsets; uncentred, Adam drags each encoder column towards the
        mean, most latents then sit below zero on every token and even AuxK cannot revive them
        (docs/results/transcoders.md)."""
        return hasattr(self, "input_offset")

    # --- the encoder's view -------------------------------------------------------------
    @property
    def b_pre(self) -> torch.Tensor | None:
        """What the encoder subtracts from its normalised input: b_dec for an SAE, nothing for a transcoder (its
        b_dec lives in the target's space)."""
        return None if self.cfg.is_transcoder else self.b_dec

    def encoder_input(self, x_n: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: x_n - b_dec for an SAE, x_n itself for a transcoder."""
        b_pre = self.b_pre
        return x_n if b_pre is None else x_n - b_pre

    def _layer(self, layer: int) -> SparseAutoencoder:
        """Layer `layer` of a CLT as its family sees a dictionary (its encoder's slices)."""
        return LayerView(self, layer)  # type: ignore[return-value]  # duck-types what families read

    # --- shape checks and normalisation -------------------------------------------------------
    def _expect(self, width: int, what: str) -> str:
        if self.cfg.is_clt:
            return f"[batch, layers={self.cfg.layers}, {what}={width}]"
        return f"[batch, {what}={width}]"

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        want = (cfg.layers, cfg.d_in) if cfg.is_clt else (cfg.d_in,)
        if x.dim() != 1 + len(want) or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"activations of shape {tuple(x.shape)} do not fit this dictionary: expected {self._expect(cfg.d_in, 'd_in')}"
            )
        if x.shape[0] == 0:
            raise ValueError("empty batch: activations have 0 rows")

    def _scale(self, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A dataset scale in `like`'s dtype, shaped to broadcast over [B, L, d] for a CLT."""
        scale = scale.to(like.dtype)
        return scale[:, None] if self.cfg.is_clt else scale

    def _prepare(self, x: torch.Tensor):
        """The normalised input (a centred transcoder's minus its offset) and the per-token statistics."""
        self._check_input(x)
        x = x.to(dtype=self.W_enc.dtype, device=self.W_enc.device)
        x_n, stats = normalize(x, self.cfg.normalize, self._scale(self.input_scale, x))
        if self.centres_input:
            x_n = x_n - self.input_offset.to(x_n.dtype)
        return x_n, stats

    def _prepare_target(self, target: torch.Tensor | None, x: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
        """The normalised target: x_n for an SAE (which takes none), the transcoder's target scaled otherwise."""
        cfg = self.cfg
        if not cfg.is_transcoder:
            if target is not None:
                raise ValueError(
                    "target= is for a transcoder (SAEConfig d_out=...): an SAE reconstructs its input, so it takes none"
                )
            return x_n
        if target is None:
            raise ValueError(
                f"a transcoder predicts a target: call it as sae(x, target=y), y {self._expect(cfg.out_width, 'd_out')}"
            )
        want = (cfg.layers, cfg.out_width) if cfg.is_clt else (cfg.out_width,)
        if target.dim() != 1 + len(want) or tuple(target.shape[1:]) != want or target.shape[0] != x.shape[0]:
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not fit this transcoder and its input {tuple(x.shape)}: "
                f"expected [{x.shape[0]}, {', '.join(map(str, want))}]"
            )
        y = target.to(dtype=self.W_enc.dtype, device=self.W_enc.device)
        return normalize(y, self.cfg.normalize, self._scale(self.target_scale, y))[0]

    def _out_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Factor from normalised-space codes to raw-space codes (only dataset_scalar rescales): the input's scale
        for an SAE, the target's for a transcoder (whose codes are in units of the target)."""
        if self.cfg.normalize == "dataset_scalar":
            return (self.target_scale if self.cfg.is_transcoder else self.input_scale).to(x.dtype)
        return torch.ones((), dtype=x.dtype, device=x.device)

    def _denormalize(self, y_hat_n: torch.Tensor, stats) -> torch.Tensor:
        """The raw prediction from its normalised-space twin."""
        if not self.cfg.is_transcoder:
            return denormalize(y_hat_n, self.cfg.normalize, self.input_scale.to(y_hat_n.dtype), stats)
        return denormalize(y_hat_n, self.cfg.normalize, self._scale(self.target_scale, y_hat_n), None)

    def _layer_scale(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """A CLT code's per-entry factor from normalised to raw space: the target scale of the entry's layer."""
        if self.cfg.normalize != "dataset_scalar":
            return torch.ones((), dtype=values.dtype, device=values.device)
        return self.target_scale.to(values.dtype)[indices // self.cfg.latents]

    def _skip(self, x_n: torch.Tensor) -> torch.Tensor | None:
        """The skip term x_n W_skip^T [B, d_out] (a CLT: per layer, [B, L, d_out]); None without one."""
        if not self.cfg.skip:
            return None
        if self.cfg.is_clt:
            return torch.einsum("bli,loi->blo", x_n, self.W_skip)
        return x_n @ self.W_skip.T

    # --- public API ---------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations of raw activations x: [B, n] ((x - b_dec) W_enc + b_enc for an SAE, x W_enc + b_enc for
        a transcoder); a CLT: [B, L * n], layer l's at l * n + f."""
        x_n, _ = self._prepare(x)
        if self.cfg.is_clt:
            xs = x_n.transpose(0, 1)
            t = self._scale_values(x_n)
            return torch.cat([fam.pre(self._layer(i), xs[i]) / t[i] for i, fam in enumerate(self.families)], 1)
        pre = self.family.pre(self, x_n)
        return pre / self._out_scale(pre)

    def _scale_values(self, like: torch.Tensor) -> torch.Tensor:
        """A CLT's per-layer normalised-to-raw factors for codes [L] (ones unless dataset_scalar)."""
        if self.cfg.normalize != "dataset_scalar":
            return torch.ones(self.cfg.layers, dtype=like.dtype, device=like.device)
        return self.target_scale.to(like.dtype)

    def encode(self, x: torch.Tensor, **kw) -> SparseCode:
        """Sparse code of raw activations x [B, d_in]: values [B, w], indices [B, w]. A CLT reads x [B, L, d_in]
        and gives one code over its L * n features (layer l's latent f at index l * n + f), each layer selected
        by its own encoder (so a layer's features never depend on a later layer's input).

        `k=` asks for another number of active latents where the family allows it (a CLT: per layer); a k that
        is not an int in [1, n_latents] is refused (k=0 would otherwise fall back to the configured k)."""
        k = kw.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.cfg.latents):
            raise ValueError(
                f"encode: k={k!r}; expected an int with 1 <= k <= n_latents={self.cfg.n_latents} (or no k for the configured one)"
            )
        x_n, _ = self._prepare(x)
        if self.cfg.is_clt:
            code = join_codes([e.code for e in self._encode_layers(x_n, None, 0, **kw)], self.cfg.latents)
            return SparseCode(code.values / self._layer_scale(code.values, code.indices), code.indices)
        code = self.family.encode(self, x_n, **kw).code
        return SparseCode(code.values / self._out_scale(code.values), code.indices)

    def encode_dense(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Dense code [B, n] (a CLT: [B, L * n]), zeros where inactive."""
        return self.encode(x, **kw).to_dense(self.cfg.n_features)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """The prediction from a raw-space code, without a skip term (which needs the input: `predict`); an SAE's
        per-token normalisations return normalised space. A CLT: [B, L, d_out], target layer l' summing the codes
        of layers l <= l'."""
        if self.cfg.is_clt:
            n = self.cfg.latents
            values = code.values * self._layer_scale(code.values, code.indices)
            layered = [code_of_layer(SparseCode(values, code.indices), layer, n) for layer in range(self.cfg.layers)]
            y_hat_n = clt_decode(layered, self.decoders(), self.b_dec.expand(code.values.shape[0], -1, -1))
            return self._denormalize(y_hat_n, None)
        b_dec = self.b_dec / self._out_scale(self.b_dec)
        return kernels.decode(code, self.W_dec, b_dec)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The raw prediction from raw activations x: z W_dec + b_dec (+ x W_skip^T) for a transcoder (a CLT:
        [B, L, d_out]); for an SAE its reconstruction, equal to `sae(x).x_hat`."""
        x_n, stats = self._prepare(x)
        if self.cfg.is_clt:
            codes = [e.code for e in self._encode_layers(x_n, None, 0)]
            return self._denormalize(self._clt_prediction(codes, x_n), None)
        code = self.family.encode(self, x_n).code
        y_hat_n = kernels.decode(code, self.W_dec, self.b_dec)
        skip = self._skip(x_n)
        return self._denormalize(y_hat_n if skip is None else y_hat_n + skip, stats)

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        dead: torch.Tensor | None = None,
        step: TrainStep | None = None,
    ) -> ForwardOutput:
        """Encode, decode and compute the training loss. `target`: what a transcoder predicts ([B, d_out], a CLT
        [B, L, d_out]; an SAE takes none: it reconstructs x). `dead` [n] bool (a CLT: [L * n]) enables AuxK;
        `step` (from the trainer) gives AuxK's settings and where the run stands (default: TrainStep(), AuxK's
        defaults at the start).

        The loss is the FVU of the target (a CLT: the sum over layers of each layer's FVU, as Ameisen et al. sum
        the layers' errors), plus AuxK: dead latents reconstruct the detached residual y_n - y_hat_n."""
        step = step or TrainStep()
        x_n, stats = self._prepare(x)
        y_n = self._prepare_target(target, x, x_n)
        if self.cfg.is_clt:
            return self._forward_clt(x_n, y_n, dead, step)
        enc: Encoding = self.family.encode(self, x_n, dead=dead, k_aux=step.k_aux)
        skip = self._skip(x_n)
        # the squared error comes with the decode: on Triton one gather of W_dec serves forward and backward
        if skip is None:
            y_hat_n, sse = kernels.decode_sse(enc.code, self.W_dec, self.b_dec, y_n)
        else:  # |z W_dec + b_dec - (y - skip)|^2: the fused decode against what the skip term leaves
            part, sse = kernels.decode_sse(enc.code, self.W_dec, self.b_dec, y_n - skip)
            y_hat_n = part + skip
        e_hat = kernels.decode(enc.aux, self.W_dec) if enc.aux is not None else None  # no b_dec: in y_hat
        base = None if skip is None else self.b_dec + skip
        return self.assemble(y_n, stats, enc, y_hat_n, e_hat, sse, step=step, base=base)

    def assemble(
        self,
        y_n: torch.Tensor,
        stats,
        enc: Encoding,
        y_hat_n: torch.Tensor,
        e_hat: torch.Tensor | None,
        sse: torch.Tensor | None = None,
        step: TrainStep | None = None,
        base: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """Losses and outputs from a forward's pieces (shared with the latent-sharded forward): y_n the normalised
        target (an SAE: its input), y_hat_n its prediction and e_hat the AuxK reconstruction of the residual, in
        normalised space; sse, sum |y_n - y_hat_n|^2, when the decoder computed it; base, what no latent
        contributes to y_hat_n, for a skip transcoder."""
        step = step or TrainStep()
        if base is None:
            recon = self.family.recon_loss(self, y_n, enc, y_hat_n, sse=sse)
        else:
            recon = self.family.recon_loss(self, y_n, enc, y_hat_n, sse=sse, base=base)
        aux_active = enc.aux.values.ne(0).any() if enc.aux is not None else None
        aux = self._aux_loss(y_n, y_hat_n, e_hat, aux_active)
        extras = self.family.extra_losses(self, y_n, enc, y_hat_n, step)
        loss = recon + step.aux_coef * aux + sum(extras.values(), torch.zeros((), device=y_n.device))
        mse = sse.detach() / y_n.numel() if sse is not None else (y_n - y_hat_n).float().pow(2).mean()
        y_hat = self._denormalize(y_hat_n, stats)
        scale = self._out_scale(enc.code.values)
        code = SparseCode(enc.code.values / scale, enc.code.indices)
        return ForwardOutput(y_hat, code, loss, mse, recon, aux, extras, enc)

    def _aux_loss(
        self, y_n: torch.Tensor, y_hat_n: torch.Tensor, e_hat: torch.Tensor | None, aux_active: torch.Tensor | None
    ) -> torch.Tensor:
        """AuxK (Gao et al.): dead latents reconstruct the detached residual, normalised by its variance."""
        if e_hat is None:
            return torch.zeros((), device=y_n.device)
        e = (y_n - y_hat_n).detach()
        loss = (e - e_hat).float().pow(2).sum() / batch_variance(e).clamp_min(1e-12)
        loss = torch.nan_to_num(loss, nan=0.0)
        # a code without a dead latent (all padding: no host sync decides whether AuxK runs) adds nothing
        return loss if aux_active is None else loss * aux_active

    # --- the cross-layer transcoder ---------------------------------------------------------
    def _encode_layers(self, x_n: torch.Tensor, dead: torch.Tensor | None, k_aux: int, **kw) -> list[Encoding]:
        """Each layer's encoding of normalised x_n [B, L, d_in] by its own family (dead: [L * n])."""
        n = self.cfg.latents
        xs = x_n.transpose(0, 1).contiguous()  # [L, B, d_in]: each layer's rows contiguous
        return [
            fam.encode(self._layer(i), xs[i], dead=None if dead is None else dead[i * n : (i + 1) * n], k_aux=k_aux, **kw)
            for i, fam in enumerate(self.families)
        ]

    def _clt_prediction(self, codes: list[SparseCode], x_n: torch.Tensor) -> torch.Tensor:
        """Normalised prediction [B, L, d_out] from the layers' normalised codes: decoders, b_dec, skip."""
        base = self.b_dec.expand(x_n.shape[0], -1, -1)
        skip = self._skip(x_n)
        return clt_decode(codes, self.decoders(), base if skip is None else base + skip)

    def _forward_clt(self, x_n: torch.Tensor, y_n: torch.Tensor, dead: torch.Tensor | None, step: TrainStep) -> ForwardOutput:
        """A CLT's training forward on normalised x_n, y_n [B, L, d]: each layer's FVU summed, plus AuxK's normalised
        error of each layer's residual summed."""
        n = self.cfg.latents
        encs = self._encode_layers(x_n, dead, step.k_aux)
        y_hat_n = self._clt_prediction([e.code for e in encs], x_n)
        sse = (y_hat_n - y_n).float().pow(2).sum(dim=(0, 2))  # [L]
        recon = _sum_of_layer_fractions(sse, y_n)
        auxes = [e.aux for e in encs if e.aux is not None]
        aux_code = join_codes(auxes, n) if len(auxes) == len(encs) else None
        aux = torch.zeros((), device=y_n.device)
        if aux_code is not None:
            e = (y_n - y_hat_n).detach()
            e_hat = clt_decode(auxes, self.decoders(), None)  # no b_dec: in y_hat
            aux = torch.nan_to_num(_sum_of_layer_fractions((e - e_hat).float().pow(2).sum((0, 2)), e), nan=0.0)
            aux = aux * aux_code.values.ne(0).any()  # all padding (no dead latent) adds nothing, without a host sync
        code = join_codes([e.code for e in encs], n)
        raw = SparseCode(code.values / self._layer_scale(code.values, code.indices), code.indices)
        loss = recon + step.aux_coef * aux
        mse = sse.sum().detach() / y_n.numel()
        return ForwardOutput(self._denormalize(y_hat_n, None), raw, loss, mse, recon, aux, {}, Encoding(code, aux_code))

    # --- training-time geometry ---------------------------------------------------------
    @torch.no_grad()
    def after_step(self, enc: Encoding, step: TrainStep) -> None:
        """Update the families' non-gradient state after the optimiser step (a CLT: each layer's own entries)."""
        if not self.cfg.is_clt:
            self.family.after_step(self, enc, step)
            return
        n = self.cfg.latents
        for i, fam in enumerate(self.families):
            aux = code_of_layer(enc.aux, i, n) if enc.aux is not None else None
            fam.after_step(self._layer(i), Encoding(code_of_layer(enc.code, i, n), aux), step)

    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        """Renormalise each feature's decoder (row; a CLT: its whole [L - l, d_out] block) after an optimiser step."""
        for W in self.decoders():
            flat = W.view(W.shape[0], -1)
            flat.div_(flat.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Remove from each feature's decoder gradient its component along the (unit) decoder."""
        for W in self.decoders():
            if W.grad is None:
                continue
            flat, grad = W.view(W.shape[0], -1), W.grad.view(W.shape[0], -1)
            parallel = (grad * flat).sum(dim=1, keepdim=True)
            grad -= parallel * flat

    def _scales_pending(self) -> bool:
        if self.centres_input and bool((self.input_offset != 0).any()):
            return True
        if self.cfg.normalize != "dataset_scalar":
            return False
        scales = [self.input_scale] + ([self.target_scale] if self.cfg.is_transcoder else [])
        return any(bool((s != 1.0).any()) for s in scales)

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold the dataset scales into the weights so the dictionary acts on raw activations.

        SAE: with pre' = pre / s the top-k set is unchanged and W_dec stays unit-norm: b_enc' = b_enc / s,
        b_dec' = b_dec / s, codes shrink by s, family state follows. Transcoder (input scale s, target scale t):
        pre' = pre / t, so W_enc' = W_enc s / t, b_enc' = b_enc / t, b_dec' = b_dec / t, W_skip' = W_skip s / t
        and W_dec is unchanged; a CLT does this per layer, and its decoder slice from layer l to l' also takes
        t_l / t_l' (so its decoders are no longer unit-norm once folded). A centred transcoder's input offset c
        goes first into the biases: (x_n - c) W_enc + b_enc = x_n W_enc + (b_enc - c W_enc), and the skip term's
        -c W_skip^T into b_dec; the offset is then zero, so every layout stays W_enc, b_enc, W_dec, b_dec (W_skip).
        """
        if not self._scales_pending():
            return
        if self.centres_input:
            c = self.input_offset.to(self.W_enc.dtype)
            self.b_enc.sub_(c @ self.W_enc)
            if self.cfg.skip:
                self.b_dec.sub_(c @ self.W_skip.T)
            self.input_offset.zero_()
        if not self.cfg.is_transcoder:
            s = float(self.input_scale)
            self.b_enc.div_(s)
            self.b_dec.div_(s)
            self.family.fold_scale(s)
            self.family.fold_input_scale(s)
            self.input_scale.fill_(1.0)
            return
        s_in, t_out = self.input_scale.double(), self.target_scale.double()
        dtype = self.W_enc.dtype
        if self.cfg.is_clt:
            self.W_enc.mul_((s_in / t_out).to(dtype)[:, None, None])
            self.b_enc.div_(t_out.to(dtype)[:, None])
            self.b_dec.div_(t_out.to(dtype)[:, None])
            if self.cfg.skip:
                self.W_skip.mul_((s_in / t_out).to(dtype)[:, None, None])
            for i, W in enumerate(self.decoders()):
                W.mul_((t_out[i] / t_out[i:]).to(dtype)[None, :, None])
        else:
            self.W_enc.mul_(float(s_in / t_out))
            self.b_enc.div_(float(t_out))
            self.b_dec.div_(float(t_out))
            if self.cfg.skip:
                self.W_skip.mul_(float(s_in / t_out))
        for i, fam in enumerate(self.families):
            fam.fold_scale(float(t_out.reshape(-1)[i]))
            fam.fold_input_scale(float(s_in.reshape(-1)[i]))
        self.input_scale.fill_(1.0)
        self.target_scale.fill_(1.0)

    def folded(self) -> SparseAutoencoder:
        """This dictionary acting on raw activations: itself when no dataset scale is pending, else a folded copy."""
        if self._scales_pending():
            copied = copy.deepcopy(self)
            copied.fold_input_scale()
            return copied
        return self

    # --- building from tensors ------------------------------------------------------------
    @classmethod
    def expected_tensors(cls, cfg: SAEConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """The tensors a dictionary of `cfg` holds, by file-level name (no 'family.' prefix, no scales; a CLT's
        family tensors stacked over its layers, [L, ...]), with shape and dtype; nothing is allocated."""
        check_size(cfg.d_in, cfg.n_features, "config")
        if cfg.is_transcoder:
            check_size(cfg.out_width, cfg.n_features * (cfg.layers + 1) // 2, "config")
        with torch.device("meta"):
            template = cls(cfg, device="meta")
        return {name: (t.shape, t.dtype) for name, t in _file_level(template.state_dict()).items()}

    @classmethod
    def from_tensors(
        cls,
        cfg: SAEConfig,
        tensors: dict[str, torch.Tensor],
        source: str | Path,
        *,
        device: torch.device | str | None = None,
        input_scale: Any = 1.0,
        target_scale: Any = 1.0,
    ) -> SparseAutoencoder:
        """A dictionary holding exactly `tensors` (file-level names), checked against `cfg`: the one place where
        tensors read from any file become a dictionary.

        Missing or extra tensors, wrong shapes and non-finite values raise ValueError naming `source`; each
        tensor is cast to the dtype the model holds it in (cfg.dtype for weights, fp32 for thresholds). The model
        is built on the meta device, so nothing is allocated before the tensors are found to fit. `input_scale`
        and `target_scale` (a transcoder's): a float, or one per layer for a CLT.
        """
        expected = cls.expected_tensors(cfg)
        missing = sorted(set(expected) - set(tensors))
        kind = "CLT" if cfg.is_clt else "transcoder" if cfg.is_transcoder else "dictionary"
        if missing:
            layers = [int(m.removeprefix("W_dec_")) for m in missing if m.startswith("W_dec_")]
            which = f" (the decoders of layers {layers} of its {cfg.layers})" if layers else ""
            raise ValueError(f"{source} lacks tensors {missing}{which}; a {cfg.family!r} {kind} needs {sorted(expected)}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ValueError(f"{source} holds tensors {extra} that a {cfg.family!r} {kind} has no place for")
        for name, (shape, _) in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(
                    f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
                    + shape_hint(cfg, name, tuple(tensors[name].shape))
                )
        check_tensors(tensors, source)
        with torch.device("meta"):  # the big matrices come from the file: no random init, no allocation here
            sae = cls(cfg, device="meta")
        sae._build_family()  # small, and may hold derived non-persistent buffers: built for real
        state = {}
        for name in sae.state_dict():
            if name in SCALES:
                continue
            file_name, layer = _file_name(name)
            value = tensors[file_name] if layer is None else tensors[file_name][layer]
            state[name] = value.to(dtype=expected[file_name][1]).contiguous()
        scale_shape = (cfg.layers,) if cfg.is_clt else ()
        state["input_scale"] = _scale_tensor(input_scale, scale_shape, "input_scale", source)
        if cfg.is_transcoder:
            state["target_scale"] = _scale_tensor(target_scale, scale_shape, "target_scale", source)
        if sae.centres_input:  # a file holds the offset folded into b_enc (and b_dec): none left to subtract
            state["input_offset"] = torch.zeros(cfg.d_in, dtype=torch.float32)
        sae.load_state_dict(state, assign=True)
        return sae.to(device) if device is not None else sae

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a file holds, by file-level name (no 'family.' prefix, no scales; a CLT's family tensors
        stacked over its layers), detached on the CPU."""
        return {name: t.detach().contiguous().cpu() for name, t in _file_level(self.state_dict()).items()}

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, format: str = "saelens") -> Path:
        """Write the dictionary in a registered file format (sae.formats), input scale folded in.

        "saelens" (the default, ours): cfg.json + sae_weights.safetensors; "saelens-strict" refuses families and
        normalisations that SAELens would misread instead of writing them; "sparsify" writes sparsify's
        cfg.json + sae.safetensors.
        """
        save = get_format(format, "save").save
        assert save is not None  # get_format(..., "save") returns only layouts that write
        return save(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        """Load a dictionary written by `save` (or a plain SAELens folder); for any layout, see `load_pretrained`."""
        load = get_format("saelens").load
        assert load is not None  # the saelens layout reads
        return load(Path(path), device=device, dtype=None)


def _sum_of_layer_fractions(sse: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum over layers l of sse[l] / the batch variance of y[:, l]: each layer's FVU, summed."""
    return sum((sse[i] / batch_variance(y[:, i]).clamp_min(1e-12) for i in range(y.shape[1])), torch.zeros((), device=y.device))


def _centres(cfg: SAEConfig, family: Family) -> bool:
    """Whether a dictionary of `cfg` centres its input (`SparseAutoencoder.centres_input`): a transcoder, not a
    CLT, whose family's only map of the input is the base pre-activation x W_enc + b_enc (b_enc then absorbs the
    offset on save; a family with maps of its own, or without b_enc, is left uncentred)."""
    if not cfg.is_transcoder or cfg.is_clt or not family.uses_b_enc:
        return False
    kind = type(family)
    return kind.pre is Family.pre and kind.fold_input_scale is Family.fold_input_scale


def _offset_of_older_state(module, state: dict, prefix: str, *args, **kwargs) -> None:
    """A state dict written before transcoders were centred (a checkpoint of an older run) holds no input offset:
    it reads as zero, the uncentred encoder it was trained with."""
    key = prefix + "input_offset"
    if key not in state and prefix + "W_enc" in state:
        state[key] = torch.zeros(module.cfg.d_in, dtype=torch.float32, device=state[prefix + "W_enc"].device)


def _unit_columns(d: int, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """A random [d, n] float64 matrix with unit-norm columns (an encoder that cannot be tied to its decoder)."""
    W = torch.randn(d, n, generator=gen, dtype=torch.float64)
    return W / W.norm(dim=0, keepdim=True)


def _file_name(state_name: str) -> tuple[str, int | None]:
    """(file-level name, layer) of a state-dict entry: a CLT's per-layer family tensor is one layer of a stack."""
    if state_name.startswith(LAYER_FAMILY + "."):
        _, layer, rest = state_name.split(".", 2)
        return rest, int(layer)
    return state_name.removeprefix(FAMILY_PREFIX), None


def _file_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict by file-level names: scales left out, a CLT's per-layer family tensors stacked [L, ...]."""
    return layer_family_tensors({n: t for n, t in state.items() if n not in SCALES}, _file_name)


def _scale_tensor(value: Any, shape: tuple[int, ...], name: str, source: str | Path) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    want = shape[0] if shape else 1
    if t.numel() not in (1, want):
        raise ValueError(f"{source}: {name} has {t.numel()} values; expected 1 or {want}")
    return t.expand(want).clone().reshape(shape)


def shape_hint(cfg: SAEConfig, name: str, got: tuple[int, ...]) -> str:
    """Why a tensor's shape is wrong, where the config's widths tell (a W_skip for another pair of widths, a
    decoder for another d_out), as a clause to append to the error; "" otherwise."""
    if name == "W_skip" and len(got) >= 2:
        return f" ([d_out={cfg.out_width}, d_in={cfg.d_in}]{' per layer' if cfg.is_clt else ''})"
    if (name == "W_dec" or name.startswith("W_dec_")) and cfg.is_transcoder and got and got[-1] != cfg.out_width:
        return f" (the file's decoder writes {got[-1]} dimensions, the config's d_out={cfg.out_width})"
    return ""
