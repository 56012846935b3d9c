"""Every Triton kernel compiles for an H100 (sm_90) at the benchmark sizes, bf16 and fp32, without spills.

Runs `python -m bench.kernel_model.aot` in a child process: the suite sets TRITON_INTERPRET=1, which replaces the
jit functions, and the compile must see the real ones. Each distinct binary is compiled once, in a fresh cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = tmp_path / "aot.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kernel_model.aot", "--jobs", "2", "--json", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["uncovered"] == []
    dtypes = {la["label"].split()[-3] for la in res["launches"] if la["label"].split()[-3] in ("bf16", "fp32")}
    assert dtypes == {"bf16", "fp32"}
    for la in res["launches"]:
        assert la["ok"] and la["spill_bytes"] == 0, la
        assert la["regs"] > 0 and la["straight_instr"] > 0, la  # the binary was read
