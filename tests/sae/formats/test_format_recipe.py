"""docs/extending.md's format recipe followed to the letter: the layout below is one module's worth of code and one
`register_format` call; `SparseAutoencoder.save(format=...)` then writes it and `load_pretrained` recognises and
reads it like the built-in layouts."""

from pathlib import Path

import pytest
import torch

from sae import Format, SAEConfig, SparseAutoencoder, load_pretrained, register_format
from sae.io import FORMATS, read_json, read_safetensors, write_json, write_safetensors

CFG, WEIGHTS = "toy.json", "toy.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).exists() and (path / WEIGHTS).exists()


def load(path: Path, device=None, dtype=None) -> SparseAutoencoder:
    cfg = SAEConfig.from_dict({**read_json(path / CFG), **({"dtype": dtype} if dtype else {})})
    tensors = read_safetensors(path / WEIGHTS)
    return SparseAutoencoder.from_tensors(cfg, tensors, path / WEIGHTS, device=device)


def save(sae: SparseAutoencoder, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    sae = sae.folded()  # files hold dictionaries that act on raw activations
    write_safetensors(path / WEIGHTS, sae.file_tensors())
    write_json(path / CFG, sae.cfg.to_dict())
    return path


TOY = Format("toy", f"{CFG} + {WEIGHTS}", detect=detect, load=load, save=save)


@pytest.fixture
def toy():
    register_format(TOY)
    yield TOY
    del FORMATS[TOY.name]  # the registry is process-wide: leave it as the other tests expect it


def test_a_registered_format_saves_is_detected_and_loads(toy, tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=32, k=4, family="batchtopk"), seed=0)
    sae.input_scale.fill_(1.5)  # folded on save
    sae.save(tmp_path / "toy", format="toy")
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [CFG, WEIGHTS]
    back = load_pretrained(tmp_path / "toy")
    assert back.cfg == sae.cfg
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    assert load_pretrained(tmp_path / "toy", format="toy", dtype="float64").W_enc.dtype == torch.float64


def test_register_format_refuses_a_duplicate_name_and_a_layout_that_does_nothing(toy):
    with pytest.raises(ValueError, match="format name 'toy' is already registered"):
        register_format(TOY)
    with pytest.raises(ValueError, match="neither loads nor saves"):
        register_format(Format("inert", "nothing"))
    with pytest.raises(TypeError, match="sae.io.Format"):
        register_format({"name": "dict"})
