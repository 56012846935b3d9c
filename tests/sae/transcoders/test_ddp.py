"""`--distributed ddp` trains a skip transcoder and a CLT (their targets split with the inputs) as the single
process does on the same batches: torchrun with 2 gloo ranks on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae.data import PairBatches
from sae.model import SparseAutoencoder
from sae.train import train

from .synthetic import BATCH, DDP_KINDS, ddp_train_config

TOL = 1e-3


@pytest.mark.slow
def test_ddp_equals_single_process(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the two half-batch ranks land within TOL of the 2-thread run (tests/distributed)
    try:
        for name, (make, data) in DDP_KINDS.items():
            x, y = data(4096)
            ref = make()
            train(ref, PairBatches(x, y, BATCH), ddp_train_config())
            ref.fold_input_scale()
            got = SparseAutoencoder.load(tmp_path / name / "saved").state_dict()
            for key, want in ref.state_dict().items():
                if key not in ("input_scale", "target_scale"):
                    rel = float((got[key] - want).norm() / want.norm().clamp_min(1e-12))
                    assert rel < TOL, f"{name}: {key} differs from the single-process run by {rel:.2e}"
    finally:
        torch.set_num_threads(before)
