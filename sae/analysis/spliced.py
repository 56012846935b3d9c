"""The evaluation measure of the dictionary spliced into its model (definitions: `sae.analysis.evaluate`).

For each held-out batch: the clean forward, then the hook's activation replaced by the reconstruction
(at scored positions), by reconstruction + error, by zero and by the mean activation (at every position).
A transcoder replaces its target hook (by its prediction from its input hook; the ablations zero or mean-ablate
the target: for an MLP's output, the model without that MLP, or with its average output), a CLT every layer's
target hook at once (the replacement model; the ablations: every one of its MLPs).
Causal LMs are scored by next-token cross-entropy and KL to the clean run, encoders by cosine of the final
hidden states and of the pooled embedding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from activations.models import Edit
from sae.analysis.interventions import splice_edits
from sae.analysis.measures import HeldOut

__all__ = ["spliced"]


class _Downstream:
    """Sums over scored positions of CE / KL (causal) or cosines (encoder), per condition."""

    def __init__(self, causal: bool) -> None:
        self.causal = causal
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def _add(self, key: str, values: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + values.double().sum().item()
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def add(self, name: str, ids: torch.Tensor, keep: torch.Tensor, clean: torch.Tensor, out: torch.Tensor) -> None:
        """`clean`: the clean run's log-probabilities (causal) or final hidden states (encoder)."""
        keep = keep.to(out.device)
        if self.causal:
            logp = out.float().log_softmax(-1)
            target = ids[:, 1:].to(out.device)
            ce = -logp[:, :-1].gather(-1, target[..., None])[..., 0]
            self._add(f"ce_loss_{name}", ce[keep[:, :-1]])
            if name != "clean":
                kl = (clean.exp() * (clean - logp)).sum(-1)  # KL(clean || edited) per position
                self._add(f"kl_div_{name}", kl[keep])
        elif name != "clean":
            self._add(f"hidden_cos_{name}", F.cosine_similarity(out.float(), clean.float(), dim=-1)[keep])
            pooled = F.cosine_similarity(out.float().mean(1), clean.float().mean(1), dim=-1)
            self._add(f"embedding_cos_{name}", pooled)

    def result(self) -> dict[str, float]:
        m = {k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}
        for abl in ("zero_ablation", "mean_ablation"):
            short = abl.split("_")[0]
            if self.causal:
                m[f"loss_recovered_{short}"] = _recovered(m[f"ce_loss_{abl}"], m["ce_loss_spliced"], m["ce_loss_clean"])
            else:
                for what in ("embedding", "hidden"):
                    m[f"{what}_recovered_{short}"] = _recovered(1 - m[f"{what}_cos_{abl}"], 1 - m[f"{what}_cos_spliced"], 0.0)
        if self.causal:
            m["kl_div_score"] = _recovered(m["kl_div_zero_ablation"], m["kl_div_spliced"], 0.0)
        return m


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    """(ablated - spliced) / (ablated - clean): 1 = as good as clean, 0 = as bad as the ablation."""
    gap = ablated - clean
    return (ablated - spliced) / gap if gap != 0 else math.nan


@torch.no_grad()
def spliced(run: HeldOut) -> dict[str, Any]:
    """CE / KL (causal LM) or cosines (encoder) of the clean, spliced and ablated model, and what is recovered."""
    sae, model, fit, mean = run.sae, run.model, run.hooks, run.mean.float()
    means = mean if sae.cfg.is_clt else mean[None]  # [targets, d]

    def ablated(kind: str) -> dict[str, Edit]:
        def edit(i: int) -> Edit:
            if kind == "zero":
                return torch.zeros_like
            return lambda a: means[i].to(a.device, a.dtype).expand_as(a).clone()

        return {t: edit(i) for i, t in enumerate(fit.targets)}

    acc = _Downstream(model.is_causal)
    for ids, keep in tqdm(run.batches, desc="eval: spliced", unit="batch", disable=not run.progress, leave=False):
        clean = model.forward(ids)
        acc.add("clean", ids, keep, clean, clean)
        if model.is_causal:
            clean = clean.float().log_softmax(-1)
        conditions = {
            "spliced": splice_edits(sae, fit, mask=keep),
            "spliced_with_error": splice_edits(sae, fit, error_term=True, mask=keep),
            "zero_ablation": ablated("zero"),
            "mean_ablation": ablated("mean"),
        }
        for name, edits in conditions.items():
            acc.add(name, ids, keep, clean, model.forward(ids, edits))
    out: dict[str, Any] = {**acc.result()}
    out["eval_model_kind"] = "causal" if model.is_causal else "encoder"
    if fit.paired:
        out["spliced_hooks"] = list(fit.targets)
    return out
