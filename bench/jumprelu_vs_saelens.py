"""Our JumpReLU against SAELens 6.54's JumpReLU trainer, on the same activations and batches, held-out FVU side by side.

1. SAELens (in .venv-interop, a subprocess that never imports saekit): `JumpReLUTrainingSAE` with its config's
   defaults (threshold 0.01, bandwidth 0.05, step L0 penalty with coefficient 1, no warm-up, decoder rows
   initialised at norm 0.1, no input normalisation), stepped as `SAETrainer._train_step` steps it (as
   bench/train_step.py does: training_forward_pass, clip_grad_norm_ 1.0, Adam with SAELens's default lr 3e-4 and
   betas (0.9, 0.999), constant schedule).
2. Ours with every default (`python -m sae train --family jumprelu` as it is).
3. Ours with --target-l0 set to the held-out L0 SAELens reached.
All three read the same batches in the same order (one fixed permutation of the harvest) and are scored on the same
held-out activations.

    PYTHONPATH=$PWD .venv/bin/python bench/jumprelu_vs_saelens.py --acts runs/minilm_l3.pt --tokens 409600
    # --acts: a torch file {"train": [N, d], "test": [M, d]} (examples/frontier.py's harvest); default: harvest
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics

REPO = Path(__file__).resolve().parents[1]
PEER = """
import json, sys, time
import torch
from safetensors.torch import load_file
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

root, steps, B, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
t = load_file(root + "/acts.safetensors")
train_x, test_x = t["train"], t["test"]
torch.manual_seed(0)
sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=train_x.shape[1], d_sae=int(sys.argv[5]), dtype="float32", device="cpu"))
opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
since_fired = torch.zeros(sae.cfg.d_sae)
t0 = time.perf_counter()
for step in range(steps):
    x = train_x[step * B : (step + 1) * B]
    sae.train()
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l0": 1.0}, dead_neuron_mask=since_fired > 10**9,
                                                   n_training_steps=step, is_logging_step=False))
    with torch.no_grad():
        fired = out.feature_acts.bool().float().sum(-2).bool()
        since_fired.add_(1)
        since_fired[fired] = 0
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
seconds = time.perf_counter() - t0
sae.eval()
err, l0 = 0.0, 0.0
with torch.no_grad():
    for xb in test_x.split(4096):
        z = sae.encode(xb)
        err += (xb - sae.decode(z)).double().pow(2).sum().item()
        l0 += (z != 0).sum().item()
var = (test_x.double() - test_x.double().mean(0)).pow(2).sum().item()
print(json.dumps({"fvu": err / var, "l0": l0 / test_x.shape[0], "seconds": seconds}))
"""


def interop_python() -> Path:
    env = os.environ.get("SAEKIT_INTEROP_PYTHON")
    return Path(env) if env else REPO / ".venv-interop" / "bin" / "python"


def ours(train_x, test_x, args, target_l0: float | None) -> dict:
    """Our JumpReLU at the defaults (with target_l0 when given) on the same ordered batches."""
    cfg = SAEConfig(d_in=train_x.shape[1], n_latents=args.n_latents, family="jumprelu")
    sae = SparseAutoencoder(cfg, seed=0)
    tcfg = TrainConfig(
        tokens=args.tokens, batch_size=args.batch_size, checkpoint_every=10**9, log_every=10**9, target_l0=target_l0
    )
    batches = list(train_x.split(args.batch_size))
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        train(sae, batches, tcfg, out_dir=None)
    seconds = time.perf_counter() - t
    sae.eval()
    m = reconstruction_metrics(sae, list(test_x.split(4096)))
    return {"fvu": m["fvu"], "l0": m["l0"], "seconds": seconds, "target_l0": target_l0}


def run_saelens(train_x: torch.Tensor, test_x: torch.Tensor, args, steps: int) -> dict:
    """SAELens's JumpReLU trained and scored in .venv-interop, on the same rows."""
    with tempfile.TemporaryDirectory() as root:
        save_file({"train": train_x, "test": test_x.contiguous()}, f"{root}/acts.safetensors")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [str(interop_python()), "-c", PEER, root, str(steps), str(args.batch_size), str(args.threads), str(args.n_latents)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"SAELens's side failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--acts", default="", help="torch file {'train': [N, d], 'test': [M, d]}")
    p.add_argument("--tokens", type=int, default=1_638_400, help="training tokens (the demo's: 400 steps of 4096)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--ours", nargs="*", default=["default", "target"], choices=["default", "target"], help="our runs")
    p.add_argument("--saelens-result", default="", help="reuse SAELens's result (JSON) of an earlier run, same settings")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.acts:
        saved = torch.load(args.acts)
        train_all, test_x = saved["train"], saved["test"][: args.eval_tokens]
    else:
        sys.path.insert(0, str(REPO / "docs" / "results" / "scripts"))
        from compare_families import harvest

        train_all, test_x = harvest(400_000, args.eval_tokens, Path("runs/families_cache"), 0)
    steps = args.tokens // args.batch_size
    # one fixed order of the harvest, cycled when the run is longer than it: both libraries read exactly these rows
    order = torch.randperm(train_all.shape[0], generator=torch.Generator().manual_seed(0))
    reps = -(-steps * args.batch_size // train_all.shape[0])
    train_x = train_all[order.repeat(reps)[: steps * args.batch_size]].contiguous()
    results = {"steps": steps, "batch_size": args.batch_size, "n_latents": args.n_latents, "eval_tokens": test_x.shape[0]}
    if args.saelens_result:
        results["saelens"] = json.loads(Path(args.saelens_result).read_text())
    else:
        results["saelens"] = run_saelens(train_x, test_x, args, steps)
    print("saelens", results["saelens"], flush=True)
    if "default" in args.ours:
        results["ours_default"] = ours(train_x, test_x, args, None)
        print("ours, defaults", results["ours_default"], flush=True)
    if "target" in args.ours:
        results["ours_target"] = ours(train_x, test_x, args, round(results["saelens"]["l0"], 1))
        print("ours, --target-l0 at SAELens's L0", results["ours_target"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
