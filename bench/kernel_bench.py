#!/usr/bin/env python
"""Kernel benchmark: correctness at full size, then timings against the encoder matmul and the peers.

One call on a GPU machine:   python bench/kernel_bench.py --out $OUT
CPU smoke (tiny sizes, Triton's interpreter, wall-clock timer):   python bench/kernel_bench.py --smoke --out /tmp/x

For each family (TopK = rule "row", AbsTopK = "abs", BatchTopK = "batch") and size (d, n, k, B) it checks our
encode + decode against a float64 computation at the kernel's own indices (three runs, largest difference), then
times with triton.testing.do_bench medians, in the same run: the encoder matmul alone, torch.topk alone, our
select alone, the naive dense step, torch topk + gather decode, sparsify's fused encoder + decoder (when the
eai-sparsify wheel is installed), and ours (fwd+bwd; and with AuxK beside the main code, as training runs it), plus
our full training step with fused Adam. A Triton path that fails its first-use check (kernels/first_use.py) runs on
the torch twin: the run names it (META's first_use_fallbacks), since its timings are then the twin's.
Writes <out>/<date>-<device>.json (a row per family and size, with ratio_to_gemm) and prints the table.
Needs only torch and triton (and optionally sparsify).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZES = [(768, 24576, 32, 4096), (768, 131072, 32, 4096), (2304, 65536, 64, 4096)]
SMOKE_SIZES = [(16, 300, 4, 64), (24, 520, 8, 33), (32, 2048, 8, 64)]  # the last takes the v4 fused path
FAMILIES = {"topk": "row", "abstopk": "abs", "batchtopk": "batch"}
BAR = {"topk": 1.5, "abstopk": 1.7, "batchtopk": 1.7}
K_AUX = 256  # AuxK's width in the training step (TrainConfig's default), a quarter of the latents dead


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the JSON result")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--sizes", default=None, help="d,n,k,B;d,n,k,B;... (default: the issue's three)")
    p.add_argument("--check-rows", type=int, default=1024, help="rows of the float64 correctness check")
    a = p.parse_args()
    unknown = sorted({f for f in a.families.split(",") if f} - set(FAMILIES))
    if unknown:  # before any work: the names are checked here, not after minutes of compiling
        p.error(f"--families: unknown {unknown}; expected a comma-separated subset of {','.join(FAMILIES)}")
    return a


ARGS = parse()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit module is imported
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import kernels  # noqa: E402

CUDA = torch.cuda.is_available() and not ARGS.smoke
DEV = torch.device("cuda" if CUDA else "cpu")
kernels.BACKEND = "triton"  # ours = the Triton path, on CPU too for the smoke run


def _import_sparsify_kernels():
    """sparsify's fused encoder and decoder, without its package __init__ (which needs datasets, simple-parsing,
    schedulefree, natsort: absent on the GPU machine; the two kernel modules need only torch, triton,
    accelerate and transformers, which are there). So carrying the one eai-sparsify wheel is enough."""
    import importlib.metadata
    import importlib.util
    import types

    spec = importlib.util.find_spec("sparsify")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("eai-sparsify is not installed")
    if "sparsify" not in sys.modules:
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg
    from sparsify.fused_encoder import fused_encoder
    from sparsify.utils import decoder_impl

    return fused_encoder, decoder_impl, importlib.metadata.version("eai-sparsify")


try:  # the peer
    _sp_encoder, _sp_decoder, SPARSIFY = _import_sparsify_kernels()
except Exception as exc:  # noqa: BLE001
    _sp_encoder = _sp_decoder = None
    SPARSIFY = f"absent ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------------------------------------
# timing and memory
# ------------------------------------------------------------------------------------------------------------
def bench(fn) -> float:
    """Median milliseconds: triton.testing.do_bench on CUDA, a wall-clock median in the smoke run."""
    if CUDA:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_mib(fn) -> float | None:
    """Extra memory one call needs beyond what is already allocated (MiB)."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def device_name() -> str:
    if not CUDA:
        return "cpu-interpreter"
    name = torch.cuda.get_device_name().lower()
    for tag in ("h200", "h100", "a100", "l40", "a10", "4090", "3090"):
        if tag in name:
            return tag
    return name.replace(" ", "-")[:24]


# ------------------------------------------------------------------------------------------------------------
# the steps (fwd + bwd of reconstruction loss)
# ------------------------------------------------------------------------------------------------------------
class Problem:
    def __init__(self, d, n, k, B, dtype, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        W_dec = torch.randn(n, d, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.x = (torch.randn(B, d, generator=g) + 0.1 * torch.randn(d, generator=g)).to(DEV, dtype)
        self.W_dec = W_dec.to(DEV, dtype).requires_grad_()
        self.W_enc = W_dec.T.contiguous().to(DEV, dtype).requires_grad_()
        self.b_enc = (0.01 * torch.randn(n, generator=g)).to(DEV, dtype).requires_grad_()
        self.b_dec = (0.01 * torch.randn(d, generator=g)).to(DEV, dtype).requires_grad_()
        self.d, self.n, self.k, self.B = d, n, k, B
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def zero(self):
        for p in self.params:
            p.grad = None

    def pre(self):
        with torch.no_grad():
            return (self.x - self.b_dec) @ self.W_enc + self.b_enc


def _loss(x_hat, x):
    return (x_hat - x).float().pow(2).sum()


def _ours(P: Problem, x: torch.Tensor, rule: str):
    """Our forward as the trainer runs it: b_dec handed to the encoder as b_pre, the error from decode_sse."""
    enc = kernels.encode(x, P.W_enc, P.b_enc, rule, k=P.k, b_pre=P.b_dec)
    x_hat, sse = kernels.decode_sse(enc.code, P.W_dec, P.b_dec, x)
    return enc, x_hat, sse


def step_ours(P: Problem, rule: str):
    def run():
        P.zero()
        _ours(P, P.x, rule)[2].backward()

    return run


def step_ours_auxk(P: Problem, rule: str):
    """Our training step's kernels with AuxK beside the main code (every fourth latent dead: the AuxK code is
    full), the AuxK loss as the model computes it: the dead latents reconstruct the detached residual."""
    dead = torch.arange(P.n, device=DEV) % 4 == 0

    def run():
        P.zero()
        enc = kernels.encode(P.x, P.W_enc, P.b_enc, rule, k=P.k, b_pre=P.b_dec, dead=dead, k_aux=K_AUX)
        x_hat, sse = kernels.decode_sse(enc.code, P.W_dec, P.b_dec, P.x)
        e = (P.x - x_hat).detach()
        aux = (e - kernels.decode(enc.aux, P.W_dec)).float().pow(2).sum() / e.float().var(0).sum().clamp_min(1e-12)
        (sse + aux / 32).backward()

    return run


def matmul_fused(P: Problem, rule: str):
    """Our Triton encoder matmul with the sub-block maxima epilogue alone (None where the rule does not use it)."""
    from kernels.blocks import batch_prune_fits, submax_width, tile_select_fits
    from kernels.encode_matmul_triton import gemm_submax

    fits = batch_prune_fits(P.n, P.k) if rule == "batch" else rule in ("row", "abs") and tile_select_fits(P.n, P.k)
    if not fits:
        return None
    x_in = P.x - P.b_dec
    sub = submax_width(P.n, P.k)
    return lambda: gemm_submax(x_in, P.W_enc.detach(), P.b_enc.detach(), int(rule == "abs"), sub)


def _torch_select(pre, rule, k):
    """Differentiable torch selection (values, indices) for the naive and topk+gather peers."""
    B = pre.shape[0]
    if rule == "row":
        v, i = pre.topk(k, dim=1)
        return v.relu(), i
    if rule == "abs":
        _, i = pre.abs().topk(k, dim=1)
        return pre.gather(1, i), i
    r = pre.relu()
    flat = r.flatten()
    keep = flat.topk(k * B, sorted=False).indices
    vals = flat.gather(0, keep)
    return vals, keep  # flat indices


def step_naive(P: Problem, rule: str):
    """The dense step: z = scatter(select(pre)) [B, n], x_hat = z @ W_dec."""

    def run():
        P.zero()
        pre = (P.x - P.b_dec) @ P.W_enc + P.b_enc
        v, i = _torch_select(pre, rule, P.k)
        if rule == "batch":
            z = torch.zeros_like(pre).flatten().scatter(0, i, v).view_as(pre)
        else:
            z = torch.zeros_like(pre).scatter(1, i, v)
        _loss(z @ P.W_dec + P.b_dec, P.x).backward()

    return run


def step_topk_gather(P: Problem, rule: str):
    """torch.topk + a gather decode (W_dec[idx] weighted sum); for batch, per-row padding via the twin."""

    def run():
        P.zero()
        pre = (P.x - P.b_dec) @ P.W_enc + P.b_enc
        if rule == "batch":
            from kernels.batch_select_twin import select_batch

            v, i = select_batch(pre, P.k)
        else:
            v, i = _torch_select(pre, rule, P.k)
        x_hat = torch.einsum("bk,bkd->bd", v, P.W_dec[i]) + P.b_dec
        _loss(x_hat, P.x).backward()

    return run


def step_sparsify(P: Problem, rule: str):
    if _sp_encoder is None or rule != "row":
        return None

    def run():
        P.zero()
        out = _sp_encoder(P.x - P.b_dec, P.W_enc.T, P.b_enc, P.k, "topk")
        acts, idx = out[0], out[1]
        x_hat = _sp_decoder(idx, acts.to(P.W_dec.dtype), P.W_dec.mT) + P.b_dec
        _loss(x_hat, P.x).backward()

    return run


# ------------------------------------------------------------------------------------------------------------
# correctness at full size (a row subset for the float64 reference)
# ------------------------------------------------------------------------------------------------------------
GRADS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _f64(P: Problem, x: torch.Tensor, code, rule: str) -> tuple[dict, torch.Tensor]:
    """x_hat, loss and every gradient in float64 at the given code's indices (padding stays zero)."""
    W_enc, b_enc, W_dec, b_dec = (p.detach().double().requires_grad_() for p in P.params)
    x64 = x.double()
    pre = (x64 - b_dec) @ W_enc + b_enc
    idx = code.indices
    v = pre.gather(1, idx)
    v = v if rule == "abs" else v.relu()
    v = torch.where(code.values != 0, v, torch.zeros_like(v))
    xh = (v[:, :, None] * W_dec[idx]).sum(1) + b_dec
    loss = (xh - x64).pow(2).sum()
    loss.backward()
    ref = {"x_hat": xh, "loss": loss} | {f"grad_{nm}": p.grad for nm, p in zip(GRADS, (W_enc, b_enc, W_dec, b_dec))}
    return ref, pre.detach()


def _errs(ours: dict, ref: dict) -> dict:
    return {key: ((ours[key].double() - r).norm() / r.norm().clamp_min(1e-300)).item() for key, r in ref.items()}


def _grads(P: Problem, x_hat, loss) -> dict:
    return {"x_hat": x_hat.detach(), "loss": loss.detach()} | {f"grad_{nm}": p.grad for nm, p in zip(GRADS, P.params)}


def check(P: Problem, rule: str, rows: int) -> dict:
    """Ours and the naive dense torch step (same dtype) against float64 at each one's own indices."""
    from kernels.batch_select_twin import select_batch
    from kernels.code import SparseCode
    from kernels.select_twin import select_abs, select_row

    B = min(rows, P.B)
    x = P.x[:B]
    worst: dict[str, float] = {}
    match = []
    valid = 1.0
    for _ in range(3):  # atomics make results vary: keep the largest difference
        P.zero()
        enc, x_hat, loss = _ours(P, x, rule)
        loss.backward()
        ref, pre = _f64(P, x, enc.code, rule)
        for key, err in _errs(_grads(P, x_hat, loss), ref).items():
            worst[key] = max(worst.get(key, 0.0), err)
        with torch.no_grad():  # every chosen value >= the float64 k-th minus bf16 rounding
            score = pre.abs() if rule == "abs" else pre
            idx = enc.code.indices
            if rule == "batch":
                kth = score.relu().flatten().topk(P.k * B).values[-1]
                chosen = score.gather(1, idx)[enc.code.values != 0]
            else:
                top = score.topk(P.k, dim=1)
                kth = top.values[:, -1:]
                chosen = score.gather(1, idx)
                match.append((idx.sort(1).values == top.indices.sort(1).values).all(1).float().mean().item())
            valid = min(valid, float((chosen >= kth - 2**-7 * kth.abs() - 1e-6).all()))
    # the naive dense step in the same dtype
    P.zero()
    pre_b = (x - P.b_dec) @ P.W_enc + P.b_enc
    twin = {"row": select_row, "abs": select_abs, "batch": select_batch}[rule](pre_b, P.k)
    z = torch.zeros_like(pre_b).scatter_add(1, twin.indices, twin.values)
    xh = z @ P.W_dec + P.b_dec
    loss = _loss(xh, x)
    loss.backward()
    code = SparseCode(twin.values.detach(), twin.indices)
    naive = _errs(_grads(P, xh, loss), _f64(P, x, code, rule)[0])
    P.zero()
    within = all(worst[key] <= max(2e-2, 0) and worst[key] <= max(2 * naive[key], 1e-3) for key in worst)
    return {
        "rel_err_max_of_3": worst,
        "naive_rel_err": naive,
        "selection_valid": bool(valid),
        "exact_set_match": statistics.fmean(match) if match else None,
        "rows_checked": B,
        "numerics_met": within,
    }


# ------------------------------------------------------------------------------------------------------------
def main() -> int:
    dtype = torch.bfloat16
    sizes = SMOKE_SIZES if ARGS.smoke else FULL_SIZES
    if ARGS.sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in ARGS.sizes.split(";")]
    if not CUDA and not ARGS.smoke:
        print("no CUDA device: run on the GPU machine, or use --smoke on CPU", file=sys.stderr)
        return 2
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = False
    fams = [f for f in ARGS.families.split(",") if f]
    rows = []
    for d, n, k, B in sizes:
        P = Problem(d, n, k, B, dtype)
        pre = P.pre()
        gemm = bench(lambda: (P.x - P.b_dec) @ P.W_enc)  # noqa: B023
        topk = bench(lambda: pre.topk(k, dim=1))  # noqa: B023
        copy_ms = bench(lambda: pre.clone())  # noqa: B023  one read + one write of [B, n]
        for fam in fams:
            rule = FAMILIES[fam]
            print(f"[{fam} d={d} n={n} k={k} B={B}] checking ...", flush=True)
            try:
                corr = check(P, rule, ARGS.check_rows)
            except Exception as exc:  # noqa: BLE001  one family failing (a Triton version, say) must not lose the run
                print(f"  check failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append(
                    {
                        "family": fam,
                        "rule": rule,
                        "d": d,
                        "n": n,
                        "k": k,
                        "B": B,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    }
                )
                save(rows)
                P.zero()
                continue
            ms = {
                "gemm": gemm,
                "torch_topk": topk,
                "copy_pre": copy_ms,
                "select_ours": bench(lambda: kernels.select(pre, rule, k=k)),  # noqa: B023
            }
            fused = matmul_fused(P, rule) if CUDA else None  # the interpreter's GEMM is no timing
            ms["matmul_fused_triton"] = bench(fused) if fused is not None else None
            mem = {}
            steps = {
                "naive_dense": step_naive(P, rule),
                "topk_gather": step_topk_gather(P, rule),
                "sparsify": step_sparsify(P, rule),
                "ours": step_ours(P, rule),
                "ours_with_auxk": step_ours_auxk(P, rule),
            }
            for name, fn in steps.items():
                if fn is None:
                    ms[name], mem[name] = None, None
                    continue
                try:
                    ms[name] = bench(fn)
                    mem[name] = peak_mib(fn)
                except Exception as exc:  # noqa: BLE001  a peer failing must not lose the run
                    print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
                    ms[name], mem[name] = None, None
            if CUDA:  # the full step: ours + fused Adam, against matmul + optimizer bytes / copy bandwidth
                opt = torch.optim.Adam(P.params, lr=1e-4, fused=True)

                def full(step=steps["ours"], opt=opt):
                    step()
                    opt.step()

                try:
                    ms["full_step_ours_adam"] = bench(full)
                except Exception as exc:  # noqa: BLE001
                    print(f"  full step failed: {type(exc).__name__}: {exc}", flush=True)
                    ms["full_step_ours_adam"] = None
                bw = 2 * pre.numel() * pre.element_size() / (copy_ms * 1e-3)  # bytes/s of a copy
                # fused Adam reads parameter, gradient and two moments and writes three back, in the
                # parameters' dtype (PERFORMANCE.md's 28 bytes per parameter is this for fp32)
                opt_bytes = 7 * sum(p.numel() * p.element_size() for p in P.params)
                ms["full_step_floor"] = gemm + opt_bytes / bw * 1e3
                del opt
            row = {
                "family": fam,
                "rule": rule,
                "d": d,
                "n": n,
                "k": k,
                "B": B,
                "dtype": "bf16",
                "ms": ms,
                "ratio_to_gemm": ms["ours"] / gemm if ms.get("ours") else None,
                "ratio_to_gemm_with_auxk": ms["ours_with_auxk"] / gemm if ms.get("ours_with_auxk") else None,
                # the cost model's ETA, measured: cuBLAS's matmul time over our fused Triton matmul's
                "eta_measured": gemm / ms["matmul_fused_triton"] if ms.get("matmul_fused_triton") else None,
                "select_speedup_vs_topk": topk / ms["select_ours"],
                "peak_mib": mem,
                "correctness": corr,
            }
            row["bar"] = {
                "fwd_bwd": f"<= {BAR[fam]}x gemm",
                "fwd_bwd_met": row["ratio_to_gemm"] is not None and row["ratio_to_gemm"] <= BAR[fam],
                "select_met": None if n < 65536 else row["select_speedup_vs_topk"] >= 3,
                "memory_met": None if not mem.get("sparsify") else mem["ours"] <= mem["sparsify"],
            }
            rows.append(row)
            save(rows)
            print(
                f"  ours {_f(ms['ours'])} ms = {_f(row['ratio_to_gemm'], '{:.2f}x')} the matmul "
                f"({_f(gemm)} ms); select {row['select_speedup_vs_topk']:.2f}x torch.topk",
                flush=True,
            )
            P.zero()
        P = pre = None  # free before the next size allocates
        if CUDA:
            torch.cuda.empty_cache()
    path = save(rows)
    print_table(META, [r for r in rows if "error" not in r])
    for r in rows:
        if "error" in r:
            print(f"FAILED {r['family']} d={r['d']} n={r['n']} k={r['k']}: {r['error']}")
    for key, diff in META["first_use_fallbacks"].items():
        print(f"FIRST-USE CHECK FAILED (this path ran on the torch twin): {key}: {diff}")
    print(f"wrote {path}")
    return 1 if any("error" in r for r in rows) else 0


META = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    "device": device_name(),
    "device_full": torch.cuda.get_device_name() if CUDA else "cpu (TRITON_INTERPRET=1)",
    "torch": torch.__version__,
    "triton": None,
    "sparsify": SPARSIFY,
    "smoke": ARGS.smoke,
    "timer": "triton.testing.do_bench median" if CUDA else "wall-clock median of 3 (interpreter: not a timing)",
}


def save(rows: list[dict]) -> Path:
    """Write every row so far: a run stopped at its time limit keeps what it measured. A Triton path that failed
    its first-use check ran on the torch twin: its timings are the twin's (META lists them)."""
    META["triton"] = _triton_version()
    META["first_use_fallbacks"] = {str(key): diff for key, diff in kernels.first_use.fallbacks().items()}
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{META['date']}-{META['device']}{'-smoke' if ARGS.smoke else ''}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": META, "rows": rows}, indent=1, default=_jsonable))
    tmp.replace(path)
    return path


def _triton_version() -> str:
    import triton

    return triton.__version__


def _jsonable(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def print_table(meta: dict, rows: list[dict]) -> None:
    print(f"\n{meta['device_full']}  torch {meta['torch']}  triton {meta['triton']}  sparsify {meta['sparsify']}")
    print(f"timer: {meta['timer']}; times in ms; ratio = ours fwd+bwd / encoder matmul")
    head = (
        "family",
        "d",
        "n",
        "k",
        "gemm",
        "topk",
        "select",
        "naive",
        "topk+gather",
        "sparsify",
        "ours",
        "ratio",
        "bar",
        "ours + AuxK",
        "ratio + AuxK",
        "MiB ours",
        "MiB sparsify",
        "max rel err",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ms, mem = r["ms"], r["peak_mib"]
        err = max(r["correctness"]["rel_err_max_of_3"].values())
        cells = (
            r["family"],
            r["d"],
            r["n"],
            r["k"],
            _f(ms["gemm"]),
            _f(ms["torch_topk"]),
            _f(ms["select_ours"]),
            _f(ms["naive_dense"]),
            _f(ms["topk_gather"]),
            _f(ms["sparsify"]),
            _f(ms["ours"]),
            _f(r["ratio_to_gemm"], "{:.2f}x"),
            f"{BAR[r['family']]}x",
            _f(ms["ours_with_auxk"]),
            _f(r["ratio_to_gemm_with_auxk"], "{:.2f}x"),
            _f(mem["ours"], "{:.0f}"),
            _f(mem["sparsify"], "{:.0f}"),
            f"{err:.1e}",
        )
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
