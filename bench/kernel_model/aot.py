"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU, and read the binaries.

Triton's wheel bundles `ptxas` and `cuobjdump`, so `triton.compile` can target sm_90 with no driver. From each
binary we read what decides its speed before any GPU runs it: registers, spilled bytes (ptxas's log), and the
instruction mix of its innermost loops (cuobjdump's SASS). Used by the compile test (tests/bench) and by the
cost model (bench/kernel_model). Run the check from the repository root with `python -m bench.kernel_model.aot`
(prints the table, exit status 1 on a compile error or a spill).

Environment: TRITON_INTERPRET must be unset before the kernel modules are imported (the interpreter replaces
every jit function); this module refuses to run otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from typing import NamedTuple

from bench.kernel_model.launches import Launch

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
ARCH = 90  # H100 / H200
# SASS opcodes by the pipe that executes them (Hopper: the integer ALU pipe has 16 lanes per SM sub-partition,
# so one of its warp instructions takes 2 issue slots; FMA-pipe and memory instructions take one)
ALU = {
    "ISETP",
    "IADD3",
    "LOP3",
    "SEL",
    "SHF",
    "PRMT",
    "IMNMX",
    "VIMNMX",
    "FSETP",
    "FSEL",
    "FMNMX",
    "ISCADD",
    "LEA",
    "PLOP3",
    "P2R",
    "R2P",
    "IABS",
    "FLO",
    "POPC",
    "BMSK",
    "SGXT",
    "VIADD",
    "I2IP",
    "F2FP",
    "IADD",
    "VABSDIFF",
    "VIMNMX3",
    "IMNMX3",
    "FMNMX3",
}
FMA = {"FFMA", "FADD", "FMUL", "IMAD", "HFMA2", "HADD2", "HMUL2", "IDP"}
MEM = {"LDG", "STG", "LDS", "STS", "ATOM", "RED", "ATOMG", "REDG", "LDGSTS", "LD", "ST", "ATOMS", "REDUX", "LDSM"}


class Binary(NamedTuple):
    """What one compiled launch looks like on sm_90."""

    key: str
    ok: bool
    error: str
    regs: int
    spill_bytes: int
    shared: int
    loops: list  # innermost loops in address order: Counter of opcode -> count
    straight: Counter = Counter()  # the instructions outside every loop (run once per program)


def _specialize(value, fn_param) -> tuple[str, bool]:
    """(type, divisible by 16) for one runtime argument, following the JIT's rules at launch."""
    if isinstance(value, str):
        return value, value.startswith("*")
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, float):
        return "fp32", False
    if value == 1 and not getattr(fn_param, "do_not_specialize", False):
        return "constexpr", False
    ty = "i32" if -(2**31) <= value < 2**31 else "i64"
    return ty, value % 16 == 0 and not getattr(fn_param, "do_not_specialize", False)


def source(fn, launch: Launch):
    """The ASTSource the JIT would build for this launch."""
    import triton

    sig, cx, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if getattr(p, "is_constexpr", False):
            sig[p.name] = "constexpr"
            cx[(i,)] = launch.constexprs[p.name] if p.name in launch.constexprs else p.default
            continue
        if p.name not in launch.signature:
            raise ValueError(f"launch {launch.label!r}: no value for {fn.__name__}'s parameter {p.name!r}")
        v = launch.signature[p.name]
        ty, div = _specialize(v, p)
        sig[p.name] = ty
        if ty == "constexpr":
            cx[(i,)] = v
        elif div:
            attrs[(i,)] = [["tt.divisibility", 16]]
    extra = set(launch.signature) | set(launch.constexprs)
    extra -= {p.name for p in fn.params}
    if extra:
        raise ValueError(f"launch {launch.label!r}: {fn.__name__} has no parameter(s) {sorted(extra)}")
    return triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)


def binary_key(fn, launch: Launch) -> str:
    """Launches with equal keys compile to the same binary."""
    src = source(fn, launch)
    return json.dumps(
        [
            launch.kernel,
            src.signature,
            sorted((str(k), repr(v)) for k, v in src.constants.items()),
            sorted((str(k), v) for k, v in src.attrs.items()),
            launch.num_warps,
        ]
    )


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas_facts(log: str) -> tuple[int, int]:
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    if regs is None or len(spills) < 2:
        raise RuntimeError(f"could not read registers and spills from ptxas's log:\n{log[-1500:]}")
    return int(regs.group(1)), sum(spills)


def _op(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def innermost_loops(cubin: bytes) -> tuple[list[Counter], Counter]:
    """Opcode counts of each innermost loop (a backward branch containing no other), in address order, and of
    the instructions outside every loop."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", out, re.M)]
    spans = []
    for a, t in ins:
        m = re.search(r"0x([0-9a-f]+)", t) if _op(t) == "BRA" else None
        if m and int(m.group(1), 16) < a:
            spans.append((int(m.group(1), 16), a))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    loops = [Counter(_op(t) for a, t in ins if lo <= a <= hi) for lo, hi in sorted(inner)]
    straight = Counter(
        _op(t) for a, t in ins if not any(lo <= a <= hi for lo, hi in spans) and _op(t) not in ("NOP", "BRA", "EXIT")
    )
    return loops, straight


def compile_one(fn, launch: Launch) -> Binary:
    """Compile for sm_90 (fresh Triton cache expected) and read registers, spills, shared memory and loops."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    key = binary_key(fn, launch)
    log = io.StringIO()
    try:
        with contextlib.ExitStack() as st:
            st.enter_context(knobs.nvidia.scope())
            knobs.nvidia.dump_ptxas_log = True
            st.enter_context(contextlib.redirect_stdout(log))
            k = triton.compile(source(fn, launch), target=GPUTarget("cuda", ARCH, 32), options={"num_warps": launch.num_warps})
    except Exception as exc:  # noqa: BLE001  the error is the result
        head = "\n".join(str(exc).strip().splitlines()[:10])[:1500]
        return Binary(key, False, f"{type(exc).__name__}: {head}", 0, 0, 0, [], Counter())
    regs, spills = _ptxas_facts(log.getvalue())
    loops, straight = innermost_loops(k.asm["cubin"])
    return Binary(key, True, "", regs, spills, getattr(k.metadata, "shared", 0) or 0, loops, straight)


# the modules whose *_kernel functions are compiled
KERNEL_MODULES = (
    "kernels.fallback_triton",
    "kernels.submax_select_triton",
    "kernels.batch_select_triton",
    "kernels.encode_matmul_triton",
    "kernels.decode_triton",
    "kernels.weight_grad_triton",
)


def kernel_functions() -> dict:
    """name -> jit function of every kernel (a `*_kernel` name) in the Triton modules."""
    import importlib

    out = {}
    for mod in KERNEL_MODULES:
        m = importlib.import_module(mod)
        for name, fn in vars(m).items():
            if name.endswith("_kernel"):
                if name in out and out[name] is not fn:
                    raise ValueError(f"two kernels named {name!r} (in {mod} and another of {KERNEL_MODULES})")
                out[name] = fn
    return out


_JIT: dict = {}
_TODO: list = []


def _compile_index(i: int) -> Binary:
    launch = _TODO[i]
    return compile_one(_JIT[launch.kernel], launch)


def compile_all(launches: list[Launch], jobs: int = 2) -> dict[str, Binary]:
    """Compile each distinct binary once (forked workers, a fresh private Triton cache): key -> Binary."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 replaces the jit functions: unset it to compile for sm_90")
    _JIT.clear()
    _JIT.update(kernel_functions())
    missing = {la.kernel for la in launches} - set(_JIT)
    if missing:
        raise KeyError(f"no @triton.jit kernel named {sorted(missing)} in {KERNEL_MODULES}")
    keys = [binary_key(_JIT[la.kernel], la) for la in launches]
    first = {}
    for la, key in zip(launches, keys):
        first.setdefault(key, la)
    _TODO[:] = list(first.values())
    with tempfile.TemporaryDirectory(prefix="saekit_sm90_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        if jobs > 1:
            with mp.get_context("fork").Pool(jobs) as pool:
                done = pool.map(_compile_index, range(len(_TODO)), chunksize=1)
        else:
            done = [_compile_index(i) for i in range(len(_TODO))]
    return {b.key: b for b in done}


def issue_slots(code: Counter) -> int:
    """Warp issue slots one warp spends on `code`: a sub-partition issues one warp instruction per clock, but
    the integer ALU pipe (16 lanes) takes 2 clocks per warp instruction."""
    total = sum(code.values())
    return max(total, 2 * sum(v for op, v in code.items() if op in ALU))


def per_element(loop: Counter, num_warps: int, tile: int) -> tuple[float, float]:
    """(thread instructions, warp issue slots) per element of one innermost loop. An iteration runs the loop
    body once in each of the program's warps and handles `tile` elements."""
    return sum(loop.values()) * num_warps * 32 / tile, issue_slots(loop) * num_warps / tile


def main(argv: list[str] | None = None) -> int:
    """Compile every launch of the benchmark sizes for sm_90; print registers, spills and hot loops."""
    import argparse

    import triton

    from bench.kernel_model.launches import benchmark_launches

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write the per-launch results here")
    a = ap.parse_args(argv)
    launches = benchmark_launches()
    bins = compile_all(launches, jobs=a.jobs)
    uncovered = sorted(set(kernel_functions()) - {la.kernel for la in launches})
    rows, bad = [], len(uncovered)
    if uncovered:
        print(f"FAILED: kernels no launch compiles: {uncovered}")
    print(f"sm_{ARCH}, Triton {triton.__version__}: {len(launches)} launches, {len(bins)} distinct binaries")
    for la in launches:
        b = bins[binary_key(_JIT[la.kernel], la)]
        ok = b.ok and b.spill_bytes == 0
        bad += not ok
        per = [round(per_element(lp, la.num_warps, t)[0], 1) for lp, t in zip(b.loops, la.tiles())]
        rows.append(
            {
                "label": la.label,
                "kernel": la.kernel,
                "ok": b.ok,
                "error": b.error,
                "regs": b.regs,
                "spill_bytes": b.spill_bytes,
                "shared": b.shared,
                "instr_per_elem": per,
                "loops_described": len(la.work),
                "loops_found": len(b.loops),
                "straight_instr": sum(b.straight.values()),
            }
        )
        state = "ok" if ok else ("SPILLS" if b.ok else "FAILED")
        print(
            f"{state:6} {la.label:48} regs {b.regs:3} spill {b.spill_bytes:4} B  smem {b.shared:6} B  hot loops instr/elem {per}"
        )
        if not b.ok:
            print("   ", b.error.replace("\n", "\n    "))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"triton": triton.__version__, "arch": ARCH, "binaries": len(bins), "uncovered": uncovered, "launches": rows},
                f,
                indent=1,
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
