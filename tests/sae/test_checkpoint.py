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


@pytest.mark.parametrize("failure", ["enospc", "torch-writer"])
def test_a_full_disk_is_named_and_the_last_checkpoint_stays_valid(tmp_path, monkeypatch, failure):
    """Training stops with "no space left on device" naming the file; the checkpoint before it still loads."""
    import errno

    import sae.checkpoint as checkpoint
    from sae import TrainConfig, train
    from sae.checkpoint import DiskFullError
    from sae.data import TensorBatches

    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    sae = SparseAutoencoder(SAEConfig(d_in=16, n_latents=32, k=4), seed=0)
    real, calls = torch.save, []

    def full_after_one(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 1:
            return real(obj, f, *a, **kw)
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file data/3")

    monkeypatch.setattr(checkpoint.torch, "save", full_after_one)
    if failure == "torch-writer":
        monkeypatch.setattr(checkpoint, "_nearly_full", lambda folder: True)
    cfg = TrainConfig(tokens=2048, batch_size=256, checkpoint_every=2, init_tokens=256)
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*checkpoints/latest\.pt"):
        train(sae, TensorBatches(x, 256, seed=0), cfg, out_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 2
    assert not list(tmp_path.rglob("*.tmp"))  # the failed write left nothing behind


def test_temporaries_of_a_killed_write_are_removed_when_the_run_folder_is_taken_again(tmp_path):
    from sae.cli.run_folder import run_folder

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "cfg.json").write_text("{}")
    stale = [tmp_path / "checkpoints" / ".latest.pt.4242.deadbeef.tmp", tmp_path / ".log.jsonl.4242.0a0b0c0d.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = tmp_path / "notes.tmp"  # not one of atomic_write's: left alone
    keep.write_text("mine")
    with run_folder(tmp_path, resume=True):
        assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine" and (tmp_path / "cfg.json").exists()
