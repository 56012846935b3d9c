"""Every Triton kernel compiles for an H100 (sm_90) at the benchmark sizes, bf16 and fp32, without spills.

Runs `python -m kernels.aot` in a child process: the suite sets TRITON_INTERPRET=1, which replaces the jit
functions, and the compile must see the real ones. Each distinct binary is compiled once, in a fresh cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from kernels.aot import per_element


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--jobs", "2", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["uncovered"] == []
    dtypes = {la["label"].split()[-3] for la in res["launches"] if la["label"].split()[-3] in ("bf16", "fp32")}
    assert dtypes == {"bf16", "fp32"}
    for la in res["launches"]:
        assert la["ok"] and la["spill_bytes"] == 0, la
        # the binary was read, and its loops are the ones the launch describes (what the cost model prices)
        assert la["regs"] > 0 and la["straight_instr"] > 0, la
        assert la["loops_found"] == la["loops_described"] == len(la["instr_per_elem"]), la


def test_per_element_prices_the_alu_pipe_at_half_rate():
    loop = Counter({"ISETP": 6, "LDG": 1, "FFMA": 1})  # 8 instructions, 6 on the 16-lane ALU pipe
    instr, slots = per_element(loop, num_warps=4, tile=1024)
    assert instr == pytest.approx(8 * 4 * 32 / 1024)
    assert slots == pytest.approx(12 * 4 / 1024)
