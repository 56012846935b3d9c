"""SparseAutoencoder: one module for every family (a family = selection rule + optional loss)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import kernels
from kernels import Encoding, SparseCode
from sae.config import SAEConfig
from sae.families import TrainStep, get_family
from sae.io import check_size, check_tensors, get_format
from sae.losses import batch_variance
from sae.normalize import denormalize, normalize

FAMILY_PREFIX = "family."  # state-dict prefix of the family's tensors; files hold them without it


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

    input_scale: torch.Tensor  # buffer [], fp32

    def __init__(self, cfg: SAEConfig, device: torch.device | str = "cpu", seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.latents
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
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.cfg.latents):
            raise ValueError(
                f"encode: k={k!r}; expected an int with 1 <= k <= n_latents={self.cfg.n_latents} (or no k for the configured one)"
            )
        x_n, _ = self._prepare(x)
        code = self.family.encode(self, x_n, **kw).code
        return SparseCode(code.values / self._out_scale(code.values), code.indices)

    def encode_dense(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Dense code [B, n], zeros where inactive."""
        return self.encode(x, **kw).to_dense(self.cfg.latents)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Reconstruction from a raw-space code (per-token normalisations return normalised space)."""
        b_dec = self.b_dec / self._out_scale(self.b_dec)
        return kernels.decode(code, self.W_dec, b_dec)

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None, step: TrainStep | None = None) -> ForwardOutput:
        """Encode, decode and compute the training loss; `dead` [n] bool enables AuxK; `step` (from the trainer)
        gives AuxK's settings and where the run stands (default: TrainStep(), AuxK's defaults at the start)."""
        step = step or TrainStep()
        x_n, stats = self._prepare(x)
        enc: Encoding = self.family.encode(self, x_n, dead=dead, k_aux=step.k_aux)
        # the squared error comes with the decode: on Triton one gather of W_dec serves forward and backward
        x_hat_n, sse = kernels.decode_sse(enc.code, self.W_dec, self.b_dec, x_n)
        e_hat = kernels.decode(enc.aux, self.W_dec) if enc.aux is not None else None  # no b_dec: in x_hat
        return self.assemble(x_n, stats, enc, x_hat_n, e_hat, sse, step=step)

    def assemble(
        self,
        x_n: torch.Tensor,
        stats,
        enc: Encoding,
        x_hat_n: torch.Tensor,
        e_hat: torch.Tensor | None,
        sse: torch.Tensor | None = None,
        step: TrainStep | None = None,
    ) -> ForwardOutput:
        """Losses and outputs from a forward's pieces (shared with the latent-sharded forward):
        x_hat_n the reconstruction and e_hat the AuxK reconstruction of the residual, in normalised space;
        sse, sum |x_n - x_hat_n|^2, when the decoder computed it."""
        step = step or TrainStep()
        recon = self.family.recon_loss(self, x_n, enc, x_hat_n, sse=sse)
        aux_active = enc.aux.values.ne(0).any() if enc.aux is not None else None
        aux = self._aux_loss(x_n, x_hat_n, e_hat, aux_active)
        extras = self.family.extra_losses(self, x_n, enc, x_hat_n, step)
        loss = recon + step.aux_coef * aux + sum(extras.values(), torch.zeros((), device=x_n.device))
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
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

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
        self.b_enc.div_(s)
        self.b_dec.div_(s)
        self.family.fold_scale(s)
        self.input_scale.fill_(1.0)

    def folded(self) -> SparseAutoencoder:
        """This dictionary acting on raw activations: itself when no dataset scale is pending, else a folded copy."""
        if self.cfg.normalize == "dataset_scalar" and float(self.input_scale) != 1.0:
            copied = copy.deepcopy(self)
            copied.fold_input_scale()
            return copied
        return self

    # --- building from tensors ------------------------------------------------------------
    @classmethod
    def expected_tensors(cls, cfg: SAEConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """The tensors a dictionary of `cfg` holds, by file-level name (no 'family.' prefix, no input_scale), with
        shape and dtype; nothing is allocated."""
        check_size(cfg.d_in, cfg.n_latents, "config")
        with torch.device("meta"):
            template = cls(cfg, device="meta")
        return {_file_name(n): (t.shape, t.dtype) for n, t in template.state_dict().items() if n != "input_scale"}

    @classmethod
    def from_tensors(
        cls,
        cfg: SAEConfig,
        tensors: dict[str, torch.Tensor],
        source: str | Path,
        *,
        device: torch.device | str | None = None,
        input_scale: float = 1.0,
    ) -> SparseAutoencoder:
        """A dictionary holding exactly `tensors` (file-level names), checked against `cfg`: the one place where
        tensors read from any file become a dictionary.

        Missing or extra tensors, wrong shapes and non-finite values raise ValueError naming `source`; each
        tensor is cast to the dtype the model holds it in (cfg.dtype for weights, fp32 for thresholds). The model
        is built on the meta device, so nothing is allocated before the tensors are found to fit.
        """
        expected = cls.expected_tensors(cfg)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ValueError(f"{source} lacks tensors {missing}; a {cfg.family!r} dictionary needs {sorted(expected)}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ValueError(f"{source} holds tensors {extra} that a {cfg.family!r} dictionary has no place for")
        for name, (shape, _) in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
        check_tensors(tensors, source)
        with torch.device("meta"):  # the big matrices come from the file: no random init, no allocation here
            sae = cls(cfg, device="meta")
        sae.family = get_family(cfg.family)(cfg)  # small, and may hold derived non-persistent buffers: built for real
        family_names = {_file_name(n) for n in sae.state_dict() if n.startswith(FAMILY_PREFIX)}
        state = {
            (FAMILY_PREFIX + n if n in family_names else n): tensors[n].to(dtype=dtype).contiguous()
            for n, (_, dtype) in expected.items()
        }
        state["input_scale"] = torch.tensor(float(input_scale), dtype=torch.float32)
        sae.load_state_dict(state, assign=True)
        return sae.to(device) if device is not None else sae

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a file holds, by file-level name (no 'family.' prefix, no input_scale), detached on the CPU."""
        return {_file_name(n): t.detach().contiguous().cpu() for n, t in self.state_dict().items() if n != "input_scale"}

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


def _file_name(state_name: str) -> str:
    return state_name.removeprefix(FAMILY_PREFIX)
