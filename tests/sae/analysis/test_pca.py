import torch

from sae.analysis.pca import PCA, pca_fvu


def test_pca_recovers_a_low_rank_subspace():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g)).Q
    x = torch.randn(2000, 3, generator=g) @ basis.T * 5 + torch.randn(2000, 16, generator=g) * 0.01 + 3
    assert pca_fvu(x[:1500], [x[1500:]], rank=3) < 1e-3
    assert pca_fvu(x[:1500], [x[1500:]], rank=1) > 0.3
    proj = PCA(x, 3).components
    torch.testing.assert_close(proj.T @ proj, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)
