"""Transcoders and CLTs proved against the peers' own code: SAELens 6.54 and eai-sparsify 1.3.3 in .venv-interop
(peer_transcoders.py), circuit-tracer 0.5.0 in .venv-circuit (peer_circuit.py, its transcoder classes and loaders).

Both directions, outputs compared (relative error < 1e-5, fp32): what their writers save loads in ours with the
same codes and predictions (skip terms included), and ours saved in their layouts loads in their loaders equally.
Gemma Scope 2 transcoder_all / CLT files and a Gemma Scope transcoder npz, laid out by the peer script, are read by
circuit-tracer's own Gemma Scope loaders and by ours. `make test` builds both environments and sets
SAEKIT_INTEROP_PYTHON, SAEKIT_CIRCUIT_PYTHON and SAEKIT_REQUIRE_INTEROP=1 (a missing environment then fails).
"""

import json
import os
import subprocess
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

import sae.pretrained.registry as registry
from sae import SAEConfig, SparseAutoencoder, load_pretrained
from sae.formats import load_transcoder_set, save_transcoder_set

pytestmark = pytest.mark.slow  # runs the peers in their own environments: make test, not make test-fast

REPO = Path(__file__).resolve().parents[2]
D, O, N, K = 16, 12, 48, 4  # peer_transcoders.py
L, F = 3, 40  # peer_circuit.py (width D)
MLP = {"hook_name": "blocks.3.hook_mlp_in", "target_hook": "blocks.3.hook_mlp_out"}


def peer_python(variable: str, venv: str) -> Path | None:
    env = os.environ.get(variable)
    path = Path(env) if env else REPO / venv / "bin" / "python"
    return path if path.exists() else None


def run_peer(variable: str, venv: str, script: str, root: Path, **env_extra: str) -> dict:
    python = peer_python(variable, venv)
    if python is None:
        why = f"no {venv}: run `make test` (it builds {venv}) or set {variable} to its python"
        if os.environ.get("SAEKIT_REQUIRE_INTEROP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peers never see saekit
    env.update(env_extra)
    script_path = Path(__file__).with_name(script)
    done = subprocess.run([str(python), str(script_path), str(root)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{script} failed ({python}):\n{done.stderr[-4000:]}")
    return {
        "root": root,
        "theirs": load_file(root / "theirs.safetensors"),
        "ours_in_theirs": load_file(root / "ours_in_theirs.safetensors"),
        "seen": json.loads((root / "ours_in_theirs.json").read_text()),
    }


def randomised(cfg: SAEConfig, seed: int, thresholds: tuple[float, float] = (0.0, 0.2)) -> SparseAutoencoder:
    """Our dictionary with non-trivial weights, thresholds uniform in `thresholds`, both scales away from 1."""
    sae = SparseAutoencoder(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    low, high = thresholds
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for family in sae.families:
            if hasattr(family, "threshold"):
                family.threshold.copy_(low + torch.rand(family.threshold.shape, generator=g) * (high - low))
        if cfg.normalize == "dataset_scalar":
            sae.input_scale.fill_(1.5)
            sae.target_scale.fill_(0.7)
    return sae.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def assert_same(codes: torch.Tensor, out: torch.Tensor, want_codes: torch.Tensor, want_out: torch.Tensor) -> None:
    assert (want_codes != 0).sum(-1).float().mean() > 1, "the dictionary fires (almost) nothing: the test tests nothing"
    assert rel_err(codes, want_codes) < 1e-5
    assert rel_err(out, want_out) < 1e-5


# --- SAELens and sparsify -------------------------------------------------------------------------
THEIRS_LENS = {  # folder -> (our input hook, our target hook, skip)
    "transcoder": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", False),
    "skip_transcoder": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", True),
    "jumprelu_transcoder": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", False),
    "jumprelu_skip_transcoder": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", True),
    "sparsify_transcoder/layers.3.mlp": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", False),
    "sparsify_skip_transcoder/layers.3.mlp": ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", True),
    "sparsify_skip_sae/layers.3": ("blocks.3.hook_resid_post", "blocks.3.hook_resid_post", True),
}


def _ours_lens() -> dict[str, tuple[SparseAutoencoder, str, dict]]:
    """name -> (our transcoder, the layout it is saved in, what their loader must make of it)."""
    scaled = {"normalize": "dataset_scalar"}
    specs = {
        "standard": (dict(family="standard", k=None, **scaled), "saelens-strict", {"architecture": "transcoder"}),
        "standard_skip": (dict(family="standard", k=None, skip=True), "saelens-strict", {"architecture": "skip_transcoder"}),
        "jumprelu": (dict(family="jumprelu", k=None, **scaled), "saelens-strict", {"architecture": "jumprelu_transcoder"}),
        "jumprelu_skip_ours": (
            dict(family="jumprelu", k=None, skip=True, **scaled),
            "saelens",
            {"architecture": "jumprelu_skip_transcoder"},
        ),
        "sparsify_transcoder": (dict(k=K, d_out=D, **scaled), "sparsify", {"transcode": True, "skip": False}),
        "sparsify_skip_transcoder": (dict(k=K, d_out=D, skip=True, **scaled), "sparsify", {"transcode": True, "skip": True}),
        "sparsify_skip_sae": (
            dict(k=K, d_out=D, skip=True, hook_name="blocks.3.hook_resid_post", target_hook="blocks.3.hook_resid_post"),
            "sparsify",
            {"transcode": False, "skip": True},
        ),
    }
    out = {}
    for i, (name, (kw, layout, seen)) in enumerate(specs.items()):
        cfg = SAEConfig(**{"d_in": D, "d_out": O, "n_latents": N, "normalize": "none", "model_name": "tiny", **MLP, **kw})
        if layout != "sparsify":
            seen = {**seen, "hook_name_out": cfg.target_hook}
        out[name] = (randomised(cfg, seed=i), layout, seen)
    return out


OURS_LENS = sorted(_ours_lens())
REGISTRY = {  # SAELens's release -> (sae id, our input hook, target hook, skip), laid out by peer_transcoders.py
    "gemma-scope-2-1b-pt-transcoders-all": (
        "layer_3_width_16k_l0_big_affine",
        "blocks.3.hook_mlp_in",
        "blocks.3.hook_mlp_out",
        True,
    ),
    "mwhanna-qwen3-0.6b-transcoders-lowl0": ("layer_1", "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out", False),
    "mntss-gemma-2-2b-2.5m-clt-as-per-layer": ("layer_1", "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out", False),
}


@pytest.fixture(scope="module")
def lens(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcoders-lens")
    x = torch.randn(48, D, generator=torch.Generator().manual_seed(3)) * 2 + 0.3
    save_file({"x": x}, root / "x.safetensors")
    ours = _ours_lens()
    for name, (sae, layout, _) in ours.items():
        sae.save(root / "ours" / name, format=layout)
    (root / "ours" / "manifest.json").write_text(
        json.dumps({n: "sparsify" if layout == "sparsify" else "saelens" for n, (_, layout, _) in ours.items()})
    )
    peer = run_peer(
        "SAEKIT_INTEROP_PYTHON", ".venv-interop", "peer_transcoders.py", root, HF_HUB_CACHE=str(root / "hf"), HF_HUB_OFFLINE="1"
    )
    return {**peer, "x": x, "ours": ours}


def _from_their_registry(lens, monkeypatch, release: str) -> SparseAutoencoder:
    """SAELens's release id through our registry (its real pretrained_saes.yaml) and the cache the peer laid out."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(lens["root"] / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(registry, "saelens_yaml_path", lambda: Path(lens["seen"]["_saelens_registry"]))
    registry.saelens_releases.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a CLT layer read alone warns that its decoders are summed, as SAELens's does
            return load_pretrained(release, sae_id=REGISTRY[release][0]).eval()
    finally:
        registry.saelens_releases.cache_clear()


@pytest.mark.parametrize(
    "case", [f"theirs:{n}" for n in THEIRS_LENS] + [f"ours:{n}" for n in OURS_LENS] + [f"registry:{n}" for n in REGISTRY]
)
def test_saelens_and_sparsify_transcoders(lens, case, monkeypatch):
    side, name = case.split(":")
    x = lens["x"]
    if side == "registry":  # SAELens's release id: its from_pretrained and our load_pretrained on the same files
        sae = _from_their_registry(lens, monkeypatch, name)
        assert (sae.cfg.hook_name, sae.cfg.target_hook, sae.cfg.skip) == REGISTRY[name][1:]
        key = f"registry/{name}/{REGISTRY[name][0]}"
        with torch.no_grad():
            assert_same(sae.encode_dense(x), sae.predict(x), lens["theirs"][f"{key}.codes"], lens["theirs"][f"{key}.out"])
    elif side == "theirs":  # their writer -> our loader
        sae = load_pretrained(lens["root"] / "theirs" / name).eval()
        assert (sae.cfg.hook_name, sae.cfg.target_hook, sae.cfg.skip) == THEIRS_LENS[name]
        with torch.no_grad():
            assert_same(sae.encode_dense(x), sae.predict(x), lens["theirs"][f"{name}.codes"], lens["theirs"][f"{name}.out"])
    else:  # our writer -> their loader
        sae, _, seen = lens["ours"][name]
        assert lens["seen"][name] == seen
        with torch.no_grad():
            got = lens["ours_in_theirs"]
            assert_same(got[f"{name}.codes"], got[f"{name}.out"], sae.encode_dense(x), sae.predict(x))


# --- circuit-tracer -------------------------------------------------------------------------------
THEIRS_CIRCUIT = ["set_jumprelu_skip", "set_relu", "clt_jumprelu", "clt_relu", "gs2_transcoder_all", "gs2_clt", "gs_transcoder"]
CLT_TEMPLATES = {"hook_name": "blocks.{}.hook_mlp_in", "target_hook": "blocks.{}.hook_mlp_out"}


def _ours_circuit() -> dict[str, SparseAutoencoder | dict[int, SparseAutoencoder]]:
    def layer(i: int, seed: int, **kw) -> SparseAutoencoder:
        hooks = {"hook_name": f"blocks.{i}.hook_mlp_in", "target_hook": f"blocks.{i}.hook_mlp_out"}
        cfg = SAEConfig(d_in=D, d_out=D, n_latents=F, model_name="tiny", **hooks, **kw)
        return randomised(cfg, seed=seed, thresholds=(-0.1, 0.3))  # circuit-tracer's JumpReLU is ours, theta < 0 too

    clt = SAEConfig(
        d_in=D, d_out=D, n_latents=F, family="jumprelu", layers=L, normalize="dataset_scalar", model_name="tiny", **CLT_TEMPLATES
    )
    return {
        "ours_set_jumprelu_skip": {i: layer(i, i, family="jumprelu", skip=True, normalize="dataset_scalar") for i in range(L)},
        "ours_set_relu": {i: layer(i, 10 + i, family="standard", normalize="none") for i in range(L)},
        "ours_clt": randomised(clt, seed=20, thresholds=(-0.1, 0.3)),
    }


OURS_CIRCUIT = sorted(_ours_circuit())


def _stack(dictionaries: dict[int, SparseAutoencoder], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = torch.stack([dictionaries[i].encode_dense(x[i]) for i in range(L)])
        return codes, torch.stack([dictionaries[i].predict(x[i]) for i in range(L)])


def _clt(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLT's codes [L, B, F] and prediction [L, B, d] from x [L, B, d] (circuit-tracer's order)."""
    xs = x.transpose(0, 1)
    with torch.no_grad():
        codes = sae.encode_dense(xs).view(xs.shape[0], L, F).transpose(0, 1)
        return codes, sae.predict(xs).transpose(0, 1)


@pytest.fixture(scope="module")
def circuit(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcoders-circuit")
    x = torch.randn(L, 32, D, generator=torch.Generator().manual_seed(5)) * 2 + 0.3
    save_file({"x": x}, root / "x.safetensors")
    ours = _ours_circuit()
    for name, what in ours.items():
        if isinstance(what, dict):
            save_transcoder_set(what, root / "ours" / name)
        else:
            what.save(root / "ours" / name, format="circuit-tracer")
    (root / "ours" / "manifest.json").write_text(json.dumps(sorted(ours)))
    return {**run_peer("SAEKIT_CIRCUIT_PYTHON", ".venv-circuit", "peer_circuit.py", root), "x": x, "ours": ours}


def _load_theirs(root: Path, name: str) -> tuple[SparseAutoencoder | dict[int, SparseAutoencoder], bool]:
    """(what our loaders make of their files, whether it must carry a skip term)."""
    if name.startswith("set_"):
        one = load_pretrained(root / name, hook="blocks.1.hook_mlp_in")
        assert (one.cfg.hook_name, one.cfg.target_hook, one.cfg.model_name) == (
            "blocks.1.hook_mlp_in",
            "blocks.1.hook_mlp_out",
            "tiny",
        )
        return load_transcoder_set(root / name), name.endswith("skip")
    if name.startswith("clt_"):
        return load_pretrained(root / name), False
    if name == "gs2_transcoder_all":
        folders = {i: root / "gemma-scope-2" / "transcoder_all" / f"layer_{i}_width_16k_l0_small_affine" for i in range(L)}
        return {i: load_pretrained(f) for i, f in folders.items()}, True
    if name == "gs2_clt":
        return load_pretrained(root / "gemma-scope-2" / "clt" / "width_16k_l0_small_affine"), True
    return load_pretrained(root / "gemma-scope-2b-pt-transcoders" / "layer_1" / "width_16k" / "average_l0_8"), False


@pytest.mark.parametrize("case", [f"theirs:{n}" for n in THEIRS_CIRCUIT] + [f"ours:{n}" for n in OURS_CIRCUIT])
def test_circuit_tracer_transcoders(circuit, case):
    side, name = case.split(":")
    x = circuit["x"]
    if side == "theirs":  # their writer (or the repos' layouts, read by their loaders) -> our loader
        ours, skip = _load_theirs(circuit["root"] / "theirs", name)
        if isinstance(ours, dict):
            assert sorted(ours) == list(range(L)) and all(t.cfg.skip == skip for t in ours.values())
            codes, out = _stack({i: t.eval() for i, t in ours.items()}, x)
        elif ours.cfg.is_clt:
            assert (ours.cfg.layers, ours.cfg.skip, ours.cfg.target_hook) == (L, skip, "blocks.{}.hook_mlp_out")
            codes, out = _clt(ours.eval(), x)
        else:  # Gemma Scope's transcoder of layer 1
            assert (ours.cfg.hook_name, ours.cfg.target_hook) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
            with torch.no_grad():
                codes, out = ours.eval().encode_dense(x[1]), ours.predict(x[1])
        assert_same(codes, out, circuit["theirs"][f"{name}.codes"], circuit["theirs"][f"{name}.out"])
    else:  # our writer -> their loader, through the config.yaml we wrote
        what = circuit["ours"][name]
        seen = circuit["seen"][name]
        clt = not isinstance(what, dict)
        assert seen["kind"] == ("CrossLayerTranscoder" if clt else "TranscoderSet")
        assert (seen["hooks"], seen["model_name"]) == (["hook_mlp_in", "hook_mlp_out"], "tiny")
        assert seen["skip"] == name.endswith("skip")
        codes, out = _clt(what, x) if clt else _stack(what, x)
        got = circuit["ours_in_theirs"]
        assert_same(got[f"{name}.codes"], got[f"{name}.out"], codes, out)


def test_peer_scripts_never_import_saekit():
    for script in ("peer_transcoders.py", "peer_circuit.py"):
        text = Path(__file__).with_name(script).read_text()
        assert "import sae\n" not in text and "from sae " not in text and "from sae." not in text
