"""Interop proved against the real libraries: SAELens 6 and eai-sparsify, run in .venv-interop (peer_side.py).

Dictionaries built and saved by their own classes load in ours with the same codes and reconstructions, and
ours saved in each layout load in theirs with the same outputs (relative error < 1e-5, fp32). `make test`
builds .venv-interop and sets SAEKIT_INTEROP_PYTHON and SAEKIT_REQUIRE_INTEROP=1, so there a missing
environment fails instead of skipping.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae import SAEConfig, SparseAutoencoder, load_all, load_pretrained

pytestmark = pytest.mark.slow  # runs the peers in their own environment: make test, not make test-fast

D, N, K = 24, 96, 6
REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("peer_side.py")
THEIRS = [
    "standard",
    "standard_no_b_dec",
    "topk",
    "topk_rescaled",
    "jumprelu",
    "gated",
    "batchtopk",
    "matryoshka",
    "layer_norm_topk",
]


def interop_python() -> Path | None:
    env = os.environ.get("SAEKIT_INTEROP_PYTHON")
    path = Path(env) if env else REPO / ".venv-interop" / "bin" / "python"
    return path if path.exists() else None


def _ours() -> dict[str, tuple[SparseAutoencoder, str]]:
    """Our dictionaries, one per family SAELens or sparsify can represent, with non-trivial weights."""
    g = torch.Generator().manual_seed(7)
    specs = {
        "standard": ({"family": "standard", "k": None}, "saelens-strict"),
        "topk": ({"family": "topk", "k": K}, "saelens-strict"),
        "topk_scaled": ({"family": "topk", "k": K, "normalize": "dataset_scalar"}, "saelens-strict"),
        "hierarchicaltopk": ({"family": "hierarchicaltopk", "k": K}, "saelens-strict"),
        "abstopk": ({"family": "abstopk", "k": K}, "saelens-strict"),
        "batchtopk": ({"family": "batchtopk", "k": K}, "saelens-strict"),
        "matryoshka": ({"family": "matryoshka", "k": K}, "saelens-strict"),
        "featurechoice": ({"family": "featurechoice", "k": K}, "saelens-strict"),
        "mutualchoice": ({"family": "mutualchoice", "k": K}, "saelens-strict"),
        "jumprelu": ({"family": "jumprelu", "k": None, "options": {"apply_b_dec_to_input": False}}, "saelens-strict"),
        "gated": ({"family": "gated", "k": None}, "saelens-strict"),
        "layer_norm_std": ({"family": "topk", "k": K, "normalize": "layer_norm_std"}, "saelens-strict"),
        "default_save_topk": ({"family": "topk", "k": K}, "saelens"),
        "sparsify_topk": ({"family": "topk", "k": K, "normalize": "dataset_scalar"}, "sparsify"),
        "sparsify_hierarchicaltopk": ({"family": "hierarchicaltopk", "k": K}, "sparsify"),
    }
    out = {}
    for name, (kw, layout) in specs.items():
        sae = SparseAutoencoder(
            SAEConfig(d_in=D, n_latents=N, hook_name="blocks.2.hook_resid_pre", **{"normalize": "none", **kw}), seed=len(out)
        )
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            if hasattr(sae.family, "threshold"):
                thr = torch.rand(N, generator=g) * 0.2
                if name != "jumprelu":
                    thr[:5] = -1.0  # never selected in training: must never fire in theirs either
                sae.family.threshold.copy_(thr)
            sae.input_scale.fill_(1.7 if kw.get("normalize") == "dataset_scalar" else 1.0)
        out[name] = (sae.eval(), layout)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    python = interop_python()
    if python is None:
        why = (
            "no interop environment: run `make test` (it builds .venv-interop) or set SAEKIT_INTEROP_PYTHON to a "
            "python with sae-lens and eai-sparsify"
        )
        if os.environ.get("SAEKIT_REQUIRE_INTEROP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("interop")
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(3)) * 2 + 0.3
    save_file({"x": x}, root / "x.safetensors")
    ours = _ours()
    for name, (sae, layout) in ours.items():
        sae.save(root / "ours" / name, format=layout)
    (root / "ours" / "manifest.json").write_text(
        json.dumps({n: "sparsify" if layout == "sparsify" else "saelens" for n, (_, layout) in ours.items()})
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peers never see saekit
    done = subprocess.run([str(python), str(PEER_SCRIPT), str(root)], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"peer_side.py failed ({python}):\n{done.stderr[-4000:]}")
    return {
        "root": root,
        "x": x,
        "ours": ours,
        "theirs": load_file(root / "theirs.safetensors"),
        "ours_in_theirs": load_file(root / "ours_in_theirs.safetensors"),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", THEIRS)
def test_saelens_dictionaries_load_in_ours(work, name):
    sae = load_pretrained(work["root"] / "theirs" / name).eval()
    assert sae.cfg.hook_name == "blocks.2.hook_resid_pre"
    codes, out = work["theirs"][f"{name}.codes"], work["theirs"][f"{name}.out"]
    assert (codes != 0).sum(1).float().mean() > 1, "their dictionary fires (almost) nothing: the test tests nothing"
    with torch.no_grad():
        assert rel_err(sae.encode_dense(work["x"]), codes) < 1e-5
        assert rel_err(sae(work["x"]).x_hat, out) < 1e-5


def test_sparsify_repo_loads_in_ours(work):
    repo = work["root"] / "theirs" / "sparsify_repo"
    saes = load_all(repo)
    assert sorted(saes) == ["layers.0", "layers.1"]
    one = load_pretrained(repo, hook="blocks.1.hook_resid_post")
    assert torch.equal(one.W_enc, saes["layers.1"].W_enc)
    for name, sae in saes.items():
        with torch.no_grad():
            assert rel_err(sae.eval().encode_dense(work["x"]), work["theirs"][f"sparsify/{name}.codes"]) < 1e-5
            assert rel_err(sae(work["x"]).x_hat, work["theirs"][f"sparsify/{name}.out"]) < 1e-5


@pytest.mark.parametrize("name", sorted(_ours()))
def test_ours_load_in_theirs(work, name):
    sae, layout = work["ours"][name]
    x = work["x"]
    with torch.no_grad():
        out = sae(x).x_hat
        codes = sae.encode_dense(x)
    assert (codes != 0).sum(1).float().mean() > 1
    assert rel_err(work["ours_in_theirs"][f"{name}.out"], out) < 1e-5
    assert rel_err(work["ours_in_theirs"][f"{name}.codes"], codes) < 1e-5


def test_saelens_registry_yaml_resolves(work, monkeypatch):
    """SAELens's real pretrained_saes.yaml, read as data by our registry."""
    import sae.pretrained.registry as registry

    python = interop_python()
    where = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('sae_lens').origin)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    monkeypatch.setattr(registry, "saelens_yaml_path", lambda: Path(where).with_name("pretrained_saes.yaml"))
    registry.saelens_releases.cache_clear()
    try:
        releases = registry.saelens_releases()
        readable = [r for r in releases.values() if not r.format.startswith("saelens:")]
        # SAELens 6.54: 170 releases; 149 use a layout we read (the rest: Qwen Scope/Goodfire/... conversions)
        assert len(releases) > 100 and len(readable) > 0.85 * len(releases)
        # its 27 transcoder and CLT releases (3,836 ids) all resolve to a layout we read
        transcoders = [r for r in releases.values() if r.kind != "sae"]
        assert len(transcoders) >= 27 and all(r in readable for r in transcoders)
        assert sum(len(r.saes) for r in transcoders) >= 3836
        assert releases["gemma-scope-2-1b-pt-transcoders-all"].format == "gemma-scope-2"
        assert releases["mwhanna-qwen3-4b-transcoders"].format == "circuit-tracer"
        jb = releases["gpt2-small-res-jb"]
        assert jb.format == "saelens" and jb.saes["blocks.8.hook_resid_pre"] == "blocks.8.hook_resid_pre"
        assert releases["gemma-scope-2b-pt-res-canonical"].format == "gemma-scope"
        assert any(r.format == "gemma-scope-2" for r in readable)
        assert releases["llama_scope_lxr_8x"].norm_scaling_factor["l0r_8x"] > 0
        print(
            f"SAELens registry: {len(releases)} releases, {len(readable)} in formats we read, "
            f"{sum(len(r.saes) for r in readable)} dictionaries"
        )
    finally:
        registry.saelens_releases.cache_clear()


def test_peer_script_never_imports_saekit():
    text = PEER_SCRIPT.read_text()
    assert "import sae\n" not in text and "from sae " not in text and "from sae." not in text
    assert sys.executable  # the main side runs in the suite's own environment
