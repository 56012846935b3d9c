"""A whole run: harvest, train, fold, save, evaluate against the PCA baseline. Used by the CLI and the demo.

Several hook points train from one harvest, one dictionary each in `out/<hook name>/`; under torchrun
the run is one rank of a `ddp`, `shard` or `layers` job (sae.distributed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from sae.analysis.metrics import evaluate
from sae.analysis.pca import pca_fvu
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.data import TensorBatches
from sae.distributed.comm import Communicator, DataParallel, RankShare
from sae.distributed.config import DistributedConfig
from sae.families import get_family
from sae.model import SparseAutoencoder
from sae.train import train


def _stream(run: RunConfig, model, split: str, tokens: int, batch_size: int, seed: int,
            hooks: list[str] | None = None, rank_share: tuple[int, int] = (0, 1)):
    from activations import ActivationStream

    cache = Path(run.cache_dir) / f"{split}-{tokens}" if run.cache_dir else None
    if cache is not None and rank_share[1] > 1:
        cache = cache / f"rank{rank_share[0]}-of-{rank_share[1]}"
    return ActivationStream(
        model,
        hook=run.hook if hooks is None else hooks[0] if len(hooks) == 1 else list(hooks),
        dataset=run.dataset or None,
        split=split,
        context_len=run.context_len,
        batch_size=batch_size,
        total_tokens=tokens,
        seed=seed,
        cache_dir=cache,
        dataset_config=run.dataset_config or None,
        text_column=run.text_column,
        rank_share=rank_share,
    )


def _collect(run: RunConfig, stream, split: str, tokens: int) -> torch.Tensor | dict[str, torch.Tensor]:
    batches = list(stream)
    if not batches:
        raise ValueError(f"no activations harvested from the {split!r} split of {run.dataset or 'the embedded corpus'}")
    if isinstance(batches[0], dict):  # several hooks: one tensor each
        return {h: torch.cat([b[h] for b in batches])[:tokens] for h in batches[0]}
    return torch.cat(batches)[:tokens]


def harvest(run: RunConfig, model, split: str, tokens: int, seed: int, batch_size: int = 4096,
            hooks: list[str] | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """Up to `tokens` activations of `split` as one in-memory [N, d] tensor (several hooks: a dict of them)."""
    return _collect(run, _stream(run, model, split, tokens, batch_size, seed, hooks), split, tokens)


def _per_hook(acts, hooks: list[str]) -> dict[str, torch.Tensor]:
    return acts if isinstance(acts, dict) else {hooks[0]: acts}


def _held_out_stream(run: RunConfig, model, seed: int, batch_size: int, hooks: list[str] | None = None):
    """The test split's stream, opened before training so a dataset without one fails in seconds, not after."""
    try:
        return _stream(run, model, "test", run.eval_tokens, batch_size, seed, hooks)
    except ValueError as e:
        raise ValueError(f"dataset {run.dataset!r} has no usable 'test' split for the held-out metrics ({e}); "
                         "use a dataset that has one, or local files (every 20th document is held out)") from e


def run_training(
    run: RunConfig,
    sae_kwargs: dict[str, Any],
    tcfg: TrainConfig,
    dcfg: DistributedConfig | None = None,
    hooks: list[str] | None = None,
) -> dict[str, Any]:
    """Train one dictionary per hook point end to end; each folder gets cfg.json, sae_weights.safetensors,
    metrics.json, log.jsonl. One hook: `run.out`, its metrics returned; several: `run.out/<hook>/`, and
    {hook: metrics}. Under `dcfg.distributed` this process is one rank (launched by torchrun); ranks that
    write nothing return {}."""
    get_family(sae_kwargs.get("family", "topk"))  # fail on a bad family before any harvesting
    dcfg = dcfg or DistributedConfig()
    hooks = list(hooks or [run.hook])
    mode = dcfg.distributed
    if mode in ("ddp", "shard") and len(hooks) > 1:
        raise ValueError(f"--distributed {mode} trains one hook point; got {len(hooks)}: use --distributed layers")
    if len(hooks) > 1 and not (run.harvest_tokens or run.cache_dir):
        raise ValueError(f"{len(hooks)} hook points train from one harvest: give --harvest-tokens N (held in "
                         "memory) or --cache-dir DIR (written to disk once, read back per hook)")
    nested = len(hooks) > 1 or mode == "layers"
    if mode == "none":
        return _run(run, hooks, sae_kwargs, tcfg, Communicator(), nested)
    import torch.distributed as dist

    from sae.distributed.group import process_group
    from sae.distributed.shard import LatentShard

    with process_group(tcfg.device, dcfg.dist_timeout_s) as (rank, world):
        if mode != "layers":
            return _run(run, hooks, sae_kwargs, tcfg, DataParallel() if mode == "ddp" else LatentShard(), nested)
        if len(hooks) < world:  # every rank raises, so none waits for another
            raise ValueError(f"--distributed layers: {len(hooks)} hook point(s) for {world} ranks leaves a rank "
                             "without one; launch at most as many ranks as hook points")
        mine = hooks[rank::world]
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, _run(run, mine, sae_kwargs, tcfg, Communicator(), nested))
        return {h: m for part in parts for h, m in part.items()} if rank == 0 else {}


def _run(run: RunConfig, hooks: list[str], sae_kwargs: dict[str, Any], tcfg: TrainConfig, comm: Communicator,
         nested: bool) -> dict[str, Any]:
    """One harvest for `hooks`, then one dictionary per hook trained through `comm`."""
    from activations import ActivationStream, load_model

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_model(run.model, device=tcfg.device)
    ddp = isinstance(comm, DataParallel)
    pca_samples: dict[str, torch.Tensor] | None = None
    if run.harvest_tokens:
        pca_samples = _per_hook(harvest(run, model, "train", run.harvest_tokens, tcfg.seed, tcfg.batch_size, hooks),
                                hooks)
        data: dict[str, Any] = {h: TensorBatches(a, tcfg.batch_size, seed=tcfg.seed) for h, a in pca_samples.items()}
        if ddp:
            data = {h: RankShare(d, comm.rank, comm.world, tcfg.batch_size) for h, d in data.items()}
    elif len(hooks) == 1:
        share = (comm.rank, comm.world) if ddp else (0, 1)
        if tcfg.batch_size % share[1]:
            raise ValueError(f"--distributed ddp splits each batch evenly: batch_size={tcfg.batch_size} is not a "
                             f"multiple of the {share[1]} ranks")
        # ddp: each rank streams its own contexts, batches of batch_size / world
        data = {hooks[0]: _stream(run, model, "train", tcfg.tokens // share[1], tcfg.batch_size // share[1],
                                  tcfg.seed, hooks, rank_share=share)}
    else:  # several hooks through the disk cache: harvested once, each dictionary reads its own hook
        cache = _stream(run, model, "train", tcfg.tokens, tcfg.batch_size, tcfg.seed, hooks).harvest()
        data = {h: ActivationStream.from_cache(cache, tcfg.batch_size, tcfg.seed, hook=h, verify=False,
                                               expect_model=model.name) for h in hooks}
    eval_batch = min(tcfg.batch_size, 4096)
    held_out_stream = _held_out_stream(run, model, tcfg.seed, eval_batch, hooks) if comm.is_writer else None
    harvest_s = time.perf_counter() - t0
    saes, results = {}, {}
    for h in hooks:
        d_in = data[h].d_in
        cfg = SAEConfig(d_in=d_in, hook_name=h, model_name=run.model, **sae_kwargs)
        sae = SparseAutoencoder(cfg, device=tcfg.device, seed=tcfg.seed)
        folder = out / h if nested else out
        results[h] = train(sae, data[h], tcfg, out_dir=folder, resume=run.resume, comm=comm)
        saes[h] = comm.whole_model(sae)
    if not comm.is_writer:
        return {}
    held_out = _per_hook(_collect(run, held_out_stream, "test", run.eval_tokens), hooks)
    if pca_samples is None:
        pca_samples = _per_hook(harvest(run, model, "train", run.pca_tokens, tcfg.seed, tcfg.batch_size, hooks), hooks)
    all_metrics = {}
    for h in hooks:
        sae, result, folder = saes[h], results[h], out / h if nested else out
        sae.fold_input_scale()
        sae.save(folder)
        eval_batches = list(held_out[h].split(4096))
        metrics = evaluate(sae, eval_batches)
        rank = max(1, min(round(metrics["l0"]), sae.cfg.d_in))
        metrics.update(
            {
                "pca_fvu": pca_fvu(pca_samples[h], eval_batches, rank),
                "pca_rank": rank,
                "dead_fraction": result.dead_fraction,
                "train_tokens": result.tokens,
                "train_seconds": result.seconds,
                "train_tokens_per_s": result.tokens / max(result.seconds, 1e-9) if result.steps else 0.0,
                "harvest_seconds": harvest_s,
                "total_seconds": time.perf_counter() - t0,
            }
        )
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        all_metrics[h] = metrics
    return all_metrics if nested else all_metrics[hooks[0]]
