"""`shard`: the latents split across ranks, each holding its slice of W_enc, b_enc, W_dec and their Adam state.

Forward on the same batch on every rank: each rank computes its pre-activations [B, n/R], picks its
local top-k candidates (values and global indices, B x k per rank; B*k for the batch rules), the
candidates are all-gathered and every rank picks the same global top-k from them; each rank decodes
the selected latents it owns and the partial reconstructions [B, d] are all-reduced. Backward mirrors
it: the gradient of the reconstruction reaches every rank whole, each rank's encoder gradient reaches
only its own latents, and the gradient of the shared input (x - b_dec) is summed over ranks.
AuxK selects among dead latents the same way. Checkpoints and the saved dictionary are gathered whole.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import kernels
from kernels import Encoding, SparseCode, code_from_mask, pre_activations, with_gradient
from sae.distributed.comm import Communicator
from sae.families import FAMILIES, TrainStep, get_family
from sae.model import ForwardOutput, SparseAutoencoder

# sharded parameter -> the dimension along the latents
SHARDED = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
RULE_NAMES = {"row": "row top-k", "batch": "batch top-k·B", "abs": "top-k by magnitude"}


def shard_rule(family: str, options: dict[str, Any]) -> str:
    """The distributed selection rule of a family's training forward (its `Family.shard_rule`); other families
    are refused."""
    rule = get_family(family).shard_rule(options)
    if rule is None:
        ables = [f"{RULE_NAMES.get(r, r)} ({name})" for name, f in FAMILIES.items() if (r := f.shard_rule({})) is not None]
        able = ", ".join(ables[:-1]) + " or " + ables[-1] if len(ables) > 1 else "".join(ables)
        raise ValueError(
            f"--distributed shard needs a selection that splits over latents: {able}; family {family!r} selects otherwise"
        )
    return rule


class _SumOverShards(torch.autograd.Function):
    """Forward: the sum of the ranks' partial reconstructions; backward: the gradient, already whole on every rank."""

    @staticmethod
    def forward(ctx, part: torch.Tensor) -> torch.Tensor:
        out = part.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _IntoShards(torch.autograd.Function):
    """Forward: the replicated encoder input as it is; backward: the ranks' gradients summed (each saw its latents)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _all_gather_cat(t: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim)


def _pack_rows(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, B: int) -> SparseCode:
    """A fixed-width code from (row, latent, value) triples; rows padded with zeros to the widest."""
    order = torch.argsort(rows, stable=True)
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = torch.bincount(rows, minlength=B)
    width = max(int(counts.max().item()) if rows.numel() else 0, 1)
    pos = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    values = vals.new_zeros(B, width)
    indices = torch.zeros(B, width, dtype=torch.long, device=rows.device)
    values[rows, pos] = vals
    indices[rows, pos] = cols
    return SparseCode(values, indices)


def _rule(rule: str) -> kernels.Rule:
    """The kernels rule whose key and values a shard rule takes: "abs-batch" (AbsTopK's batch variant) ranks
    and keeps as "abs" does, over the batch."""
    return kernels.RULES["abs" if rule.startswith("abs") else rule]


def _score(v: torch.Tensor, rule: str) -> torch.Tensor:
    return _rule(rule).score(v)


def _value(v: torch.Tensor, rule: str) -> torch.Tensor:
    return _rule(rule).value(v)


def select_sharded(pre: torch.Tensor, rule: str, k: int, lo: int, n: int) -> tuple[SparseCode, SparseCode]:
    """Global selection from this rank's pre-activations [B, n_r] (latents lo..lo+n_r of n):
    (this rank's code, local indices, gradients to `pre`; the whole code, global indices, detached)."""
    B, n_r = pre.shape
    score = _score(pre.detach(), rule)
    if rule in ("row", "abs"):
        kk = min(k, n_r)
        local_i = score.topk(kk, dim=1).indices
        cand_v = _all_gather_cat(pre.detach().gather(1, local_i), 1)  # [B, R*kk]
        cand_i = _all_gather_cat(local_i + lo, 1)
        pos = _score(cand_v, rule).topk(k, dim=1).indices
        g_idx, g_val = cand_i.gather(1, pos), _value(cand_v.gather(1, pos), rule)
        owned = (g_idx >= lo) & (g_idx < lo + n_r)
        l_idx = torch.where(owned, g_idx - lo, torch.zeros_like(g_idx))
        l_val = torch.where(owned, _value(pre.gather(1, l_idx), rule), 0.0)
        return SparseCode(l_val, l_idx), SparseCode(g_val, g_idx)
    # batch rules: the k*B best entries of the whole batch
    flat = score.flatten()
    local_p = flat.topk(min(k * B, flat.numel()), sorted=False).indices
    cand_v = _all_gather_cat(pre.detach().flatten()[local_p], 0)
    cand_key = _all_gather_cat((local_p // n_r) * n + local_p % n_r + lo, 0)  # row * n + global latent
    pos = _score(cand_v, rule).topk(min(k * B, B * n), sorted=False).indices
    key, val = cand_key[pos], _value(cand_v[pos], rule)
    rows, cols = key // n, key % n
    owned = (cols >= lo) & (cols < lo + n_r)
    mask = torch.zeros(B, n_r, dtype=torch.bool, device=pre.device)
    mask[rows[owned], cols[owned] - lo] = True
    return code_from_mask(_value(pre, rule), mask), _pack_rows(rows, cols, val, B)


def sharded_forward(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    dead: torch.Tensor | None,
    lo: int,
    rule: str,
    step: TrainStep | None = None,
) -> ForwardOutput:
    """The training forward of a latent-sharded dictionary (every rank calls it on the same batch).

    As the single-process twin, the dense [B, n/R] pre-activations are computed without autograd and only
    the selected entries (main and AuxK) are read again with gradient (`_GatherPre`), so the backward is
    B*k*d work rather than two B*(n/R)*d matmuls."""
    step = step or TrainStep()
    n, n_r = sae.cfg.latents, sae.W_dec.shape[0]
    x_n, stats = sae._prepare(x)
    x_in = _IntoShards.apply(x_n - sae.b_dec)
    b_enc = sae.b_enc if sae.family.uses_b_enc else None
    pre = pre_activations(x_in, sae.W_enc, b_enc)
    local, whole = select_sharded(pre, rule, sae.family.k, lo, n)
    signed = rule.startswith("abs")
    aux_local, aux_whole = None, None
    n_dead = int(dead.sum().item()) if dead is not None else 0
    if dead is not None and n_dead and step.k_aux > 0:
        mine = dead[lo : lo + n_r]
        masked = torch.where(mine, pre, 0.0 if signed else float(torch.finfo(pre.dtype).min))
        aux_local, aux_whole = select_sharded(masked, "abs" if signed else "row", min(step.k_aux, n_dead), lo, n)
    if torch.is_grad_enabled():
        local, aux_local = with_gradient(
            x_in, sae.W_enc, b_enc, pre, Encoding(local, aux_local), relu=not signed, aux_relu=not signed
        )
    x_hat_n = _SumOverShards.apply(kernels.decode(local, sae.W_dec)) + sae.b_dec
    e_hat = None if aux_local is None else _SumOverShards.apply(kernels.decode(aux_local, sae.W_dec))
    return sae.assemble(x_n, stats, Encoding(whole, aux_whole), x_hat_n, e_hat, step=step)


class LatentShard(Communicator):
    """`shard`: rank r holds latents [r*n/R, (r+1)*n/R); every rank reads the same batches."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def prepare(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        if sae.cfg.is_transcoder:
            raise ValueError(
                "--distributed shard splits an SAE's latents over ranks that each reconstruct the same input; it "
                "does not carry a transcoder's target or skip term: train transcoders with --distributed ddp or none"
            )
        self.rule = shard_rule(sae.cfg.family, sae.cfg.options)
        n, k = sae.cfg.latents, sae.family.k
        if n % self.world:
            raise ValueError(
                f"--distributed shard splits the latents evenly: n_latents={n} is not a multiple of the {self.world} ranks"
            )
        if k > n // self.world:
            raise ValueError(f"--distributed shard needs k <= n_latents / ranks: k={k} > {n} / {self.world}")
        self.n_r = n // self.world
        self.lo = self.rank * self.n_r
        self.names = [name for name, _ in sae.named_parameters()]
        with torch.no_grad():
            for t in [*sae.parameters(), *sae.buffers()]:
                dist.broadcast(t, 0)
            for name, dim in SHARDED.items():
                setattr(sae, name, nn.Parameter(self._slice(getattr(sae, name).detach(), dim)))
        return sae

    def _slice(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.narrow(dim, self.lo, self.n_r).clone()

    def forward(
        self,
        sae: SparseAutoencoder,
        x: torch.Tensor,
        dead: torch.Tensor | None,
        step: TrainStep | None = None,
        target: torch.Tensor | None = None,
    ) -> ForwardOutput:
        return sharded_forward(sae, x, dead, self.lo, self.rule, step)

    def reduce_grads(self, sae: SparseAutoencoder) -> None:
        # b_dec's gradient is whole on every rank by construction; averaging keeps the copies bit-identical
        if sae.b_dec.grad is not None:
            dist.all_reduce(sae.b_dec.grad)
            sae.b_dec.grad /= self.world

    def _map(self, state: dict[str, Any], fn) -> dict[str, Any]:
        """A copy of a trainer state with fn(tensor, dim) applied to every sharded tensor (weights, Adam moments)."""
        out = dict(state)
        out["sae"] = {k: fn(v, SHARDED[k]) if k in SHARDED else v for k, v in state["sae"].items()}
        opt = dict(state["opt"])
        opt["state"] = {
            i: {key: fn(v, SHARDED[self.names[i]]) if self.names[i] in SHARDED and v.dim() > 0 else v for key, v in s.items()}
            for i, s in state["opt"]["state"].items()
        }
        out["opt"] = opt
        return out

    def gather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._map(state, _all_gather_cat)

    def local_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._map(state, self._slice)

    def whole_model(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        whole = SparseAutoencoder(sae.cfg, device=sae.W_dec.device)
        state = sae.state_dict()
        whole.load_state_dict({k: _all_gather_cat(v, SHARDED[k]) if k in SHARDED else v for k, v in state.items()})
        return whole
