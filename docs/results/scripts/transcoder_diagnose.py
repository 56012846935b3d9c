"""Why our transcoders' latents die: short runs on the bench's pairs (bench/transcoder_vs_sparsify.py's cache,
batches and held-out split), with per-step diagnostics and one variant of the start or recipe per run. Every
variant starts from the recipe before 2026-12-07 (uncentred input, lr 4e-3) unless it says otherwise: 'pre-mean'
centres the encoder's input, 'in-mean' the encoder's and the skip term's (the library's centring, now the default),
'lr=X' sets the rate, 'dec-xcov' starts W_dec along cov(y, x . w_i), 'no-aux' turns AuxK off, 'new-default' is
the library's default recipe as it is.

    PYTHONPATH=$PWD python docs/results/scripts/transcoder_diagnose.py --variant default --steps 98 [--skip]
    PYTHONPATH=$PWD python docs/results/scripts/transcoder_diagnose.py --variant default --variant no-aux ...

Each run appends one JSON line to --out (held-out FVU, silent latents, L0, and at steps 1, 2, 5, 10, 20, 50 and the
end: the latents that have ever entered the top-k, the dead fraction, AuxK's loss and how many dead latents got an
AuxK entry, the share of each latent's pre-activation that is the input mean's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import transcoder_vs_sparsify as bench  # noqa: E402

from sae import SAEConfig, SparseAutoencoder, TrainConfig  # noqa: E402
from sae.train import Trainer  # noqa: E402

PROBE_STEPS = (1, 2, 5, 10, 20, 50)


class Centred(SparseAutoencoder):
    """A transcoder whose encoder alone reads x_n - offset (the skip term reads x_n): the experiment's 'pre-mean'."""

    @property
    def b_pre(self):
        return getattr(self, "offset", None)


OLD_LR = 4e-3  # the default rate before 2026-12-07 at this budget (the SAE's rule)


def variant_cfg(variant: str, steps: int, seed: int) -> TrainConfig:
    """The old recipe's lr unless the variant gives one ('new-default': the library's own)."""
    kw: dict = {"tokens": steps * bench.BATCH, "seed": seed}
    if "new-default" not in variant.split("+"):
        kw["lr"] = OLD_LR
    for part in variant.split("+"):
        if part == "no-aux":
            kw["aux_coef"] = 0.0
        if part.startswith("lr="):
            kw["lr"] = float(part[3:])
    return TrainConfig(**kw)


@torch.no_grad()
def after_init(sae: SparseAutoencoder, variant: str, x_n: torch.Tensor, y_n: torch.Tensor) -> None:
    """Variants that change the start, applied after the trainer's own init (x_n, y_n: normalised init sample)."""
    parts = variant.split("+")
    if "in-mean" not in parts and "new-default" not in parts:  # the recipe before 2026-12-07: no centring
        sae.input_offset.zero_()
    if "b_enc-centred" in parts:  # sparsify's start: b_enc = -mean(x) W_enc
        sae.b_enc.copy_(-(x_n.mean(0) @ sae.W_enc))
    if "pre-mean" in parts:  # the encoder alone reads x_n - mean(x_n)
        sae.register_buffer("offset", x_n.mean(0).to(sae.W_enc.dtype))
    if "dec-xcov" in parts:  # W_dec_i along cov(y, x . w_i): a transcoder's analogue of an SAE's tied start
        xc, yc = x_n - x_n.mean(0), y_n - y_n.mean(0)
        W = (xc @ sae.W_enc).T @ yc  # [n, d_out]
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))


@torch.no_grad()
def heldout(sae: SparseAutoencoder, test_x: torch.Tensor, test_y: torch.Tensor) -> dict:
    sae.eval()
    y_hat, fired, l0 = [], torch.zeros(sae.cfg.latents, dtype=torch.bool), 0.0
    for i in range(0, test_x.shape[0], bench.BATCH):
        v = test_x[i : i + bench.BATCH]
        y_hat.append(sae.predict(v))
        code = sae.encode(v)
        fired[code.indices[code.values != 0]] = True
        l0 += float((code.values != 0).sum())
    sae.train()
    return {
        "heldout_fvu": bench.heldout_fvu(torch.cat(y_hat), test_y),
        "silent": 1 - fired.double().mean().item(),
        "l0": l0 / test_x.shape[0],
    }


def run(variant: str, skip: bool, steps: int, seed: int, data) -> dict:
    x, y, order, test_x, test_y = data
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=x.shape[1], d_out=y.shape[1], skip=skip, n_latents=8 * x.shape[1])
    sae = (Centred if "pre-mean" in variant.split("+") else SparseAutoencoder)(cfg)
    tcfg = variant_cfg(variant, steps, seed)
    trainer = Trainer(sae, tcfg)
    torch.manual_seed(tcfg.seed)
    batches = trainer._initialise(iter(bench.OrderedBatches(x, y, order)))
    with torch.no_grad():
        x0, y0 = x[order[:8].flatten()], y[order[:8].flatten()]
        x_n = x0 * sae.input_scale  # uncentred, whatever the library does
        y_n = y0 * sae.target_scale
        after_init(sae, variant, x_n, y_n)
        mean_share = ((x_n.mean(0) @ sae.W_enc).pow(2) / (x_n @ sae.W_enc).pow(2).mean(0)).median().item()
    ever = torch.zeros(cfg.latents, dtype=torch.bool)
    probes, t0 = [], time.perf_counter()
    for step in range(steps):
        bx, by = next(batches)
        stats = trainer.train_step((bx, by))
        with torch.no_grad():
            out = sae(bx[:1024], target=by[:1024])
            ever[out.code.indices[out.code.values != 0]] = True
        if step + 1 in PROBE_STEPS or step + 1 == steps:
            dead = trainer.dead_mask()
            with torch.no_grad():
                enc = sae.family.encode(sae, sae._prepare(bx[:1024])[0], dead=dead, k_aux=tcfg.k_aux)
                aux_dead = 0 if enc.aux is None else int((enc.aux.values != 0).sum(1).float().mean())
                pre = sae.pre_activations(bx[:1024])
                xn = sae.encoder_input(sae._prepare(bx[:1024])[0])
                share = ((xn.mean(0) @ sae.W_enc).pow(2) / (xn @ sae.W_enc).pow(2).mean(0)).median().item()
            probes.append(
                {
                    "step": step + 1,
                    "fvu": float(stats["fvu"]),
                    "aux_loss": float(stats["aux_loss"]),
                    "l0": float(stats["l0"]),
                    "dead": float(dead.float().mean()),
                    "aux_entries_per_token": aux_dead,
                    "ever_fired": float(ever.float().mean()),
                    "pre_positive_frac": float((pre > 0).float().mean()),
                    "b_enc_mean": float(sae.b_enc.mean()),
                    "mean_share_median": share,
                }
            )
            print(json.dumps(probes[-1]), flush=True)
    row = {"variant": variant, "skip": skip, "steps": steps, "seed": seed, "init_mean_share_median": mean_share}
    row.update(heldout(sae, test_x, test_y))
    row["seconds"] = time.perf_counter() - t0
    row["probes"] = probes
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path("/tmp/saekit-bench-transcoder"))
    p.add_argument("--variant", action="append", default=None)
    p.add_argument("--skip", action="store_true")
    p.add_argument("--steps", type=int, default=98)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/results/transcoders_diagnose.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(1)
    (x, y), (test_x, test_y) = (
        bench.read_pairs(args.cache, "train", bench.TRAIN_TOKENS),
        bench.read_pairs(args.cache, "test", bench.TEST_TOKENS),
    )
    order = bench.batch_rows(x.shape[0], args.steps)
    for variant in args.variant or ["default"]:
        row = run(variant, args.skip, args.steps, args.seed, (x, y, order, test_x, test_y))
        print(
            f"{variant} skip={args.skip}: held-out FVU {row['heldout_fvu']:.4f}, silent {row['silent']:.1%}, "
            f"L0 {row['l0']:.1f}, {row['seconds']:.0f} s",
            flush=True,
        )
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
