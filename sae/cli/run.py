"""A whole run: harvest, train, fold, save, evaluate against the PCA baseline. Used by `train` and `demo`.

Several hook points train from one harvest, one dictionary each in `out/<hook name>/`; under torchrun
the run is one rank of a `ddp`, `shard` or `layers` job (sae.distributed). With targets (`--target-hook`,
`--target-template`) each dictionary is a transcoder trained on (input, target) pairs of one forward pass,
in `out/<input hook>/` when there are several; `--clt` trains one cross-layer transcoder over all `--layers`."""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from activations.hooks import HookPoints
from activations.source import TextSource
from activations.text import TEST_EVERY
from sae.analysis.evaluate import evaluate, write_evaluation
from sae.analysis.pca import pca_fvu
from sae.cli.identity import IDENTITY_FILE, check_resume, hook_fields, probe_config, run_identity, write_identity
from sae.cli.run_folder import run_folder
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.data import PairBatches, TensorBatches
from sae.distributed.comm import Communicator, DataParallel, RankShare
from sae.distributed.config import DistributedConfig
from sae.model import SparseAutoencoder
from sae.train import train


def dictionary_hooks(hooks: HookPoints) -> dict[str, HookPoints]:
    """The run's dictionaries, each by the key its data, folder and results go by (its input hook; a CLT: its
    input template), with the hook points it reads: one per hook (a transcoder: per pair), or one CLT."""
    if hooks.clt:
        return {hooks.input_template: hooks}
    return {
        h: HookPoints(hooks=(h,), targets=(t,)) if t else HookPoints(hooks=(h,))
        for h, t in zip(hooks.names, hooks.target_names or [""] * len(hooks))
    }


def _stream(
    run: RunConfig,
    model,
    split: str,
    tokens: int,
    batch_size: int,
    seed: int,
    hooks: HookPoints | None = None,
    rank_share: tuple[int, int] = (0, 1),
):
    from activations import ActivationStream

    cache = Path(run.cache_dir) / f"{split}-{tokens}" if run.cache_dir else None
    if cache is not None and rank_share[1] > 1:
        cache = cache / f"rank{rank_share[0]}-of-{rank_share[1]}"
    return ActivationStream(
        model,
        hook=run.hooks if hooks is None else hooks,
        source=run.text,
        split=split,
        batch_size=batch_size,
        total_tokens=tokens,
        seed=seed,
        cache_dir=cache,
        rank_share=rank_share,
    )


def _cat(batches: list[Any], tokens: int) -> Any:
    """Batches of one shape (tensors, (x, y) pairs, dicts of either) joined, the first `tokens` rows kept."""
    first = batches[0]
    if isinstance(first, dict):  # several hooks: one entry each
        return {h: _cat([b[h] for b in batches], tokens) for h in first}
    if isinstance(first, tuple):  # a transcoder's pairs
        return tuple(_cat([b[i] for b in batches], tokens) for i in range(len(first)))
    return torch.cat(batches)[:tokens]


def _collect(run: RunConfig, stream, split: str, tokens: int) -> Any:
    batches = list(stream)
    if not batches:
        raise ValueError(f"no activations harvested from the {split!r} split of {run.text.dataset or 'the embedded corpus'}")
    return _cat(batches, tokens)


def harvest(
    run: RunConfig, model, split: str, tokens: int, seed: int, batch_size: int = 4096, hooks: HookPoints | None = None
) -> Any:
    """Up to `tokens` activations of `split` as one in-memory [N, d] tensor (several hooks: a dict of them by
    hook; a transcoder's: (x, y) pairs of tensors, by input hook when several; a CLT's: [N, L, d] pairs).

    `hooks`: some of the run's hook points (default: all of them)."""
    return _collect(run, _stream(run, model, split, tokens, batch_size, seed, hooks), split, tokens)


def _per_dictionary(acts: Any, keys: list[str]) -> dict[str, Any]:
    """Harvested activations by dictionary key (one dictionary's come bare, several dictionaries' as a dict)."""
    return acts if isinstance(acts, dict) else {keys[0]: acts}


def _batches(acts: Any, tcfg: TrainConfig) -> TensorBatches | PairBatches:
    """In-memory training batches of one dictionary: tensors, or a transcoder's pairs."""
    if isinstance(acts, tuple):
        return PairBatches(acts[0], acts[1], tcfg.batch_size, seed=tcfg.seed)
    return TensorBatches(acts, tcfg.batch_size, seed=tcfg.seed)


def _target_rows(acts: Any) -> torch.Tensor:
    """What a dictionary predicts of its activations: the tensor itself, a transcoder's y of its (x, y) pair."""
    return acts[1] if isinstance(acts, tuple) else acts


def eval_settings(text: TextSource, eval_tokens: int | None) -> dict[str, Any]:
    """What decides the held-out tokens of metrics.json; `python -m sae eval` defaults to them."""
    return {
        "dataset": text.dataset or "",
        "dataset_config": text.dataset_config or "",
        "text_column": text.text_column,
        "context_len": text.context_len,
        "eval_tokens": eval_tokens,
    }


def _check_held_out(run: RunConfig, model, seed: int, batch_size: int, hooks: HookPoints | None = None) -> None:
    """Check, before training, what would otherwise fail after it: the hook names and context length (their own
    errors), the text column and the first texts of the train split, then that the test split yields held-out text
    (a dataset without one fails in seconds, naming that cause and not another)."""
    unc = dataclasses.replace(run, cache_dir="")  # a check, not a harvest: no cache folder is made or read
    _stream(unc, model, "train", batch_size, batch_size, seed, hooks).check_not_empty()
    try:
        _stream(unc, model, "test", batch_size, batch_size, seed, hooks).check_not_empty()
    except ValueError as e:
        if not _no_held_out_text(e):
            raise ValueError(f"dataset {run.text.dataset or 'embedded'!r}, reading its 'test' split: {e}") from e
        raise ValueError(
            f"dataset {run.text.dataset or 'embedded'!r} has no usable 'test' split for the held-out metrics "
            f"({e}); use a hub dataset that has one, or local files with at least {TEST_EVERY} documents "
            "(every 20th is held out)"
        ) from e


def _check_enough_text(run: RunConfig, model, tokens: int) -> None:
    """A run that streams its training vectors from the text (no --harvest-tokens) reads the train split once: where
    the split can be counted, check it holds `tokens` before training, not when it runs out at a late step."""
    source = run.text.replace(split="train")
    if not source.countable:
        return
    have = source.count_tokens(model, tokens)
    if have < tokens:
        name = f"dataset {source.dataset!r}" if source.dataset is not None else "the embedded corpus"
        raise ValueError(
            f"--tokens {tokens:,}: the train split of {name} holds {have:,} tokens for this model, and a "
            f"run without --harvest-tokens reads it once; train on at most {have:,} tokens, or harvest them once "
            f"and train several passes over them with --harvest-tokens {have} (as python -m sae demo does)"
        )


def _no_held_out_text(e: ValueError) -> bool:
    """Whether `e` says the test split is missing or empty (rather than the text being unreadable)."""
    text = str(e)
    return "yields no context" in text or "Unknown split" in text or "split 'test' not in" in text


def check_run(run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> None:
    """Everything that can be checked before the model loads, each a one-line error: the dictionary's options
    (k, family, family options, a transcoder's: a family that cannot be one, --skip without a target; the final
    check with the model's widths follows), the device, the corpus files."""
    cfg = probe_config(run.hooks, run.model, sae_kwargs)
    check_device(tcfg.device)
    if cfg.dtype == "float16" and torch.device(tcfg.device).type == "cpu":
        raise ValueError(
            "--dtype float16 on the CPU: float16 arithmetic there overflows to NaN within a few steps (the trainer "
            "uses no loss scaling); use --dtype bfloat16 or float32, or --device cuda"
        )
    run.text.check_local()


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


def run_training(
    run: RunConfig,
    sae_kwargs: dict[str, Any],
    tcfg: TrainConfig,
    dcfg: DistributedConfig | None = None,
) -> dict[str, Any]:
    """Train one dictionary per hook point of `run.hooks` end to end; each folder gets cfg.json,
    sae_weights.safetensors, metrics.json, log.jsonl. One hook: `run.out`, its metrics returned; several:
    `run.out/<hook>/`, and {hook: metrics}. Under `dcfg.distributed` this process is one rank (launched by
    torchrun); ranks that write nothing return {}."""
    check_run(run, sae_kwargs, tcfg)
    identity = run_identity(run, sae_kwargs, tcfg)
    if run.resume:  # before the model loads: another run's data or settings are refused in a second, not after a harvest
        check_resume(Path(run.out), identity)
    dcfg = dcfg or DistributedConfig()
    hooks = run.hooks
    mode = dcfg.distributed
    n_dicts = len(dictionary_hooks(hooks))
    if mode in ("ddp", "shard") and n_dicts > 1:
        raise ValueError(f"--distributed {mode} trains one hook point; got {len(hooks)}: use --distributed layers")
    if n_dicts > 1 and not (run.harvest_tokens or run.cache_dir):
        raise ValueError(
            f"{len(hooks)} hook points train from one harvest: give --harvest-tokens N (held in "
            "memory) or --cache-dir DIR (written to disk once, read back per hook)"
        )
    if mode == "shard" and hooks.paired:
        raise ValueError(
            "--distributed shard splits an SAE's latents over ranks that each reconstruct the same input; it does not "
            "carry a transcoder's target or skip term: train transcoders and CLTs with --distributed ddp or none"
        )
    if mode == "layers" and hooks.clt:
        raise ValueError(
            "--distributed layers gives each rank its own hook points, but --clt trains one dictionary over all "
            "--layers: use --distributed ddp"
        )
    if mode == "shard":  # before any model or process group: the family must select in a way that splits
        from sae.distributed.shard import shard_rule

        shard_rule(sae_kwargs.get("family", SAEConfig.family), sae_kwargs.get("options") or {})
    nested = n_dicts > 1 or mode == "layers"
    if mode == "none":
        with run_folder(run.out, resume=run.resume, overwrite=run.overwrite) as out:
            return _run(out, run, hooks, sae_kwargs, tcfg, Communicator(), nested, identity, records=True)
    import torch.distributed as dist

    from sae.distributed.group import process_group
    from sae.distributed.shard import LatentShard

    with process_group(tcfg.device, dcfg.dist_timeout_s) as (rank, world), ExitStack() as stack:
        if mode == "layers" and len(hooks) < world:  # every rank raises, so none waits for another
            raise ValueError(
                f"--distributed layers: {len(hooks)} hook point(s) for {world} ranks leaves a rank "
                "without one; launch at most as many ranks as hook points"
            )
        # rank 0 checks, empties and locks the folder; every rank hears the verdict before anything is written
        problem: list[str | None] = [None]
        if rank == 0:
            try:
                stack.enter_context(run_folder(run.out, resume=run.resume, overwrite=run.overwrite))
            except ValueError as e:
                problem = [str(e)]
        dist.broadcast_object_list(problem, src=0)
        if problem[0] is not None:
            raise ValueError(problem[0])
        out = Path(run.out)
        if mode != "layers":
            comm = DataParallel() if mode == "ddp" else LatentShard()
            return _run(out, run, hooks, sae_kwargs, tcfg, comm, nested, identity, records=rank == 0)
        parts: list[Any] = [None] * world
        mine = HookPoints(hooks=hooks.names[rank::world], targets=hooks.target_names[rank::world])  # targets kept
        dist.all_gather_object(parts, _run(out, run, mine, sae_kwargs, tcfg, Communicator(), nested, identity, records=rank == 0))
        return {h: m for part in parts for h, m in part.items()} if rank == 0 else {}


def _record_identity(out: Path, identity: dict[str, Any]) -> None:
    """A fresh run records its settings; a resumed one keeps what it found (written now if it predates run.json)."""
    if not (out / IDENTITY_FILE).exists():
        write_identity(out, identity)


def check_layers(hooks: HookPoints, model) -> None:
    """Refuse --layers the model lacks, naming how many it has (before the hook names' own error)."""
    if hooks.layer_numbers and max(hooks.layer_numbers) >= model.n_layers:
        what = "--clt --layers" if hooks.clt else "--layers"
        raise ValueError(
            f"{what} {hooks.layers!r} reads layer {max(hooks.layer_numbers)}, but model {model.name!r} has "
            f"{model.n_layers} layers (0-{model.n_layers - 1})"
        )


def _run(
    out: Path,
    run: RunConfig,
    hooks: HookPoints,
    sae_kwargs: dict[str, Any],
    tcfg: TrainConfig,
    comm: Communicator,
    nested: bool,
    identity: dict[str, Any],
    records: bool,
) -> dict[str, Any]:
    """One harvest for `hooks`, then one dictionary per hook (a transcoder per pair; or one CLT) trained through
    `comm`; `records`: this process writes the run's run.json (one process of a distributed job)."""
    from activations import ActivationStream, load_model

    t0 = time.perf_counter()
    model = load_model(run.model, device=tcfg.device)
    check_layers(hooks, model)
    if comm.is_writer:
        _check_held_out(run, model, tcfg.seed, min(tcfg.batch_size, 4096), hooks)
        if not run.harvest_tokens:
            _check_enough_text(run, model, tcfg.tokens)
    if records:  # the checks passed: from here on the folder holds this run
        _record_identity(out, identity)
    ddp = isinstance(comm, DataParallel)
    units = dictionary_hooks(hooks)
    keys = list(units)
    pca_samples: dict[str, Any] | None = None
    if run.harvest_tokens:
        pca_samples = _per_dictionary(harvest(run, model, "train", run.harvest_tokens, tcfg.seed, tcfg.batch_size, hooks), keys)
        data: dict[str, Any] = {h: _batches(a, tcfg) for h, a in pca_samples.items()}
        if ddp:
            data = {h: RankShare(d, comm.rank, comm.world, tcfg.batch_size) for h, d in data.items()}
    elif len(units) == 1:
        share = (comm.rank, comm.world) if ddp else (0, 1)
        if tcfg.batch_size % share[1]:
            raise ValueError(
                f"--distributed ddp splits each batch evenly: batch_size={tcfg.batch_size} is not a "
                f"multiple of the {share[1]} ranks"
            )
        # ddp: each rank streams its own contexts, batches of batch_size / world
        data = {
            keys[0]: _stream(
                run, model, "train", tcfg.tokens // share[1], tcfg.batch_size // share[1], tcfg.seed, hooks, rank_share=share
            )
        }
    else:  # several hooks through the disk cache: harvested once, each dictionary reads its own hook (or pair) back
        cache = _stream(run, model, "train", tcfg.tokens, tcfg.batch_size, tcfg.seed, hooks).harvest()
        data = {
            h: ActivationStream.from_cache(
                cache, tcfg.batch_size, tcfg.seed, hook=h, target=u.target_names[0] if u.paired else None, expect_model=model.name
            )
            for h, u in units.items()
        }
    harvest_s = time.perf_counter() - t0
    saes, results = {}, {}
    for h, unit in units.items():
        d_out = {"d_out": data[h].d_out} if unit.paired else {}
        cfg = SAEConfig(d_in=data[h].d_in, model_name=run.model, **hook_fields(unit), **d_out, **sae_kwargs)
        sae = SparseAutoencoder(cfg, device=tcfg.device, seed=tcfg.seed)
        folder = out / h if nested else out
        results[h] = train(sae, data[h], tcfg, out_dir=folder, resume=run.resume, comm=comm)
        saes[h] = comm.whole_model(sae)
    if not comm.is_writer:
        return {}
    if pca_samples is None and not hooks.clt:  # a CLT has no PCA baseline (see _baseline)
        pca_samples = _per_dictionary(harvest(run, model, "train", run.pca_tokens, tcfg.seed, tcfg.batch_size, hooks), keys)
    all_metrics = {}
    for h in units:
        sae, result, folder = saes[h], results[h], out / h if nested else out
        sae.fold_input_scale()
        sae.save(folder)
        held_out: list[Any] = []
        metrics = evaluate(
            sae,
            model,
            run.text,
            split="test",
            tokens=run.eval_tokens,
            keep_activations=held_out,
            return_distributions=True,
        )
        if pca_samples is not None:
            metrics.update(_baseline(sae, _target_rows(pca_samples[h]), [_target_rows(b) for b in held_out], metrics["l0"]))
        metrics.update(
            {
                "dead_fraction": result.dead_fraction,
                "train_tokens": result.tokens,
                "train_seconds": result.seconds,
                "train_tokens_per_s": result.tokens / max(result.seconds, 1e-9) if result.steps else 0.0,
                "harvest_seconds": harvest_s,
                "total_seconds": time.perf_counter() - t0,
                "eval_settings": eval_settings(run.text, run.eval_tokens),
            }
        )
        all_metrics[h] = write_evaluation(folder, metrics, merge=False)
    return all_metrics if nested else all_metrics[keys[0]]


def _baseline(sae: SparseAutoencoder, train_rows: torch.Tensor, held_out: list[torch.Tensor], l0: float) -> dict[str, Any]:
    """The PCA baseline of what the dictionary predicts: a rank-round(L0) PCA of the training activations (a
    transcoder's: of its target's; the best L0-dimensional subspace of the target itself, a reference that sees
    the target) scored on the held-out ones. A CLT gets none: its layers' predictions draw on the features of
    every earlier layer, so no one rank stands for its L0."""
    rank = max(1, min(round(l0), sae.cfg.out_width))
    eval_batches = list(torch.cat(held_out).split(4096))
    out: dict[str, Any] = {"pca_fvu": pca_fvu(train_rows, eval_batches, rank), "pca_rank": rank}
    if sae.cfg.is_transcoder:
        out["pca_of"] = "target"
    return out
