"""Cost model of the Triton kernels on an H100, from the compiled sm_90 binaries: no GPU needed.

    python -m bench.kernel_model [--json OUT.json] [--jobs 2]        (from the repository root)

Compiles every launch of a training step (bench/kernel_model/step.py, launches.py) for sm_90 with Triton's bundled
ptxas,
reads each innermost loop's instructions (and those outside every loop) from the SASS, and prices each launch with

    t_launch = max(bytes / BW,  t_issue)  +  t_gap
    t_issue  = (sum over loops of work * slots_per_elem  +  programs * warps * straight_slots) / (SMSPs * clock)
    slots_per_elem = max(instructions, 2 * ALU-pipe instructions) * warps / tile

(one warp instruction issued per clock per SM sub-partition; the integer ALU pipe has 16 lanes, so its
instructions need 2 clocks). The fused encoder matmul (v4) is priced against the measured cuBLAS matmul:

    t_matmul_fused = t_matmul(measured) / ETA  +  programs * warps * (its straight slots - the plain Triton
                     matmul's) / (SMSPs * clock)          (the epilogue's extra work, not overlapped)

ETA, the Triton matmul's speed as a fraction of cuBLAS's, is an assumption (no GPU measured it); the table
shows the ratio at ETA = 1, 0.85 and 0.7. At each ETA the step takes the faster of that and the other route,
cuBLAS's matmul + one maxima pass, as kernels/encode_matmul_triton.py chooses by timing both on the GPU. Torch
launches in the step are priced by bytes only. Then t_step = sum of t_launch + host_syncs * t_sync. The matmul
and torch.topk times are the H100 measurements in PERFORMANCE.md. Last, the full training step (fwd+bwd +
torch's fused Adam, priced by its bytes) against its floor (matmul + Adam's bytes / BW), and the peak memory of
one fwd+bwd against sparsify's by accounting (bench/kernel_model/memory.py). The training step includes AuxK's
code over the dead latents (k_aux = 256, at least that many latents dead); the step without it, which
bench/kernel_bench.py times, is printed beside it. The output is a prediction, not a
measurement: the instruction counts come from the Triton on this machine (`triton.__version__` is printed),
which may differ from the GPU machine's.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernels, not the interpreter's stand-ins

# H100 SXM figures (PERFORMANCE.md: copy bandwidth measured; clock = sustained boost under load)
BW = 3.0e12  # bytes/s
SMSP = 132 * 4  # SM sub-partitions, each issuing one warp instruction per clock
CLOCK = 1.755e9  # Hz
T_GAP = 4e-6  # s between dependent launches (launch latency and tail), per launch
T_SYNC = 20e-6  # s per host sync: the queue drains and refills behind it
# measured on one H100, bf16, B = 4096 (PERFORMANCE.md): (d, n, k) -> (encoder matmul, torch.topk) in ms
MEASURED = {(768, 24576, 32): (0.239, 0.866), (768, 131072, 32): (1.322, 3.889), (2304, 65536, 64): (1.818, 2.022)}
FAMILIES = {"TopK": "row", "AbsTopK": "abs", "BatchTopK": "batch"}
BAR = {"TopK": 1.5, "AbsTopK": 1.7, "BatchTopK": 1.7}
ETA = 0.85  # the Triton matmul's speed as a fraction of cuBLAS's: an assumption (sensitivity printed)
ETAS = (1.0, 0.85, 0.7)
GEMM = "_gemm_submax_kernel"


def price(launch, binaries, matmul_s: float = 0.0, eta: float = ETA) -> dict:
    """Predicted seconds of one launch, with the parts of the formula. The fused matmul (GEMM) is the measured
    cuBLAS time / eta plus what its epilogue adds over the plain Triton matmul's (binaries["baseline"])."""
    from bench.kernel_model.aot import issue_slots, per_element

    mem = launch.nbytes / BW
    row = {"label": launch.label, "bytes": launch.nbytes, "t_mem": mem, "t_alu": 0.0, "instr_per_elem": []}
    if launch.kernel:
        b = binaries[launch.label]
        if len(b.loops) != len(launch.work):
            raise ValueError(
                f"{launch.label}: the binary has {len(b.loops)} innermost loops, the launch describes {len(launch.work)}"
            )
        for loop, work, tile in zip(b.loops, launch.work, launch.tiles()):
            instr, slots = per_element(loop, launch.num_warps, tile)
            row["instr_per_elem"].append(round(instr, 1))
            if launch.kernel != GEMM:
                row["t_alu"] += work * slots / (SMSP * CLOCK)
        straight = issue_slots(b.straight)
        if launch.kernel == GEMM:
            straight -= issue_slots(binaries[f"baseline:{launch.label}"].straight)
            row["epilogue_extra_slots"] = straight
            row["t_alu"] = launch.programs * launch.num_warps * straight / (SMSP * CLOCK)
            row["t"] = matmul_s / eta + row["t_alu"] + T_GAP
            return row
        row["t_alu"] += launch.programs * launch.num_warps * straight / (SMSP * CLOCK)
    row["t"] = max(mem, row["t_alu"]) + T_GAP
    return row


def _grouped(rows: list[dict]) -> list[tuple[dict, int]]:
    """Consecutive rows with the same label as (row, times)."""
    out: list[tuple[dict, int]] = []
    for r in rows:
        if out and out[-1][0]["label"] == r["label"]:
            out[-1] = (r, out[-1][1] + 1)
        else:
            out.append((r, 1))
    return out


def adam_bytes(d: int, n: int, es: int = 2) -> int:
    """Bytes torch's fused Adam moves per step over W_enc, W_dec and the biases: it reads each parameter, its
    gradient and two moments and writes three back, all in the parameters' dtype (bf16 in the benchmark)."""
    return 7 * es * (2 * n * d + n + d)


def print_step_and_memory(summary: list, rows: list[dict]) -> None:
    """The full training step against its floor, and peak memory against sparsify's (bench/kernel_model/memory.py)."""
    from bench.kernel_model.memory import peak_ours, peak_sparsify

    print(
        "\nFull step (fwd+bwd + fused Adam) against its floor = matmul + Adam's bytes / BW "
        f"(7 x 2 bytes per parameter at {BW / 1e12:.1f} TB/s); peak memory of one fwd+bwd, ours against "
        "sparsify's TopK without AuxK (accounting, bench/kernel_model/memory.py):"
    )
    print("| family | d | n | k | full step ms | floor ms | ÷ floor | peak MiB ours | peak MiB sparsify | ours ÷ sparsify |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    parts = []
    for (fam, d, n, k, mm, step, *_), row in zip(summary, rows):
        opt = adam_bytes(d, n) / BW * 1e3
        full, floor = step + opt + T_GAP * 1e3, mm + opt
        phase, ours = peak_ours(FAMILIES[fam], d, n, k, 4096)
        mine = sum(ours.values()) / 2**20
        sparsify = peak_sparsify(d, n, k, 4096) if fam == "TopK" else None  # its step is TopK only
        peer = sum(sparsify[1].values()) / 2**20 if sparsify else None
        row.update(full_step_ms=full, floor_ms=floor, peak_mib_ours=mine, peak_mib_sparsify=peer)
        peer_s = f"{peer:.0f} | {mine / peer:.2f}x" if peer else "- | -"
        print(f"| {fam} | {d} | {n} | {k} | {full:.3f} | {floor:.3f} | {full / floor:.2f}x | {mine:.0f} | {peer_s} |")
        if sparsify:
            parts.append((d, n, k, phase, ours, sparsify))
    for d, n, k, phase, ours, (sp_phase, sp) in parts:
        print(
            f"\n  TopK d={d} n={n} k={k}: ours at {phase}: "
            + ", ".join(f"{name} {b / 2**20:.0f}" for name, b in ours.items())
            + f" MiB\n  sparsify at {sp_phase}: "
            + ", ".join(f"{name} {b / 2**20:.0f}" for name, b in sp.items())
            + " MiB"
        )


def _priced(parts: list, syncs: int, binaries: dict, mm: float, cublas: float | None) -> dict:
    """{eta: (step seconds, route)}: the step at each ETA, its fused matmul replaced by the cuBLAS route
    (cuBLAS's matmul + one maxima pass: `cublas` seconds) where that is faster, as the GPU's timing chooses."""
    gemm = next((p for p in parts if p.kernel == GEMM), None)
    out = {}
    for eta in ETAS:
        t = sum(price(p, binaries, mm * 1e-3, eta)["t"] for p in parts) + syncs * T_SYNC
        if gemm is None:
            out[eta] = (t + mm * 1e-3, "cublas")
            continue
        fused_t = price(gemm, binaries, mm * 1e-3, eta)["t"]
        out[eta] = (t, "fused") if fused_t <= cublas else (t - fused_t + cublas, "cublas + maxima pass")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the per-part predictions here")
    ap.add_argument("--jobs", type=int, default=2, help="parallel compiles")
    a = ap.parse_args()
    import triton

    from bench.kernel_model.aot import _JIT, binary_key, compile_all
    from bench.kernel_model.launches import K_AUX, SIZES, launches
    from bench.kernel_model.step import select_parts, step_parts

    plans = {}
    for d, n, k, B in SIZES:
        for fam, rule in FAMILIES.items():
            plans[(d, n, k, fam)] = {
                "step": step_parts(rule, d, n, k, B),
                "no_auxk": step_parts(rule, d, n, k, B, k_aux=0),
                "select": select_parts(rule, n, k, B),
            }
    ours = [p for plan in plans.values() for parts, _ in plan.values() for p in parts if p.kernel]
    base = {}  # each fused matmul's plain Triton twin: what its epilogue adds is priced from the difference
    for (d, n, k, _), plan in plans.items():
        plain = next(la for la in launches(d, n, k, 4096, "bf16") if la.label.startswith("matmul alone"))
        for la in plan["step"][0]:
            if la.kernel == GEMM:
                base[f"baseline:{la.label}"] = plain
    passes = {}  # the maxima pass of the cuBLAS route, per (fused matmul's mode: "row" or "abs", size)
    for d, n, k, B in SIZES:
        for mode in ("row", "abs"):
            passes[(mode, d, n, k)] = next(
                la for la in launches(d, n, k, B, "bf16") if la.label.startswith(f"{mode} sub-block maxima pass")
            )
    bins = compile_all(ours + list(base.values()) + list(passes.values()), jobs=a.jobs)
    binaries = {la.label: bins[binary_key(_JIT[la.kernel], la)] for la in ours}
    binaries.update({key: bins[binary_key(_JIT[la.kernel], la)] for key, la in base.items()})
    binaries.update({la.label: bins[binary_key(_JIT[la.kernel], la)] for la in passes.values()})
    bad = [label for label, b in binaries.items() if not b.ok or b.spill_bytes]
    gemm_code = {label: b for label, b in binaries.items() if label.startswith(("row matmul", "abs matmul"))}
    if bad:
        print("compile errors or spills:", bad)
        return 1
    print(f"Predicted H100 times (Triton {triton.__version__} SASS for sm_90; bf16; B = 4096). Formula:")
    print(
        "  t_launch = max(bytes / BW, (sum_loops work * max(instr, 2*ALU) * warps / tile + programs * warps * "
        "straight_slots) / (SMSPs * clock)) + gap"
    )
    print(
        "  fused matmul = measured cuBLAS matmul / ETA + (its straight-line slots - the plain Triton matmul's)"
        " * warps * programs / (SMSPs * clock)"
    )
    print(
        f"  BW {BW / 1e12:.1f} TB/s, {SMSP} SMSPs at {CLOCK / 1e9:.3f} GHz, gap {T_GAP * 1e6:.0f} us per launch, "
        f"{T_SYNC * 1e6:.0f} us per host sync, ETA {ETA} (assumed); matmul and torch.topk as measured "
        f"(PERFORMANCE.md); the step with AuxK's code (k_aux = {K_AUX}, at least that many latents dead)"
    )
    label, b = min(gemm_code.items())  # the sizes share one tile: one is enough
    print(
        f"  {label}: sm_90 code {b.loops[0].get('HGMMA', 0)} HGMMA (wgmma) per K step, "
        f"{b.regs} registers, {b.shared} B shared memory, {b.spill_bytes} B spilled"
    )
    print()
    out = {
        "triton": triton.__version__,
        "k_aux": K_AUX,
        "constants": {"BW": BW, "SMSP": SMSP, "CLOCK": CLOCK, "T_GAP": T_GAP, "T_SYNC": T_SYNC},
        "rows": [],
    }
    summary = []
    for (d, n, k, fam), plan in plans.items():
        mm, topk = MEASURED[(d, n, k)]
        (parts, syncs), (sel_parts, sel_syncs) = plan["step"], plan["select"]
        fused = any(p.kernel == GEMM for p in parts)
        rows = [price(p, binaries, mm * 1e-3) for p in parts]
        sel = sum(price(p, binaries)["t"] for p in sel_parts) + sel_syncs * T_SYNC
        # the other route (kernels/encode_matmul_triton.py): cuBLAS's matmul, then one pass for the maxima; the
        # step takes whichever is faster on the GPU, so the prediction at each ETA is the smaller of the two
        gemm = next((p for p in parts if p.kernel == GEMM), None)
        cublas = mm * 1e-3 + T_GAP + price(passes[(gemm.label.split()[0], d, n, k)], binaries)["t"] if gemm else None
        priced = _priced(parts, syncs, binaries, mm, cublas)
        plain = _priced(*plan["no_auxk"], binaries, mm, cublas)
        step, route = priced[ETA]
        by_eta = {eta: t for eta, (t, _) in priced.items()}
        routes = {eta: r for eta, (_, r) in priced.items()}
        if fam == "TopK" or os.environ.get("KERNEL_MODEL_ALL"):
            print(
                f"== {fam} d={d} n={n} k={k}: every part of the step"
                if fused
                else f"== {fam} d={d} n={n} k={k}: parts past the (cuBLAS) matmul"
            )
            print(f"   {'part':52} {'MB':>8} {'mem ms':>7} {'ALU ms':>7} {'ms':>7}  instr/elem")
            for r, times in _grouped(rows):
                label = r["label"] if times == 1 else f"{r['label']} (x{times})"
                print(
                    f"   {label[:52]:52} {times * r['bytes'] / 1e6:8.1f} {times * r['t_mem'] * 1e3:7.3f} "
                    f"{times * r['t_alu'] * 1e3:7.3f} {times * r['t'] * 1e3:7.3f}  {r['instr_per_elem'] or ''}"
                )
            print(f"   {'host syncs':52} {syncs:8d} {'':7} {'':7} {syncs * T_SYNC * 1e3:7.3f}")
            if gemm:
                print(
                    f"   (route at ETA {ETA}: {route}; cuBLAS's matmul + the maxima pass would be "
                    f"{cublas * 1e3:.3f} ms against the fused {rows[parts.index(gemm)]['t'] * 1e3:.3f} ms; "
                    f"routes at ETA {'/'.join(map(str, ETAS))}: {' / '.join(routes.values())})\n"
                )
            else:
                print()
        ratio = step / (mm * 1e-3)
        ratios = {eta: t / (mm * 1e-3) for eta, t in by_eta.items()}
        plain_ratio = plain[ETA][0] / (mm * 1e-3)
        summary.append((fam, d, n, k, mm, step * 1e3, ratio, ratios, plain_ratio, BAR[fam], sel * 1e3, topk / (sel * 1e3)))
        out["rows"].append(
            {
                "family": fam,
                "d": d,
                "n": n,
                "k": k,
                "matmul_ms": mm,
                "step_ms": step * 1e3,
                "ratio_to_matmul": ratio,
                "ratio_by_eta": ratios,
                "route_by_eta": routes,
                "step_ms_without_auxk": plain[ETA][0] * 1e3,
                "ratio_without_auxk": plain_ratio,
                "select_ms": sel * 1e3,
                "topk_ms": topk,
                "syncs": syncs,
                "parts": rows,
            }
        )
    eh = " | ".join(f"÷ matmul (ETA {e})" for e in ETAS)
    print(
        f"| family | d | n | k | matmul ms (measured) | fwd+bwd with AuxK ms (predicted, ETA {ETA}) | {eh} | "
        f"without AuxK ÷ matmul (ETA {ETA}) | bar | select ms (predicted) | torch.topk ÷ select |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(ETAS) + "---|---|---|---|")
    for fam, d, n, k, mm, step, _ratio, ratios, plain_ratio, bar, sel, speed in summary:
        rs = " | ".join(f"{ratios[e]:.2f}x" for e in ETAS)
        print(
            f"| {fam} | {d} | {n} | {k} | {mm:.3f} | {step:.3f} | {rs} | {plain_ratio:.2f}x | {bar}x | {sel:.3f} | {speed:.2f}x |"
        )
    print_step_and_memory(summary, out["rows"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0
