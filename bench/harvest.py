"""Harvest throughput, side by side in one run (tokens/s of activation vectors delivered).

(a) this pipeline: `ActivationStream` (names filter, early stop, mixing, prefetch thread)
(b) a naive loop: `run_with_cache` with no names filter and no early stop, then drop special tokens
(c) the cache read path: `ActivationStream.from_cache` (memory-mapped shards)
and the overlap of harvest with a training-like consumer (a TopK SAE step in plain torch).

    python bench/harvest.py [--tokens 16384] [--context-len 128] [--hook blocks.3.hook_resid_pre]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from activations import ActivationStream, load_model  # noqa: E402
from activations.text import iter_texts, load_text, pack_contexts  # noqa: E402


def naive(model, hook: str, context_len: int, model_batch: int, total: int) -> tuple[int, float]:
    """run_with_cache on everything (all hooks, all layers, the LM head), keep one hook."""
    special = torch.tensor(sorted(model.special_token_ids))
    t0 = time.perf_counter()
    ctxs = pack_contexts(iter_texts(load_text()), model.tokenizer, context_len, model.bos_token_id, model.sep_token_id)
    got = 0
    while got < total:
        tokens = torch.stack([c for _, c in zip(range(model_batch), ctxs)])
        with torch.inference_mode():
            _, cache = model.model.run_with_cache(tokens)
        x = cache[hook][~torch.isin(tokens, special)].float().cpu()
        got += x.shape[0]
    return got, time.perf_counter() - t0


def pipeline(model, hook, context_len, model_batch, batch_size, total, prefetch=4, cache_dir=None):
    t0 = time.perf_counter()
    s = ActivationStream(
        model,
        hook=hook,
        context_len=context_len,
        batch_size=batch_size,
        total_tokens=total,
        model_batch_size=model_batch,
        prefetch=prefetch,
        cache_dir=cache_dir,
        progress=False,
    )
    n = sum(x.shape[0] for x in s)
    return n, time.perf_counter() - t0


class ToyStep:
    """A TopK SAE training step (encode, top-k, decode, MSE, backward, Adam) in plain torch."""

    def __init__(self, d: int, n: int = 3072, k: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.W_enc = (torch.randn(d, n, generator=g) / d**0.5).requires_grad_()
        self.W_dec = (torch.randn(n, d, generator=g) / n**0.5).requires_grad_()
        self.b = torch.zeros(d, requires_grad=True)
        self.k = k
        self.opt = torch.optim.Adam([self.W_enc, self.W_dec, self.b], lr=1e-4)

    def __call__(self, x: torch.Tensor) -> None:
        pre = (x - self.b) @ self.W_enc
        v, i = pre.topk(self.k, dim=-1)
        code = torch.zeros_like(pre).scatter(-1, i, v.relu())
        loss = ((code @ self.W_dec + self.b - x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def overlap(model, hook, context_len, model_batch, batch_size, total, prefetch, pool):
    """Train on a live stream; return (wall s, s waiting for data, after the first batch; steps; total wall s)."""
    step = ToyStep(model.hook_dims(hook)[hook])
    s = ActivationStream(
        model,
        hook=hook,
        context_len=context_len,
        batch_size=batch_size,
        total_tokens=total,
        model_batch_size=model_batch,
        prefetch=prefetch,
        progress=False,
        shuffle_contexts=pool,
    )
    it = iter(s)
    wait, steps, t0 = 0.0, 0, time.perf_counter()
    start = t0
    while True:
        tw = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            break
        if steps == 0:
            t0 = time.perf_counter()  # steady state: the first pool fill is start-up latency
        else:
            wait += time.perf_counter() - tw
        step(x)
        steps += 1
    end = time.perf_counter()
    return end - t0, wait, steps, end - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--hook", default="blocks.3.hook_resid_pre")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--overlap-batch", type=int, default=1024)
    ap.add_argument("--overlap-tokens", type=int, default=16384)
    ap.add_argument("--context-len", type=int, default=128)
    ap.add_argument("--model-batch", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    model = load_model(args.model, device=args.device)
    warm = torch.full((2, args.context_len), model.sep_token_id or 0)
    model.run(warm, args.hook)
    with torch.inference_mode():
        model.model.run_with_cache(warm)
    common = (model, args.hook, args.context_len, args.model_batch)
    rows = []

    def row(name, n, secs):
        rows.append((name, n, secs, n / secs))
        print(f"  {name}: {n} tokens in {secs:.2f} s = {n / secs:,.0f} tok/s", flush=True)

    print(
        f"harvest bench: {args.model} {args.hook} ctx {args.context_len} x {args.model_batch}, "
        f"{args.tokens} tokens, torch threads {torch.get_num_threads()}, {args.device}",
        flush=True,
    )
    # interleave two rounds of (a) and (b) so a change in machine load hits both alike
    a_runs, b_runs = [], []
    for _ in range(2):
        a_runs.append(pipeline(*common, args.batch_size, args.tokens))
        b_runs.append(naive(*common, args.tokens))
    a = (sum(n for n, _ in a_runs), sum(t for _, t in a_runs))
    b = (sum(n for n, _ in b_runs), sum(t for _, t in b_runs))
    row("(a) ActivationStream, live", *a)
    row("(b) naive run_with_cache loop", *b)
    with tempfile.TemporaryDirectory() as tmp:
        h = pipeline(*common, args.batch_size, args.tokens, cache_dir=tmp)
        row("harvest into cache (write)", *h)
        epochs = 20
        t0 = time.perf_counter()
        reader = ActivationStream.from_cache(tmp, batch_size=args.batch_size, epochs=epochs)
        n = sum(x.shape[0] for x in reader)
        row("(c) from_cache read", n, time.perf_counter() - t0)
    ra, rb, rc = rows[0][3], rows[1][3], rows[3][3]
    print(f"  ratio (a)/(b) = {ra / rb:.2f}x (target >= 1.5x); (c)/(a) = {rc / ra:.1f}x (target >= 20x)")

    ob, pool = args.overlap_batch, 64
    print(
        f"overlap with a training-like consumer (TopK SAE step, n=3072, k=32), batches of {ob}, "
        f"mixing pool {pool} contexts; times after the first batch:",
        flush=True,
    )
    d = model.hook_dims(args.hook)[args.hook]
    step = ToyStep(d)
    x = torch.randn(ob, d)
    step(x)
    t0 = time.perf_counter()
    for _ in range(8):
        step(x)
    t_step = (time.perf_counter() - t0) / 8
    print(f"  train step alone: {t_step * 1000:.0f} ms per batch of {ob}")
    ov = {}
    for pf in (0, 4):
        wall, wait, steps, total_wall = overlap(*common, ob, args.overlap_tokens, pf, pool)
        ov[pf] = (wall, wait, steps, total_wall)
        print(
            f"  prefetch={pf}: {steps - 1} steps in {wall:.2f} s, waiting on data {wait:.2f} s "
            f"({100 * wait / wall:.0f}% of the time); {total_wall:.2f} s with start-up",
            flush=True,
        )
    print("\nmarkdown:\n")
    print(
        f"Date {datetime.date.today()}, machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Model `{args.model}`, hook `{args.hook}`, "
        f"contexts of {args.context_len} tokens, {args.model_batch} per forward, batches of {args.batch_size}.\n"
    )
    print("| path | tokens | seconds | tokens/s | vs (a) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, secs, rate in rows:
        print(f"| {name} | {n} | {secs:.2f} | {rate:,.0f} | {rate / ra:.2f}x |")
    print()
    print("| consumer | steps after the first | wall s | waiting on data | wall s with start-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| train step alone | 1 | {t_step:.3f} | - | - |")
    for pf, (wall, wait, steps, total_wall) in ov.items():
        print(
            f"| live stream, prefetch={pf} | {steps - 1} | {wall:.2f} | {wait:.2f} s ({100 * wait / wall:.0f}%) "
            f"| {total_wall:.2f} |"
        )


if __name__ == "__main__":
    main()
