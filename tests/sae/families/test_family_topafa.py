import pytest
import torch

from sae.config import SAEConfig
from sae.families.topafa import afa_diagnostic

from .conftest import make


def test_code_norm_is_the_prefix_nearest_the_input_norm(x):
    sae = make("topafa")
    code = sae.encode(x)
    pre = ((x - sae.b_dec) @ sae.W_enc).relu().detach()
    target = (x - sae.b_dec).norm(dim=1)
    srt = pre.sort(dim=1, descending=True).values
    r = srt.pow(2).cumsum(1).sqrt()[:, :32]  # k_max = min(n, d) = 32
    k_ref = (r - target[:, None]).abs().argmin(1) + 1
    assert torch.equal((code.values != 0).sum(1), k_ref)
    norm = code.values.norm(dim=1)
    # no other prefix length gets closer to |x - b_dec|
    assert ((norm - target).abs() <= (r - target[:, None]).abs().min(1).values + 1e-5).all()
    assert (k_ref > 1).any() and k_ref.min() != k_ref.max()


def test_code_norm_tracks_input_norm_across_scales():
    sae = make("topafa")
    with torch.no_grad():
        sae.b_dec.zero_()
    base = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    for s in (0.5, 2.0, 8.0):
        xs = base * s
        rel = (sae.encode(xs).values.norm(dim=1) - xs.norm(dim=1)).abs() / xs.norm(dim=1)
        assert rel.median() < 0.2


def test_afa_loss_term(x):
    sae = make("topafa", options={"afa_coef": 0.5})
    out = sae(x)
    f = out.code.values.norm(dim=1)
    t = (x - sae.b_dec).norm(dim=1)
    var = (x - x.mean(0)).pow(2).mean()  # per element, as the FVU's denominator is
    torch.testing.assert_close(out.extras["afa_loss"], 0.5 * (f - t).pow(2).mean() / var)


def test_k_on_topafa_is_refused():
    with pytest.raises(ValueError, match="topafa' chooses k per token.*k=32"):
        SAEConfig(d_in=32, n_latents=128, family="topafa", k=32)
    with pytest.raises(ValueError, match="k_max=500"):
        SAEConfig(d_in=32, n_latents=128, family="topafa", k=None, options={"k_max": 500})


def test_afa_diagnostic_on_orthonormal_dictionary():
    sae = make("topk", k=32)  # any family: here an orthonormal dictionary with n = d
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        sae.W_dec[:32] = q.T
        sae.W_dec[32:] = 0
        sae.W_enc.zero_()
        sae.W_enc[:, :32] = q
        sae.b_enc.zero_()
    x = torch.randn(50, 32).abs() @ q.T + sae.b_dec  # nonnegative codes: ReLU keeps all
    diag = afa_diagnostic(sae, x)
    torch.testing.assert_close(diag["f_norm"], diag["x_norm"], rtol=1e-4, atol=1e-4)
    assert diag["eps_lbo"] < 1e-4
    assert diag["over_activated_fraction"] <= 1.0
    assert diag["max_abs_cos"] < 1e-5
