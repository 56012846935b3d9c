"""SparseAutoencoder: one module for every family (a family = selection rule + optional loss)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.config import SAEConfig
from sae.distributed.batch import batch_variance
from sae.families import get_family
from sae.normalize import denormalize, normalize


class ForwardOutput(NamedTuple):
    """What one forward pass returns; losses are in the dictionary's normalised space."""

    x_hat: torch.Tensor  # [B, d] reconstruction of the raw input
    code: SparseCode
    loss: torch.Tensor  # total: recon + aux_coef * aux + family extras
    mse: torch.Tensor  # mean squared error per element (normalised space)
    fvu: torch.Tensor  # reconstruction term: fraction of variance unexplained
    aux_loss: torch.Tensor  # AuxK term before its coefficient
    extras: dict[str, torch.Tensor]
    enc: Encoding  # the code in normalised space, with the AuxK code (for family state updates)


class SparseAutoencoder(nn.Module):
    """Sparse autoencoder with SAELens-shaped parameters: W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d]."""

    def __init__(self, cfg: SAEConfig, device: torch.device | str = "cpu", seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.n_latents
        assert n is not None
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(n, d, generator=gen, dtype=torch.float64)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        dtype = cfg.torch_dtype
        self.W_dec = nn.Parameter(W_dec.to(dtype=dtype, device=device))
        self.W_enc = nn.Parameter(W_dec.T.contiguous().to(dtype=dtype, device=device))  # tied init
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        # dataset-wide input scale (E|s x|^2 = d); 1 once folded into the weights
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        self.family = get_family(cfg.family)(cfg).to(device)
        self.train_progress = 0.0  # fraction of training done; the trainer sets it (schedules such as KL warm-up)

    # --- shape checks -----------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"activations of shape {tuple(x.shape)} do not fit this dictionary: expected [batch, d_in={self.cfg.d_in}]"
            )
        if x.shape[0] == 0:
            raise ValueError("empty batch: activations have 0 rows")

    def _prepare(self, x: torch.Tensor):
        self._check_input(x)
        x = x.to(dtype=self.W_enc.dtype, device=self.W_enc.device)
        return normalize(x, self.cfg.normalize, self.input_scale.to(x.dtype))

    def _out_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Factor from normalised-space codes to raw-space codes (only dataset_scalar rescales)."""
        if self.cfg.normalize == "dataset_scalar":
            return self.input_scale.to(x.dtype)
        return torch.ones((), dtype=x.dtype, device=x.device)

    # --- public API ---------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (x - b_dec) W_enc + b_enc for raw activations x: [B, n]."""
        x_n, _ = self._prepare(x)
        pre = self.family.pre(self, x_n)
        return pre / self._out_scale(pre)

    def encode(self, x: torch.Tensor, **kw) -> SparseCode:
        """Sparse code of raw activations x [B, d]: values [B, w], indices [B, w].

        `k=` asks for another number of active latents where the family allows it; a k that is not
        an int in [1, n_latents] is refused (k=0 would otherwise fall back to the configured k)."""
        k = kw.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.cfg.n_latents):
            raise ValueError(f"encode: k={k!r}; expected an int with 1 <= k <= n_latents={self.cfg.n_latents} "
                             "(or no k for the configured one)")
        x_n, _ = self._prepare(x)
        code = self.family.encode(self, x_n, **kw).code
        return SparseCode(code.values / self._out_scale(code.values), code.indices)

    def encode_dense(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Dense code [B, n], zeros where inactive."""
        return self.encode(x, **kw).to_dense(self.cfg.n_latents)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Reconstruction from a raw-space code (per-token normalisations return normalised space)."""
        b_dec = self.b_dec / self._out_scale(self.b_dec)
        return kernels.decode(code, self.W_dec, b_dec)

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> ForwardOutput:
        """Encode, decode and compute the training loss; `dead` [n] bool enables AuxK."""
        x_n, stats = self._prepare(x)
        enc: Encoding = self.family.encode(self, x_n, dead=dead)
        # the squared error comes with the decode: on Triton one gather of W_dec serves forward and backward
        x_hat_n, sse = kernels.decode_sse(enc.code, self.W_dec, self.b_dec, x_n)
        e_hat = kernels.decode(enc.aux, self.W_dec) if enc.aux is not None else None  # no b_dec: in x_hat
        return self.assemble(x_n, stats, enc, x_hat_n, e_hat, sse)

    def assemble(
        self, x_n: torch.Tensor, stats, enc: Encoding, x_hat_n: torch.Tensor, e_hat: torch.Tensor | None,
        sse: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """Losses and outputs from a forward's pieces (shared with the latent-sharded forward):
        x_hat_n the reconstruction and e_hat the AuxK reconstruction of the residual, in normalised space;
        sse, sum |x_n - x_hat_n|^2, when the decoder computed it."""
        recon = self.family.recon_loss(self, x_n, enc, x_hat_n, sse=sse)
        aux_active = enc.aux.values.ne(0).any() if enc.aux is not None else None
        aux = self._aux_loss(x_n, x_hat_n, e_hat, aux_active)
        extras = self.family.extra_losses(self, x_n, enc, x_hat_n)
        loss = recon + self.cfg.aux_coef * aux + sum(extras.values(), torch.zeros((), device=x_n.device))
        mse = sse.detach() / x_n.numel() if sse is not None else (x_n - x_hat_n).float().pow(2).mean()
        x_hat = denormalize(x_hat_n, self.cfg.normalize, self.input_scale.to(x_hat_n.dtype), stats)
        scale = self._out_scale(enc.code.values)
        code = SparseCode(enc.code.values / scale, enc.code.indices)
        return ForwardOutput(x_hat, code, loss, mse, recon, aux, extras, enc)

    def _aux_loss(
        self, x_n: torch.Tensor, x_hat_n: torch.Tensor, e_hat: torch.Tensor | None, aux_active: torch.Tensor | None
    ) -> torch.Tensor:
        """AuxK (Gao et al.): dead latents reconstruct the detached residual, normalised by its variance."""
        if e_hat is None:
            return torch.zeros((), device=x_n.device)
        e = (x_n - x_hat_n).detach()
        loss = (e - e_hat).float().pow(2).sum() / batch_variance(e).clamp_min(1e-12)
        loss = torch.nan_to_num(loss, nan=0.0)
        # a code without a dead latent (all padding: no host sync decides whether AuxK runs) adds nothing
        return loss if aux_active is None else loss * aux_active

    # --- training-time geometry ---------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        """Renormalise decoder rows after an optimiser step."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Remove from each decoder row's gradient its component along the (unit) row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold the dataset scale into the weights so the dictionary acts on raw activations.

        With pre' = pre / s the top-k set is unchanged and W_dec stays unit-norm:
        b_enc' = b_enc / s, b_dec' = b_dec / s, codes shrink by s, family state follows.
        """
        if self.cfg.normalize != "dataset_scalar":
            return
        s = float(self.input_scale)
        if s == 1.0:
            return
        self.b_enc /= s
        self.b_dec /= s
        self.family.fold_scale(s)
        self.input_scale.fill_(1.0)

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, format: str = "saelens") -> Path:
        """Write cfg.json and sae_weights.safetensors (SAELens layout), input scale folded in.

        format="sparsify" writes sparsify's cfg.json + sae.safetensors; "saelens-strict" refuses families
        and normalisations that SAELens would misread instead of writing them.
        """
        from sae.io import save_sae

        return save_sae(self, path, format=format)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        """Load a dictionary written by `save`."""
        from sae.io import load_sae

        return load_sae(path, device=device)
