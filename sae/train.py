"""The one trainer for every family: Adam, warm-up and decay, unit-norm decoder, AuxK, checkpoints, resume."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from sae.config import SAEConfig, TrainConfig, move_training_keys, with_defaults
from sae.data import batches_from
from sae.distributed.comm import Communicator
from sae.families import TrainStep
from sae.init import fit_code_scale, init_from_sample
from sae.model import SparseAutoencoder
from sae.sparsity_target import SparsityController, check_target_l0

CHECKPOINT = "checkpoints/latest.pt"
# TrainConfig fields that may differ on resume: they change where the run is logged and saved, not its result
# (AuxK's k_aux and aux_coef change the result: a checkpoint refuses them as it refuses another lr)
RESUMABLE_CHANGES = ("checkpoint_every", "log_every", "wandb_project", "device")


INIT_L0 = 64  # a penalty family without a target L0 starts with about this many latents firing per token
# with a target L0 it starts this far above it: the penalty can lower L0 quickly, while nothing but the
# reconstruction raises it; a target near n starts half-way from it to n instead (at n every latent fires on every
# sample token, none sits near its threshold, and JumpReLU's step penalty, which reaches the thresholds only
# through the codes near them, could not lower L0: it stayed at n, bench/jumprelu_vs_saelens.py)
INIT_ABOVE_TARGET = 1.5
INIT_L0_TOKENS = 8192  # the sample tokens that set the penalty family's starting thresholds or biases


class NonFiniteError(RuntimeError):
    """Training met NaN or inf; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    dead_fraction: float
    log_path: Path | None


def lr_at(step: int, steps: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_frac of the steps, flat, then linear decay to 0 over decay_frac."""
    warm = max(1, int(cfg.warmup_frac * steps))
    decay = int(cfg.decay_frac * steps)
    factor = min(1.0, (step + 1) / warm)
    if decay > 0 and step >= steps - decay:
        factor = min(factor, (steps - step) / decay)
    return base * factor


class Trainer:
    """Owns the optimisation state of one run so it can be checkpointed and resumed exactly."""

    def __init__(
        self,
        sae: SparseAutoencoder,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        comm: Communicator | None = None,
    ) -> None:
        self.comm = comm or Communicator()  # other ranks (sae.distributed); the default: none
        sae = self.comm.prepare(sae)
        self.sae, self.cfg = sae, cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.base_lr = cfg.learning_rate(sae.cfg.latents, transcoder=sae.centres_input)
        # fused Adam: one pass over each parameter's state, on CPU as on CUDA
        self.opt = torch.optim.Adam(sae.parameters(), lr=self.base_lr, betas=cfg.betas, eps=cfg.eps, fused=True)
        self.step = 0
        self.tokens = 0
        # tokens since each latent last fired: dead beyond the window
        self.dead_window = cfg.dead_window(sae.cfg.latents, sae.cfg.k)
        self.since_fired = torch.zeros(sae.cfg.n_features, dtype=torch.long, device=sae.W_enc.device)
        # a penalty family's coefficient over the run: warm-up and, with target_l0, its adaptation
        family = type(sae.family)
        check_target_l0(family, cfg.target_l0, sae.cfg.latents)
        if cfg.target_l0 is not None and sae.cfg.is_clt:
            raise ValueError(f"target_l0={cfg.target_l0!r}: a CLT trains no sparsity penalty; give one dictionary per layer")
        self.sparsity = (
            SparsityController(
                cfg.steps, cfg.sparsity_warmup_frac, cfg.target_l0, sae.W_enc.device, signed=family.penalty == "l0"
            )
            if family.penalty
            else None
        )
        # first step whose batch or loss was not finite (-1: none) and that loss (0: the batch was bad)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=sae.W_enc.device)
        self._bad_what = torch.zeros((), device=sae.W_enc.device)

    # --- checkpoints ------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT if self.out_dir else None

    def state_dict(self) -> dict:
        return {
            "sae": self.sae.state_dict(),
            "sae_cfg": self.sae.cfg.to_dict(),
            "train_cfg": asdict(self.cfg),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "tokens": self.tokens,
            "since_fired": self.since_fired,
            **({"sparsity": self.sparsity.state_dict()} if self.sparsity is not None else {}),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; refused when it was written by a run with another dictionary or
        training config (a changed seed, lr, batch size or token count would silently be another run)."""
        saved_sae, saved_train = move_training_keys(state["sae_cfg"], state.get("train_cfg", {}))
        # fields added since the checkpoint was written read as their defaults
        saved_sae, saved_train = with_defaults(SAEConfig, saved_sae), with_defaults(TrainConfig, saved_train)
        changed = _config_changes("dictionary", saved_sae, self.sae.cfg.to_dict())
        changed += _config_changes("training", saved_train, asdict(self.cfg), ignore=RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                "cannot resume: the checkpoint was written by a different run: "
                + "; ".join(changed)
                + ". Use the checkpoint's settings, or a fresh --out"
            )
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.since_fired = state["since_fired"].to(self.since_fired.device)
        if self.sparsity is not None and "sparsity" in state:
            self.sparsity.load_state_dict(state["sparsity"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            state = self.comm.gather_state(self.state_dict())
            if self.comm.is_writer:
                save_checkpoint(self.checkpoint_path, state)

    # --- one step ---------------------------------------------------------------------
    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_window

    def batch_parts(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of one batch: a tensor for an SAE (y None), an (x, y) pair for a transcoder; the other kind is
        refused, naming what came."""
        if self.sae.cfg.is_transcoder:
            if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
                return batch[0], batch[1]
            raise ValueError(
                f"a transcoder trains on (x, y) pairs, e.g. sae.data.PairBatches(x, y, batch_size); got {_describe(batch)}"
            )
        if isinstance(batch, torch.Tensor):
            return batch, None
        raise ValueError(
            f"an SAE trains on [batch, d_in] tensors; got {_describe(batch)} (pairs are for a transcoder: SAEConfig(d_out=...))"
        )

    def train_step(self, batch) -> dict[str, torch.Tensor | float]:
        """One optimiser step on a batch (a tensor; a transcoder's (x, y) pair). No host sync: the statistics stay
        on the device (read them with `float()`) and a non-finite batch or loss is recorded in `_bad_step`, which
        `_loop` reads every log/checkpoint step."""
        sae, steps = self.sae, self.cfg.steps
        x, y = self.batch_parts(batch)
        x = x.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        if y is not None:
            y = y.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        lr = lr_at(self.step, steps, self.base_lr, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        step = TrainStep(
            index=self.step,
            total=steps,
            k_aux=self.cfg.k_aux,
            aux_coef=self.cfg.aux_coef,
            sparsity_coef=self.cfg.sparsity_coef,
            sparsity_scale=self.sparsity.scale(self.step) if self.sparsity is not None else 1.0,
        )
        dead = self.dead_mask()
        out = self.comm.forward(sae, x, dead, step, target=y)
        finite = torch.isfinite(x).all() if y is None else torch.isfinite(x).all() & torch.isfinite(y).all()
        bad = ~(finite & torch.isfinite(out.loss))
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.step, self._bad_step)
        self._bad_what = torch.where(first, torch.where(finite, out.loss.detach().float(), 0.0), self._bad_what)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.comm.reduce_grads(sae)
        sae.remove_parallel_grad()
        self.opt.step()
        sae.set_decoder_norm_to_unit()
        sae.after_step(out.enc, step)
        l0 = out.code.l0().float().mean()
        if self.sparsity is not None:
            self.sparsity.update(self.step, l0)
        rows = self.comm.global_rows(x.shape[0])
        self.since_fired = torch.where(self.comm.fired(out.enc.code, self.since_fired.shape[0]), 0, self.since_fired + rows)
        self.step += 1
        self.tokens += rows
        return {
            "loss": out.loss.detach(),
            "fvu": out.fvu.detach(),
            "aux_loss": out.aux_loss.detach(),
            "l0": l0,
            "dead_fraction": dead.float().mean(),
            "lr": lr,
            **{k: v.detach() for k, v in out.extras.items()},
            **({"sparsity_coef": torch.as_tensor(sae.family.sparsity_coefficient(step))} if self.sparsity is not None else {}),
        }

    def _raise_if_bad(self) -> None:
        """Read the device-side non-finite record (a host sync: done at log and checkpoint steps only)."""
        step = int(self._bad_step)
        if step < 0:
            return
        if float(self._bad_what) == 0.0:
            raise NonFiniteError(
                f"batch at step {step} contains NaN or inf activations; stopped, the last "
                "checkpoint holds the weights from before it"
            )
        raise NonFiniteError(
            f"loss is {float(self._bad_what)} at step {step}; stopped, the last checkpoint holds the weights from before it"
        )

    # --- the loop ---------------------------------------------------------------------
    def fit(
        self,
        data: Iterable,
        resume: bool = False,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> TrainResult:
        """Train for cfg.steps batches of `data`; with `resume`, continue from the last checkpoint."""
        cfg = self.cfg
        ckpt = self.checkpoint_path
        log_path = self.out_dir / "log.jsonl" if self.out_dir else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and ckpt is not None and ckpt.exists():
            self.load_state_dict(self.comm.local_state(load_checkpoint(ckpt)))
            batches = batches_from(data, self.step)
        else:
            if resume and ckpt is not None:
                tqdm.write(f"no checkpoint at {ckpt}: starting from scratch")
            torch.manual_seed(cfg.seed)
            batches = self._initialise(batches_from(data, 0))
        if not self.comm.is_writer:
            log_path = None
        if log_path is not None:
            _truncate_log(log_path, self.step)
        wandb_run = _maybe_wandb(cfg, self.sae) if self.comm.is_writer else None
        start, t0 = self.step, time.perf_counter()
        with tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=not self.comm.is_writer
        ) as bar:
            self._loop(batches, bar, log_path, wandb_run, on_step)
        if wandb_run is not None:
            wandb_run.finish()
        seconds = time.perf_counter() - t0
        return TrainResult(
            steps=self.step - start,
            tokens=self.tokens,
            seconds=seconds,
            dead_fraction=self.dead_mask().float().mean().item(),
            log_path=log_path,
        )

    def _loop(self, batches, bar, log_path, wandb_run, on_step) -> None:
        cfg = self.cfg
        last_t, last_tokens = time.perf_counter(), self.tokens
        while self.step < cfg.steps:
            try:
                x = next(batches)
            except StopIteration:
                raise ValueError(
                    f"data ran out at step {self.step}: expected {cfg.steps} batches of {cfg.batch_size} tokens"
                ) from None
            step_stats = self.train_step(x)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._raise_if_bad()
                stats = {k: float(v) for k, v in step_stats.items()}  # the one host sync per log_every steps
                now = time.perf_counter()
                stats = self.comm.reduce_stats(stats)
                row = {"step": self.step, "tokens": self.tokens, **stats}
                row["tokens_per_s"] = (self.tokens - last_tokens) / max(now - last_t, 1e-9)
                last_t, last_tokens = now, self.tokens
                bar.set_postfix(fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}", dead=f"{stats['dead_fraction']:.2f}")
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if wandb_run is not None:
                    wandb_run.log(row, step=self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._raise_if_bad()  # never checkpoint weights a non-finite step has touched
                self.save_checkpoint()
            if on_step is not None:
                on_step(self)

    def _initialise(self, batches: Iterator) -> Iterator:
        """Set the scales and b_dec (a skip transcoder: W_skip) from the first init_tokens, then hand those batches
        back."""
        head, parts, got = [], [], 0
        while got < self.cfg.init_tokens:
            try:
                head.append(next(batches))
            except StopIteration:
                break
            parts.append(self.batch_parts(head[-1]))
            got += self.comm.global_rows(parts[-1][0].shape[0])
        if not head:
            raise ValueError("data is empty: no batch to initialise the dictionary from")
        n = self.cfg.init_tokens
        x = torch.cat(self.comm.gather_batches([p[0] for p in parts]))[:n]
        y = None
        if self.sae.cfg.is_transcoder:
            y = torch.cat(self.comm.gather_batches([p[1] for p in parts]))[:n]  # type: ignore[misc]
        init_from_sample(self.sae, x, y, skip_init=self.cfg.skip_init)
        if self.sparsity is not None and not self.sae.cfg.is_clt:  # a penalty family starts near its L0
            with torch.no_grad():
                x_n, _ = self.sae._prepare(x[:INIT_L0_TOKENS])
            n, target = self.sae.cfg.latents, self.cfg.target_l0
            l0 = min(INIT_ABOVE_TARGET * target, (target + n) / 2) if target is not None else min(INIT_L0, n)
            self.sae.family.init_from_sample(self.sae, x_n, float(l0))
            fit_code_scale(self.sae, x_n)
        return itertools.chain(head, batches)


def train(
    sae: SparseAutoencoder,
    data: Iterable,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[Trainer], None] | None = None,
    comm: Communicator | None = None,
) -> TrainResult:
    """Train `sae` on `data` (an iterable of raw [B, d] activations; for a transcoder, of (x, y) pairs such as
    sae.data.PairBatches); checkpoints go to out_dir/checkpoints.
    With `comm` (sae.distributed) the run is one rank of several: `sae` then holds this rank's part."""
    return Trainer(sae, cfg, out_dir, comm=comm).fit(data, resume=resume, on_step=on_step)


def _describe(batch) -> str:
    """A batch's kind, for the error that refuses it."""
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, (tuple, list)):
        kinds = ", ".join(f"tensor {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__ for t in batch)
        return f"a {type(batch).__name__} of {len(batch)} ({kinds})"
    return f"a {type(batch).__name__}"


def _config_changes(what: str, saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """One 'field: checkpoint X, this run Y' line per differing field."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in ignore:
            continue
        old, new = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(old, list | tuple) and isinstance(new, list | tuple):
            old, new = tuple(old), tuple(new)
        if old != new:
            out.append(f"{what} {key}: checkpoint {old!r}, this run {new!r}")
    return out


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so the log reads as one uninterrupted run; a last line torn by a
    kill mid-write is dropped too (a torn line elsewhere is a corrupt log, refused naming its line)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break  # the write a kill interrupted
            raise ValueError(f"{path} line {i + 1} is not a JSON record; the log is corrupt (delete it to go on)") from None
        if record["step"] <= step:
            keep.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in keep)))


def _maybe_wandb(cfg: TrainConfig, sae: SparseAutoencoder):
    if not cfg.wandb_project:
        return None
    try:
        import wandb
    except ImportError:
        tqdm.write("wandb is not installed: logging to log.jsonl only")
        return None
    return wandb.init(project=cfg.wandb_project, config={"sae": sae.cfg.to_dict(), "train": asdict(cfg)})
