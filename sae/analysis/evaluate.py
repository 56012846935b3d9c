"""Evaluation of a dictionary: reconstruction on held-out activations, and the model with it spliced in.

Definitions (SAEBench "core" / SAELens `get_recons_loss`, where they have one):
- reconstruction over held-out token positions (BOS/CLS/SEP/PAD excluded): FVU = sum|x - x_hat|^2 /
  sum|x - mean x|^2 (Gao et al.; 1 - explained variance), MSE per element, mean cosine(x, x_hat), L0
  (mean and per-token distribution), dead latents (never fired in the evaluation), dense latents
  (fire on more than 10% of tokens), per-latent firing frequency (the log10 density histogram).
- spliced into a causal LM at the hook (SAEBench: the reconstruction replaces the activation at
  non-special positions; the ablations replace it at every position): next-token cross-entropy of
  the clean model, with the reconstruction, with reconstruction + error (must equal clean), with the
  hook zero-ablated and mean-ablated (the hook's mean activation over the evaluation tokens);
  loss recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean) for each ablation;
  KL(clean || spliced) of the next-token distributions, and SAEBench's kl_div_score =
  (KL_zero - KL_spliced) / KL_zero. Averages over the positions whose token is not special.
- spliced into an encoder (the embedded MiniLM, a sentence-embedding model): cosine of the pooled
  embedding (mean over the context's tokens, normalised, as sentence-transformers pools) and of the
  final-layer hidden states with the clean ones; embedding recovered = (cos_spliced - cos_ablated) /
  (1 - cos_ablated) for each ablation, the loss-recovered scale with 1 - cos as the loss.

The held-out tokens are the first `tokens` non-special positions of a `TextSource` (by default the
dataset's `test` split), packed into `context_len` contexts exactly as the activation stream packs them:
the same arguments always score the same tokens, whatever the seed or batch size.

The reconstruction metrics come from the pass itself; everything else is a registered measure
(`sae.analysis.measures`): `geometry` and `spliced` here, in that order, then any registered later.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from activations.models import ModelAdapter
from activations.source import TextSource, as_source
from sae.analysis.interventions import fit_hooks
from sae.analysis.measures import MEASURES, HeldOut, register_measure
from sae.analysis.spliced import spliced as spliced_measure
from sae.checkpoint import atomic_write
from sae.model import SparseAutoencoder

__all__ = [
    "DENSE_THRESHOLD",
    "HELD_OUT",
    "ReconstructionStats",
    "VarianceAccumulator",
    "evaluate",
    "held_out_contexts",
    "reconstruction_metrics",
    "write_evaluation",
]

DENSE_THRESHOLD = 0.1  # a latent firing on more than this fraction of tokens is "dense" (SAEBench)
SAMPLE_TOKENS = 4096  # activations kept for the AFA measures
DEFAULT_EVAL_TOKENS = 65_536  # held-out positions scored when no number is asked: all the split holds, up to this
HELD_OUT = TextSource(split="test")  # what a dataset given on its own is read as: its held-out split


class VarianceAccumulator:
    """Streams sum|x|^2 and sum x so the total variance of many batches is exact (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_sq = 0.0
        self.sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.sum_sq += x.pow(2).sum().item()
        s = x.sum(0)
        self.sum = s if self.sum is None else self.sum + s

    @property
    def mean(self) -> torch.Tensor:
        assert self.sum is not None
        return self.sum / self.n

    @property
    def total_variance(self) -> float:
        """sum over tokens of |x - mean|^2."""
        assert self.sum is not None
        return self.sum_sq - self.sum.pow(2).sum().item() / self.n


class ReconstructionStats:
    """Reconstruction metrics of one dictionary, accumulated batch by batch of raw activations [N, d] (a
    transcoder: of (x, y) pairs, its target's metrics; a CLT: x [N, L, d_in], y [N, L, d_out], per layer)."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        self.sae = sae
        n, dev = sae.cfg.n_features, sae.W_enc.device
        self.vars = [VarianceAccumulator() for _ in range(sae.cfg.layers)]  # of the target, per layer
        self.errs = [0.0] * sae.cfg.layers
        self.cos = 0.0
        self.fired = torch.zeros(n, dtype=torch.float64, device=dev)  # tokens each latent fired on
        self.act_sum = torch.zeros(n, dtype=torch.float64, device=dev)  # sum of each latent's activation
        self.abs_sum = torch.zeros(n, dtype=torch.float64, device=dev)  # sum of its magnitude
        self.l0: list[torch.Tensor] = []
        self.sample: list[torch.Tensor] = []  # the first SAMPLE_TOKENS inputs (AFA measures)

    @property
    def var(self) -> VarianceAccumulator:
        """The target's variance accumulator (a CLT: its first layer's; `vars` holds each layer's)."""
        return self.vars[0]

    @property
    def target_mean(self) -> torch.Tensor:
        """Mean of the target over the tokens seen [d] (a CLT: [L, d])."""
        means = torch.stack([v.mean for v in self.vars])
        return means if self.sae.cfg.is_clt else means[0]

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """One batch: raw inputs x, and for a transcoder its raw targets y (an SAE's target is x)."""
        dev = self.sae.W_enc.device
        x = x.to(device=dev)
        if self.sae.cfg.is_transcoder:
            if y is None:
                raise ValueError("a transcoder's reconstruction metrics need its targets: add(x, y)")
            y = y.to(device=dev)
            out = self.sae(x, target=y)
        else:
            out = self.sae(x)
            y = x
        y64, y_hat = y.double(), out.x_hat.double()
        if not self.sae.cfg.is_clt:
            y64, y_hat = y64[:, None], y_hat[:, None]
        for layer, var in enumerate(self.vars):
            var.add(y64[:, layer])
            self.errs[layer] += (y64[:, layer] - y_hat[:, layer]).pow(2).sum().item()
        self.cos += F.cosine_similarity(y64, y_hat, dim=-1, eps=1e-12).mean(1).sum().item()
        active = out.code.values != 0
        self.l0.append(active.sum(1).cpu())
        self.fired += torch.bincount(out.code.indices[active], minlength=self.fired.numel()).double()
        self.act_sum.index_add_(0, out.code.indices[active], out.code.values[active].double())
        self.abs_sum.index_add_(0, out.code.indices[active], out.code.values[active].double().abs())
        have = sum(s.shape[0] for s in self.sample)
        if have < SAMPLE_TOKENS:
            self.sample.append(x[: SAMPLE_TOKENS - have])

    def result(self) -> dict[str, Any]:
        """Scalar metrics (keys of metrics.json); a CLT's FVU is the mean over its layers of each layer's FVU,
        each in `fvu_per_layer`, and its L0 counts the features of all layers (`l0_per_layer` each layer's)."""
        n_tok = self.var.n
        if n_tok == 0:
            raise ValueError("evaluation data is empty")
        cfg = self.sae.cfg
        freq = self.fired / n_tok
        l0 = torch.cat(self.l0).double()
        fvus = [err / var.total_variance for err, var in zip(self.errs, self.vars)]
        out: dict[str, Any] = {
            "fvu": sum(fvus) / len(fvus),
            "mse": sum(self.errs) / (n_tok * cfg.out_width * cfg.layers),
            "cosine": self.cos / n_tok,
            "l0": l0.mean().item(),
            "l0_std": l0.std().item() if l0.numel() > 1 else 0.0,
            "eval_dead_fraction": (freq == 0).double().mean().item(),
            "dead_latents": int((freq == 0).sum().item()),
            "dense_latents": int((freq > DENSE_THRESHOLD).sum().item()),
            "eval_tokens": n_tok,
        }
        if cfg.is_clt:
            out["fvu_per_layer"] = fvus
            out["l0_per_layer"] = (self.fired.view(cfg.layers, -1).sum(1) / n_tok).tolist()
        return out

    def distributions(self) -> dict[str, torch.Tensor]:
        """Per-latent firing frequency and mean activation [n] (a CLT: [L * n]), per-token L0 [tokens] (eval/)."""
        n_tok = max(self.var.n, 1)
        return {
            "latent_frequency": (self.fired / n_tok).float().cpu(),
            "latent_mean_activation": (self.act_sum / n_tok).float().cpu(),
            "latent_mean_abs_activation": (self.abs_sum / n_tok).float().cpu(),
            "l0": torch.cat(self.l0).to(torch.int32) if self.l0 else torch.zeros(0, dtype=torch.int32),
        }


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[Any]) -> dict[str, Any]:
    """FVU, MSE, cosine, L0, dead and dense latents of `sae` over raw activation batches [B, d] (a transcoder:
    over (x, y) pairs, the metrics of its target)."""
    was_training = sae.training
    sae.eval()
    try:
        stats = ReconstructionStats(sae)
        for batch in batches:
            stats.add(*batch) if isinstance(batch, (tuple, list)) else stats.add(batch)
        return stats.result()
    finally:
        sae.train(was_training)


# --- held-out text ----------------------------------------------------------------------------
def held_out_contexts(
    model: ModelAdapter,
    source: TextSource | Any = None,
    *,
    tokens: int | None,
    batch_size: int = 16,
    split: str | None = None,
    context_len: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(contexts [B, T], scored [B, T] bool)`: the first `tokens` non-special positions of the text, in order
    (None: all the text holds, up to `DEFAULT_EVAL_TOKENS`; a number the text cannot give is warned about).

    `source` is a `TextSource` (read as given), or a dataset read as `HELD_OUT` (its 'test' split, 128-token
    contexts); `split` and `context_len`, when given, replace the source's."""
    asked, tokens = tokens, DEFAULT_EVAL_TOKENS if tokens is None else tokens
    src = as_source(source, HELD_OUT, split=split, context_len=context_len)
    contexts = src.contexts(model)
    special = torch.tensor(sorted(model.special_token_ids), dtype=torch.long)
    got = 0
    while got < tokens:
        batch = list(islice(contexts, batch_size))
        if not batch:
            break
        ids = torch.stack(batch)
        keep = ~torch.isin(ids, special)
        flat = keep.flatten()
        flat &= flat.cumsum(0) <= tokens - got  # the budget ends mid-batch: later positions are not scored
        keep = flat.view_as(ids)
        got += int(keep.sum())
        yield ids, keep
    if got == 0:
        raise ValueError(f"dataset {src.describe()!r} yields no context of {src.context_len} tokens: it is empty or too short")
    if asked is not None and got < asked:
        warnings.warn(f"dataset {src.describe()!r} ran out after {got} of {asked} held-out tokens", stacklevel=2)


# --- the measures after the pass ----------------------------------------------------------------
def _geometry(run: HeldOut) -> dict[str, Any]:
    """The superposition and decoder measures of `sae.analysis.geometry`; the cosine histogram goes to eval/."""
    from sae.analysis.geometry import geometry

    geo = geometry(run.sae, run.sample, run.distributions["latent_mean_abs_activation"])
    hist = geo.pop("decoder_cos_hist", None)  # a distribution: eval/, not metrics.json
    if hist is not None:
        run.distributions.update({f"decoder_cos_hist_{k}": torch.tensor(v) for k, v in hist.items()})
    return geo


register_measure("geometry", _geometry)
register_measure("spliced", spliced_measure)


def _stacked(acts: dict[str, torch.Tensor], hooks: tuple[str, ...], keep: torch.Tensor, clt: bool) -> torch.Tensor:
    """The scored rows of `hooks`' activations, float32: [N, d], or [N, L, d] for a CLT's layers."""
    rows = [acts[h][keep.to(acts[h].device)].float() for h in hooks]
    return torch.stack(rows, 1) if clt else rows[0]


@torch.no_grad()
def evaluate(
    sae: SparseAutoencoder,
    model: ModelAdapter,
    source: TextSource | Any = None,
    *,
    tokens: int | None = None,
    batch_size: int = 16,
    split: str | None = None,
    context_len: int | None = None,
    hook: str | None = None,
    target_hook: str | None = None,
    skip: Collection[str] = (),
    keep_activations: list[Any] | None = None,
    return_distributions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Reconstruction metrics, then every registered measure not in `skip` (`geometry`: superposition and
    decoder structure; `spliced`: the model's output with the dictionary spliced in).

    `source` is a `TextSource`, read as given, or a dataset (anything `ActivationStream` takes; None: the
    embedded corpus), read as `HELD_OUT`: `tokens` held-out positions of its 'test' split are scored (None:
    all it holds, up to `DEFAULT_EVAL_TOKENS`; the number scored is `eval_tokens` in the result),
    `batch_size` contexts of `context_len` tokens per forward. `split` and `context_len`, when given,
    replace the source's. `keep_activations`, when a list, receives the scored activations (e.g. for the
    PCA baseline; a transcoder's as (x, y) pairs). With `return_distributions` the result holds a
    `"distributions"` dict of tensors (eval/).

    A transcoder is scored on its target: its input hook is read, its prediction compared with the target hook
    and, spliced, replaces it (a CLT: every layer's); `hook` / `target_hook` replace the recorded hooks
    (`fit_hooks`, which refuses hooks whose widths do not fit, naming both).
    """
    for name, v in (("tokens", DEFAULT_EVAL_TOKENS if tokens is None else tokens), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    unknown = sorted(set(skip) - set(MEASURES))
    if unknown:
        raise ValueError(f"skip names no registered measure: {unknown}; the measures are {list(MEASURES)}")
    src = as_source(source, HELD_OUT, split=split, context_len=context_len)
    fit = fit_hooks(model, sae, hook, target_hook)
    if src.context_len > model.max_context:
        raise ValueError(
            f"context_len {src.context_len} is longer than the maximum context {model.max_context} of model {model.name!r}"
        )
    clt = sae.cfg.is_clt
    was_training = sae.training
    sae.eval()
    try:
        stats = ReconstructionStats(sae)
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        contexts = held_out_contexts(model, src, tokens=tokens, batch_size=batch_size)
        with tqdm(
            total=tokens or DEFAULT_EVAL_TOKENS, desc="eval: reconstruction", unit="tok", disable=not progress, leave=False
        ) as bar:
            for ids, keep in contexts:
                acts = model.run(ids, fit.harvested)
                x = _stacked(acts, fit.inputs, keep, clt)
                y = _stacked(acts, fit.targets, keep, clt) if fit.paired else None
                stats.add(x, y)
                if keep_activations is not None:
                    keep_activations.append(x.cpu() if y is None else (x.cpu(), y.cpu()))
                batches.append((ids, keep))
                bar.update(int(keep.sum()))
        metrics: dict[str, Any] = {**stats.result(), "eval_hook": fit.hook, "eval_context_len": src.context_len}
        if fit.paired:
            metrics["eval_target_hook"] = fit.targets[0]
        if clt:
            metrics["eval_hook"], metrics["eval_target_hook"] = list(fit.inputs), list(fit.targets)
        run = HeldOut(
            sae,
            model,
            fit.hook,
            batches,
            stats.target_mean.float(),
            torch.cat(stats.sample),
            metrics,
            stats.distributions(),
            progress,
            fit=fit,
        )
        for name, measure in list(MEASURES.items()):
            if name in skip:
                continue
            got = measure(run)
            clash = sorted(set(got) & set(metrics))
            if clash:
                raise ValueError(f"measure {name!r} returned {clash}, which earlier measures already give")
            metrics.update(got)
        if return_distributions:
            metrics["distributions"] = run.distributions
        return metrics
    finally:
        sae.train(was_training)


def write_evaluation(out_dir: str | Path, metrics: dict[str, Any], merge: bool = True) -> dict[str, Any]:
    """Write out_dir/metrics.json (merged into the one there with `merge`) and the eval/ distributions."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    metrics = dict(metrics)
    dists = metrics.pop("distributions", None)
    path = out / "metrics.json"
    old = json.loads(path.read_text()) if merge and path.exists() else {}
    merged = {**old, **metrics}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2))
    os.replace(tmp, path)
    if dists is not None:
        (out / "eval").mkdir(exist_ok=True)
        tensors = {k: v.contiguous() for k, v in dists.items()}
        atomic_write(out / "eval" / "latents.safetensors", lambda tmp: save_file(tensors, tmp))
    return merged
