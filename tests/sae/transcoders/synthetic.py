"""Synthetic pairs and tiny dictionaries for the transcoder tests (importable without pytest: the ddp worker
reads them too): inputs that are sparse sums of unit directions, targets a linear map of them
(so sparse in the mapped directions) plus noise; a CLT's targets also carry the earlier layers' inputs."""

import torch

from sae.config import SAEConfig, TrainConfig
from sae.model import SparseAutoencoder

D_IN, D_OUT, N, K = 16, 12, 64, 4


def sparse_inputs(rows: int, d: int, n_feat: int, active: int, gen: torch.Generator) -> torch.Tensor:
    feats = torch.randn(n_feat, d, generator=gen)
    feats /= feats.norm(dim=1, keepdim=True)
    idx = torch.rand(rows, n_feat, generator=gen).topk(active, dim=1).indices
    coef = torch.rand(rows, active, generator=gen) * 3 + 0.5
    return (coef[..., None] * feats[idx]).sum(1) + 1.0


def pair_data(rows: int = 4096, d_in: int = D_IN, d_out: int = D_OUT, noise: float = 0.05, seed: int = 0):
    """(x [rows, d_in], y [rows, d_out]) with y = x A^T + 0.5 + noise."""
    g = torch.Generator().manual_seed(seed)
    x = sparse_inputs(rows, d_in, 48, 3, g)
    A = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    y = x @ A.T + 0.5 + noise * torch.randn(rows, d_out, generator=g)
    return x, y


def clt_data(rows: int = 4096, layers: int = 3, d_in: int = D_IN, d_out: int = D_OUT, seed: int = 0):
    """(x [rows, L, d_in], y [rows, L, d_out]): layer l' of y reads the inputs of layers l <= l'."""
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([sparse_inputs(rows, d_in, 48, 3, g) for _ in range(layers)], 1)
    maps = torch.randn(layers, layers, d_out, d_in, generator=g) / d_in**0.5
    y = torch.stack([sum(x[:, i] @ maps[i, j].T * 0.5 ** (j - i) for i in range(j + 1)) for j in range(layers)], 1)
    return x, y + 0.05 * torch.randn(y.shape, generator=g)


def transcoder(seed: int = 0, **kw) -> SparseAutoencoder:
    base = dict(d_in=D_IN, d_out=D_OUT, n_latents=N, k=K)
    return SparseAutoencoder(SAEConfig(**{**base, **kw}), seed=seed)


def clt(seed: int = 0, layers: int = 3, **kw) -> SparseAutoencoder:
    return transcoder(seed=seed, layers=layers, **kw)


BATCH = 256  # the ddp test's batches


def ddp_train_config() -> TrainConfig:
    return TrainConfig(tokens=BATCH * 40, batch_size=BATCH, dead_window_tokens=1024, init_tokens=1024, checkpoint_every=20)


DDP_KINDS = {"skip": (lambda: transcoder(skip=True), pair_data), "clt": (lambda: clt(skip=True), clt_data)}
