import pytest
import torch

from kernels import SparseCode
from sae.families.hierarchical import prefix_squared_error

from .conftest import make


def test_code_at_k_is_prefix_of_code_at_k_max(x):
    sae = make("hierarchicaltopk", k=8).eval()
    full = sae.encode(x)
    assert (full.values[:, :-1] >= full.values[:, 1:]).all(), "sorted by value, decreasing"
    for k in (1, 3, 8):
        part = sae.encode(x, k=k)
        assert torch.equal(part.indices, full.indices[:, :k])
        assert torch.equal(part.values, full.values[:, :k])
    with pytest.raises(ValueError, match="k=9 out of range"):
        sae.encode(x, k=9)


def test_streamed_prefix_loss_and_gradients_match_materialised_reference():
    g = torch.Generator().manual_seed(0)
    B, K, d, n = 6, 5, 7, 20
    r = torch.randn(B, d, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(B, K, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(n, generator=g)[:K] for _ in range(B)])
    W = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    gout = torch.rand(B, dtype=torch.float64, generator=g)

    got = prefix_squared_error(r, SparseCode(v, idx), W)
    recon = (v[..., None] * W[idx]).cumsum(1)  # the [B, K, d] tensor the fused path avoids
    ref = (r[:, None] - recon).pow(2).sum((1, 2))
    torch.testing.assert_close(got, ref)
    grads = torch.autograd.grad((got * gout).sum(), (r, v, W))
    ref_grads = torch.autograd.grad((ref * gout).sum(), (r, v, W))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda r, v, W: prefix_squared_error(r, SparseCode(v, idx), W), (r, v, W))


def test_loss_is_mean_prefix_fvu(x):
    sae = make("hierarchicaltopk", k=4)
    out = sae(x)
    code = out.enc.code
    var = (x - x.mean(0)).pow(2).sum()
    ref = 0.0
    for t in range(1, 5):
        part = SparseCode(code.values[:, :t], code.indices[:, :t])
        ref += (x - sae.decode(part)).pow(2).sum() / var
    torch.testing.assert_close(out.fvu, ref / 4, rtol=1e-5, atol=1e-6)
