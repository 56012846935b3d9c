"""A whole run: harvest, train, fold, save, evaluate against the PCA baseline. Used by the CLI and the demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from activations.text import TEST_EVERY, check_local_text
from sae.analysis.evaluate import evaluate, write_evaluation
from sae.analysis.pca import pca_fvu
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.data import TensorBatches
from sae.model import SparseAutoencoder
from sae.run_folder import run_folder
from sae.train import train

_PROBE_D_IN = 4096  # a stand-in width for checking options before the model (and its true width) is loaded


def _stream(run: RunConfig, model, split: str, tokens: int, batch_size: int, seed: int):
    from activations import ActivationStream

    cache = Path(run.cache_dir) / f"{split}-{tokens}" if run.cache_dir else None
    return ActivationStream(
        model,
        hook=run.hook,
        dataset=run.dataset or None,
        split=split,
        context_len=run.context_len,
        batch_size=batch_size,
        total_tokens=tokens,
        seed=seed,
        cache_dir=cache,
        dataset_config=run.dataset_config or None,
        text_column=run.text_column,
    )


def _collect(run: RunConfig, stream, split: str, tokens: int) -> torch.Tensor:
    batches = list(stream)
    if not batches:
        raise ValueError(f"no activations harvested from the {split!r} split of {run.dataset or 'the embedded corpus'}")
    return torch.cat(batches)[:tokens]


def harvest(run: RunConfig, model, split: str, tokens: int, seed: int, batch_size: int = 4096) -> torch.Tensor:
    """Up to `tokens` activations of `split` as one in-memory [N, d] tensor."""
    return _collect(run, _stream(run, model, split, tokens, batch_size, seed), split, tokens)


def eval_settings(run: RunConfig) -> dict[str, Any]:
    """What decides the held-out tokens of metrics.json; `python -m sae eval` defaults to them."""
    return {"dataset": run.dataset, "dataset_config": run.dataset_config, "text_column": run.text_column,
            "context_len": run.context_len, "eval_tokens": run.eval_tokens}


def _check_held_out(run: RunConfig, model, seed: int, batch_size: int) -> None:
    """Check that the test split yields held-out text before training: a dataset without it fails in seconds,
    not after training."""
    try:
        _stream(run, model, "test", run.eval_tokens, batch_size, seed).check_not_empty()
    except ValueError as e:
        raise ValueError(f"dataset {run.dataset or 'embedded'!r} has no usable 'test' split for the held-out metrics "
                         f"({e}); use a hub dataset that has one, or local files with at least {TEST_EVERY} documents "
                         "(every 20th is held out)") from e


def check_run(run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> None:
    """Everything that can be checked before the model loads, each a one-line error: the dictionary's options
    (k, family, family options; the final check with the model's width follows), the device, the corpus files."""
    SAEConfig(d_in=_PROBE_D_IN, hook_name=run.hook, model_name=run.model, **sae_kwargs)
    check_device(tcfg.device)
    if run.dataset:
        check_local_text(run.dataset)


def check_device(device: str) -> None:
    """Refuse a device name torch does not know, or one this machine lacks (--device cuda without a GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"device {device!r} is not a device name torch knows ({e}); expected e.g. cpu, cuda, cuda:1") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: expected cpu, cuda or mps")


def run_training(run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> dict[str, float]:
    """Train one dictionary end to end and write cfg.json, sae_weights.safetensors, metrics.json, log.jsonl.

    Options are checked before the model loads; the output folder must be empty unless `run.resume` or
    `run.overwrite`, and is locked for the run's life (see `sae.run_folder`)."""
    check_run(run, sae_kwargs, tcfg)
    with run_folder(run.out, resume=run.resume, overwrite=run.overwrite) as out:
        return _train_into(out, run, sae_kwargs, tcfg)


def _train_into(out: Path, run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> dict[str, float]:
    from activations import load_model

    t0 = time.perf_counter()
    model = load_model(run.model, device=tcfg.device)
    eval_batch = min(tcfg.batch_size, 4096)
    _check_held_out(run, model, tcfg.seed, eval_batch)
    if run.harvest_tokens:
        train_acts = harvest(run, model, "train", run.harvest_tokens, tcfg.seed, tcfg.batch_size)
        data = TensorBatches(train_acts, tcfg.batch_size, seed=tcfg.seed)
        pca_sample = train_acts
    else:
        data = _stream(run, model, "train", tcfg.tokens, tcfg.batch_size, tcfg.seed)
        pca_sample = None
    d_in = data.d_in
    harvest_s = time.perf_counter() - t0
    cfg = SAEConfig(d_in=d_in, hook_name=run.hook, model_name=run.model, **sae_kwargs)
    sae = SparseAutoencoder(cfg, device=tcfg.device, seed=tcfg.seed)
    result = train(sae, data, tcfg, out_dir=out, resume=run.resume)
    sae.fold_input_scale()
    sae.save(out)

    held_out: list[torch.Tensor] = []
    metrics = evaluate(sae, model, run.dataset or None, tokens=run.eval_tokens, context_len=run.context_len,
                       dataset_config=run.dataset_config or None, text_column=run.text_column,
                       keep_activations=held_out, return_distributions=True)
    eval_batches = list(torch.cat(held_out).split(4096))
    if pca_sample is None:
        pca_sample = harvest(run, model, "train", run.pca_tokens, tcfg.seed, tcfg.batch_size)
    rank = max(1, min(round(metrics["l0"]), d_in))
    metrics.update(
        {
            "pca_fvu": pca_fvu(pca_sample, eval_batches, rank),
            "pca_rank": rank,
            "dead_fraction": result.dead_fraction,
            "train_tokens": result.tokens,
            "train_seconds": result.seconds,
            "train_tokens_per_s": result.tokens / max(result.seconds, 1e-9) if result.steps else 0.0,
            "harvest_seconds": harvest_s,
            "total_seconds": time.perf_counter() - t0,
            "eval_settings": eval_settings(run),
        }
    )
    return write_evaluation(out, metrics, merge=False)
