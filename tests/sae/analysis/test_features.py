"""feature_stats against a dense brute-force reference on a tiny model; resume; memory at n = 131072."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.analysis.features import FeatureStats, feature_stats

HOOK = "blocks.1.hook_resid_pre"
KW = dict(tokens=1536, context_len=32, split="all", top_n=4, quantiles=4, per_quantile=2, batch_tokens=256, progress=False)


def _sae(n: int = 192, k: int = 6) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=32, n_latents=n, k=k, hook_name=HOOK), seed=0)


def _dense_reference(sae, lm, stats: FeatureStats) -> torch.Tensor:
    """Dense codes [contexts, T, n] of the contexts the pass saw, specials zeroed as the pass does."""
    ctx = stats["contexts"].long()
    acts = lm.run(ctx, HOOK)[HOOK]
    dense = sae.encode_dense(acts.reshape(-1, acts.shape[-1])).reshape(*ctx.shape, -1).abs()
    special = torch.isin(ctx, torch.tensor(sorted(lm.special_token_ids)))
    return dense * ~special[..., None]


def test_stats_match_dense_reference(lm, docs):
    sae = _sae()
    st = feature_stats(sae, lm, docs, cooc_tokens=10**6, **KW)
    dense = _dense_reference(sae, lm, st).detach()
    flat = dense.reshape(-1, dense.shape[-1])
    assert st.meta["tokens"] == flat.shape[0] >= KW["tokens"]
    assert torch.equal(st["count"], (flat > 0).sum(0))
    torch.testing.assert_close(st["max"], flat.max(0).values)
    torch.testing.assert_close(st["sum"].float(), flat.sum(0), rtol=1e-4, atol=1e-4)
    assert torch.equal(st["hist.counts"].sum(1), st["count"])
    alive = st["count"] > 0
    assert bool((st["hist.upper"][alive] > st["max"][alive]).all())
    # top contexts: per latent the top_n per-context peaks, with the window read from the dense code
    peaks = dense.max(1).values  # [C, n]
    ref = peaks.T.topk(KW["top_n"], dim=1).values
    got = st["top.value"].sort(1, descending=True).values
    torch.testing.assert_close(got.clamp_min(0), ref, atol=1e-6, rtol=1e-5)
    for i in torch.nonzero(st["count"] > 0).squeeze(1)[:20].tolist():
        for j in range(KW["top_n"]):
            c, p = int(st["top.ctx"][i, j]), int(st["top.pos"][i, j])
            if c < 0:
                continue
            assert float(dense[c, p, i]) == pytest.approx(float(st["top.value"][i, j]))
            lo = p - st.meta["window"][0]
            for w, a in enumerate(st["top.window"][i, j].float().tolist()):
                q = lo + w
                want = float(dense[c, q, i]) if 0 <= q < dense.shape[1] else 0.0
                assert a == pytest.approx(want, rel=1e-2, abs=1e-3)
    # co-occurrence on every token: the Jaccard index of the listed pairs
    fired = (flat > 0).float()
    both = fired.T @ fired
    i = int(torch.argmax(st["count"]))
    for j, s in zip(st["cooc.latent"][i].tolist(), st["cooc.jaccard"][i].tolist(), strict=True):
        if j < 0:
            continue
        jac = both[i, j] / (both[i, i] + both[j, j] - both[i, j])
        assert s == pytest.approx(float(jac), rel=1e-5)
    best = max((float(both[i, j] / (both[i, i] + both[j, j] - both[i, j])), j) for j in range(flat.shape[1]) if j != i)
    assert st["cooc.jaccard"][i, 0] == pytest.approx(best[0], rel=1e-5)
    # logit effects of the causal model: W_dec @ W_U
    e = sae.W_dec.detach() @ lm.unembedding()
    assert st.meta["tokens_kind"].startswith("logit effect")
    assert torch.equal(st["tokens.top_ids"][5], e[5].topk(st["tokens.top_ids"].shape[1]).indices)


def test_latent_panels_and_roundtrip(lm, docs, tmp_path):
    sae = _sae()
    st = feature_stats(sae, lm, docs, out=tmp_path, **KW)
    again = FeatureStats.load(tmp_path)
    i = int(torch.argmax(st["count"]))
    assert json.dumps(again.latent(i)) == json.dumps(st.latent(i))
    panel = st.latent(i)
    assert panel["count"] > 0 and len(panel["top"]) == KW["top_n"]
    assert panel["top"][0]["value"] == pytest.approx(panel["max"], rel=1e-3)
    assert all(0 <= g["group"] < KW["quantiles"] for g in panel["quantiles"])
    assert any("<script>" in s for s in st.token_text.values())  # the hostile token is one token
    with pytest.raises(IndexError, match="out of range"):
        st.latent(sae.cfg.n_latents)


def test_resume_after_interruption_equals_one_pass(lm, docs, tmp_path, monkeypatch):
    sae = _sae()
    whole = feature_stats(sae, lm, docs, **KW)
    calls = {"n": 0}
    run = type(lm).run

    def failing(self, tokens, hooks):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return run(self, tokens, hooks)

    monkeypatch.setattr(type(lm), "run", failing)
    with pytest.raises(KeyboardInterrupt):
        feature_stats(sae, lm, docs, out=tmp_path, checkpoint_every=1, **KW)
    monkeypatch.setattr(type(lm), "run", run)
    partial = tmp_path / "feature_stats.safetensors.partial"
    assert partial.exists()
    with pytest.raises(ValueError, match="top_n"):
        feature_stats(sae, lm, docs, out=tmp_path, checkpoint_every=1, **{**KW, "top_n": 3})
    resumed = feature_stats(sae, lm, docs, out=tmp_path, checkpoint_every=1, **KW)
    assert not partial.exists()
    for name, t in whole.tensors.items():
        assert torch.equal(t, resumed[name]), name


def test_bad_arguments_refused_before_work(lm, docs):
    with pytest.raises(ValueError, match="top_n must be an integer >= 1, got 0"):
        feature_stats(_sae(), lm, docs, tokens=100, top_n=0)
    bad = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4, hook_name="blocks.9.nope"))
    with pytest.raises(ValueError, match="unknown hook point"):
        feature_stats(bad, lm, docs, tokens=100)


@pytest.mark.slow
def test_memory_bounded_at_131072_latents(tmp_path):
    """A dense [tokens, n] float32 code here would take 1 GiB; the pass must stay far below."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from tiny_lm import corpus, tiny_lm
        from datasets import Dataset
        from sae import SAEConfig, SparseAutoencoder
        from sae.analysis.features import feature_stats
        lm = tiny_lm()
        sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=131072, k=8, hook_name={HOOK!r}), seed=0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        st = feature_stats(sae, lm, Dataset.from_dict({{"text": corpus(400)}}), tokens=2048, context_len=64,
                           split="all", top_n=5, quantiles=4, per_quantile=1, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(st.meta["tokens"], int((st["count"] > 0).sum()), (peak - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tokens, alive, grew_mib = map(int, out.stdout.split()[-3:])
    assert tokens >= 2048 and alive > 1000
    assert grew_mib < 600, f"the pass grew the process by {grew_mib} MiB"
