"""Checkpoint files: nothing in one is executed when it is loaded; written files get the umask's permissions."""

import os
import stat

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.checkpoint import atomic_write, load_checkpoint, save_checkpoint


class _RunsAShellCommand:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker, ckpt = tmp_path / "pwned", tmp_path / "latest.pt"
    torch.save({"step": 3, "sae": _RunsAShellCommand(marker)}, ckpt)
    with pytest.raises(ValueError, match=r"latest\.pt holds objects other than tensors.*could run code: refused"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_a_plain_checkpoint_round_trips(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "betas": (0.9, 0.999), "cfg": {"k": 4}}
    save_checkpoint(tmp_path / "c.pt", state)
    got = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(got["w"], state["w"]) and got["step"] == 7 and got["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", lambda tmp: open(tmp, "w").write("{}"))
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=64)).save(tmp_path / "sae")  # safetensors' own writer
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask
    for name in ("cfg.json", "sae_weights.safetensors"):
        assert stat.S_IMODE((tmp_path / "sae" / name).stat().st_mode) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "sae"]  # no temporary file left behind
