"""The transcoder and CLT forward against float64 references written out by hand: every selection rule, the skip
term, FVU of the target, AuxK on the target's residual, decoder geometry per feature, folding the two scales."""

import pytest
import torch

from kernels import SparseCode
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

from .synthetic import D_IN, D_OUT, K, N, clt, transcoder

B = 24


def randomise(sae: SparseAutoencoder, seed: int = 1, scales: bool = True) -> SparseAutoencoder:
    """Random biases, skip weights, thresholds and scales, so no term of the forward is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name.startswith("b_") or name == "W_skip":
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        if hasattr(sae.family, "threshold"):
            for fam in sae.families:
                fam.threshold.copy_(torch.rand(fam.threshold.shape, generator=g) * 0.5)
        if scales and sae.cfg.normalize == "dataset_scalar":
            sae.input_scale.copy_(torch.rand(sae.input_scale.shape, generator=g) + 0.5)
            sae.target_scale.copy_(torch.rand(sae.target_scale.shape, generator=g) + 0.5)
        if scales and sae.centres_input:
            sae.input_offset.copy_(torch.randn(sae.input_offset.shape, generator=g) * 2)
    return sae


def select(pre: torch.Tensor, family: str, k: int, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
    """Each rule written out densely: [B, n] codes from [B, n] pre-activations."""
    if family == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(k, dim=1).indices, True)
        return torch.where(keep, pre.relu(), 0.0)
    if family == "abstopk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.abs().topk(k, dim=1).indices, True)
        return torch.where(keep, pre, 0.0)
    if family == "batchtopk" and training:
        flat = pre.relu().flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter(0, flat.topk(k * pre.shape[0]).indices, True)
        return torch.where(keep.view_as(pre), pre.relu(), 0.0)
    assert threshold is not None  # jumprelu, and batchtopk at inference: a * 1[a > theta]
    return torch.where(pre > threshold, pre, 0.0)


FAMILIES = {"topk": {}, "abstopk": {}, "batchtopk": {"options": {"threshold_start_step": 0}}, "jumprelu": {"k": None}}


def normalised_input(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """What a (non-CLT) transcoder's encoder and skip term read, in float64: x s, minus the offset where centred."""
    x_n = x.double() * sae.input_scale.double()
    return x_n - sae.input_offset.double() if sae.centres_input else x_n


def reference_transcoder(sae: SparseAutoencoder, x: torch.Tensor, training: bool = False):
    """(raw y_hat, normalised y_hat, dense normalised z) in float64: y_hat_n = z W_dec + b_dec + x_n W_skip^T."""
    cfg = sae.cfg
    t = sae.target_scale.double()
    x_n = normalised_input(sae, x)
    pre = x_n @ sae.W_enc.double()
    if cfg.family != "abstopk":
        pre = pre + sae.b_enc.double()
    theta = sae.family.threshold.double() if hasattr(sae.family, "threshold") else None
    z = select(pre, cfg.family, cfg.k or 0, theta, training)
    y_hat_n = z @ sae.W_dec.double() + sae.b_dec.double()
    if cfg.skip:
        y_hat_n = y_hat_n + x_n @ sae.W_skip.double().T
    return y_hat_n / t, y_hat_n, z


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_transcoder_predict_and_forward_match_the_formula(family, skip):
    kw = {"k": K, **FAMILIES[family]}
    sae = randomise(transcoder(family=family, skip=skip, dtype="float64", **kw)).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(B, D_IN, generator=g, dtype=torch.float64), torch.randn(B, D_OUT, generator=g, dtype=torch.float64)
    y_hat, y_hat_n, z = reference_transcoder(sae, x)
    torch.testing.assert_close(sae.predict(x), y_hat)
    out = sae(x, target=y)
    torch.testing.assert_close(out.x_hat, y_hat)
    y_n = y * sae.target_scale.double()
    fvu = (y_n - y_hat_n).pow(2).sum() / (y_n - y_n.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu.double(), fvu, rtol=1e-6, atol=0)  # the loss sums in float32
    # the raw-space code is z / t, and decode(code) is the prediction without the skip term
    torch.testing.assert_close(sae.encode_dense(x), z / sae.target_scale.double())
    no_skip = y_hat - (normalised_input(sae, x) @ sae.W_skip.double().T / sae.target_scale.double() if skip else 0)
    torch.testing.assert_close(sae.decode(sae.encode(x)), no_skip)
    # pre-activations are the encoder's, with no b_dec subtracted from the input (a centred one's offset is)
    pre = normalised_input(sae, x) @ sae.W_enc.double() + (0 if family == "abstopk" else sae.b_enc.double())
    torch.testing.assert_close(sae.pre_activations(x), pre / sae.target_scale.double())


def test_batchtopk_transcoder_trains_on_the_batch_rule():
    sae = randomise(transcoder(family="batchtopk", dtype="float64")).train()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(B, D_IN, generator=g, dtype=torch.float64), torch.randn(B, D_OUT, generator=g, dtype=torch.float64)
    y_hat, _, z = reference_transcoder(sae, x, training=True)
    out = sae(x, target=y)
    torch.testing.assert_close(out.x_hat, y_hat)
    assert int((z != 0).sum()) == K * B == int(out.code.l0().sum())


def reference_clt(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Raw y_hat [B, L, d_out]: layer l' = (sum over l <= l' of z_l W_dec_l[:, l' - l] + b_dec[l'] + x_n W_skip^T) / t."""
    cfg = sae.cfg
    L = cfg.layers
    s, t = sae.input_scale.double(), sae.target_scale.double()
    zs = []
    for i in range(L):
        pre = x[:, i].double() * s[i] @ sae.W_enc[i].double()
        if cfg.family != "abstopk":
            pre = pre + sae.b_enc[i].double()
        theta = sae.families[i].threshold.double() if hasattr(sae.family, "threshold") else None
        zs.append(select(pre, cfg.family, cfg.k or 0, theta, training=False))
    out = []
    for j in range(L):
        y = sae.b_dec[j].double().expand(x.shape[0], -1)
        for i in range(j + 1):
            y = y + zs[i] @ getattr(sae, f"W_dec_{i}")[:, j - i].double()
        if cfg.skip:
            y = y + x[:, j].double() * s[j] @ sae.W_skip[j].double().T
        out.append(y / t[j])
    return torch.stack(out, 1)


@pytest.mark.parametrize("family, skip", [("topk", True), ("jumprelu", False), ("abstopk", True)])
def test_clt_prediction_sums_the_earlier_layers_decoders(family, skip):
    sae = randomise(clt(family=family, skip=skip, dtype="float64", **{"k": K, **FAMILIES[family]})).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, 3, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(B, 3, D_OUT, generator=g, dtype=torch.float64)
    want = reference_clt(sae, x)
    torch.testing.assert_close(sae.predict(x), want)
    out = sae(x, target=y)
    torch.testing.assert_close(out.x_hat, want)
    # the loss: the sum over layers of each layer's FVU
    t = sae.target_scale.double()[:, None]
    y_n, y_hat_n = y * t, want * t
    per_layer = (y_n - y_hat_n).pow(2).sum((0, 2)) / (y_n - y_n.mean(0)).pow(2).sum((0, 2))
    torch.testing.assert_close(out.fvu.double(), per_layer.sum(), rtol=1e-6, atol=0)
    # one code over L * n features: layer l's latent f at l * n + f, each layer's own selection
    code = sae.encode(x)
    layer = code.indices // N
    if family != "jumprelu":
        for i in range(3):
            assert torch.equal((layer == i).sum(1), torch.full((B,), K))  # k per token per layer
    dense = sae.encode_dense(x)
    assert dense.shape == (B, 3 * N)
    assert sae.pre_activations(x).shape == (B, 3 * N)
    no_skip = want - (torch.einsum("bli,loi->blo", x * sae.input_scale.double()[:, None], sae.W_skip.double()) / t if skip else 0)
    torch.testing.assert_close(sae.decode(code), no_skip)


def test_sae_prediction_is_its_reconstruction():
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=K), seed=0)
    sae.input_scale.fill_(1.7)
    x = torch.randn(B, D_IN)
    torch.testing.assert_close(sae.predict(x), sae(x).x_hat, rtol=0, atol=0)


def test_targets_are_required_of_transcoders_and_refused_for_saes():
    sae, tc = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=K)), transcoder()
    x, y = torch.randn(B, D_IN), torch.randn(B, D_OUT)
    with pytest.raises(ValueError, match="an SAE reconstructs its input, so it takes none"):
        sae(x, target=x)
    with pytest.raises(ValueError, match=r"call it as sae\(x, target=y\), y \[batch, d_out=12\]"):
        tc(x)
    with pytest.raises(ValueError, match=r"target of shape \(23, 12\) does not fit.*expected \[24, 12\]"):
        tc(x, target=y[:-1])
    with pytest.raises(ValueError, match=r"target of shape \(24, 16\).*expected \[24, 12\]"):
        tc(x, target=x)
    with pytest.raises(ValueError, match=r"activations of shape \(24, 16\).*\[batch, layers=3, d_in=16\]"):
        clt()(x, target=y)


def test_auxk_reconstructs_the_targets_residual_with_the_dead_latents():
    sae = randomise(transcoder(skip=True, dtype="float64"))
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(B, D_IN, generator=g, dtype=torch.float64), torch.randn(B, D_OUT, generator=g, dtype=torch.float64)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::3] = True
    k_aux = 5
    from sae.families import TrainStep

    out = sae(x, target=y, dead=dead, step=TrainStep(k_aux=k_aux))
    _, y_hat_n, _ = reference_transcoder(sae, x)
    y_n = y * sae.target_scale.double()
    e = y_n - y_hat_n
    pre = normalised_input(sae, x) @ sae.W_enc.double() + sae.b_enc.double()
    masked = torch.where(dead, pre, -torch.inf)
    top = masked.topk(k_aux, dim=1)
    z_aux = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    e_hat = z_aux @ sae.W_dec.double()  # no b_dec: it is in y_hat
    want = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.aux_loss.double(), want, rtol=1e-6, atol=0)


def test_clt_auxk_sums_each_layers_normalised_residual_error():
    sae = randomise(clt(skip=True, dtype="float64"))
    g = torch.Generator().manual_seed(9)
    x = torch.randn(B, 3, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(B, 3, D_OUT, generator=g, dtype=torch.float64)
    dead = torch.zeros(3 * N, dtype=torch.bool)
    dead[5::4] = True
    k_aux = 3
    from sae.families import TrainStep

    out = sae(x, target=y, dead=dead, step=TrainStep(k_aux=k_aux))
    t = sae.target_scale.double()[:, None]
    e = y * t - reference_clt(sae, x) * t
    e_hat = torch.zeros_like(e)
    for i in range(3):
        pre = x[:, i] * sae.input_scale.double()[i] @ sae.W_enc[i].double() + sae.b_enc[i].double()
        top = torch.where(dead[i * N : (i + 1) * N], pre, -torch.inf).topk(k_aux, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        e_hat[:, i:] += torch.einsum("bn,njd->bjd", z, getattr(sae, f"W_dec_{i}").double())
    want = ((e - e_hat).pow(2).sum((0, 2)) / (e - e.mean(0)).pow(2).sum((0, 2))).sum()
    torch.testing.assert_close(out.aux_loss.double(), want, rtol=1e-6, atol=0)


def test_clt_decoder_geometry_is_per_feature():
    sae = clt(layers=3)
    for W in sae.decoders():
        torch.testing.assert_close(W.flatten(1).norm(dim=1), torch.ones(N))  # each feature's whole block: norm 1
    g = torch.Generator().manual_seed(0)
    for W in sae.decoders():
        W.grad = torch.randn(W.shape, generator=g)
    sae.remove_parallel_grad()
    for W in sae.decoders():
        torch.testing.assert_close((W.grad * W).flatten(1).sum(1), torch.zeros(N), atol=1e-5, rtol=0)
    with torch.no_grad():
        sae.W_dec_1.mul_(3.0)
    sae.set_decoder_norm_to_unit()
    torch.testing.assert_close(sae.W_dec_1.flatten(1).norm(dim=1), torch.ones(N))


@pytest.mark.parametrize(
    "make",
    [
        lambda: transcoder(dtype="float64"),
        lambda: transcoder(skip=True, dtype="float64"),
        lambda: transcoder(skip=True, family="jumprelu", k=None, dtype="float64"),
        lambda: transcoder(skip=True, family="vsae", dtype="float64"),
        lambda: clt(skip=True, dtype="float64"),
        lambda: clt(family="batchtopk", dtype="float64", options={"threshold_start_step": 0}),
    ],
    ids=["transcoder", "skip-transcoder", "skip-jumprelu", "skip-vsae", "clt-skip", "clt-batchtopk"],
)
def test_folding_both_scales_keeps_the_raw_prediction(make):
    sae = randomise(make()).eval()
    layers = sae.cfg.layers
    x = torch.randn(B, *([layers] if layers > 1 else []), D_IN, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    before, code_before = sae.predict(x), sae.encode_dense(x)
    folded = sae.folded()
    assert folded is not sae and float(folded.target_scale.min()) == float(folded.target_scale.max()) == 1.0
    assert float(folded.input_scale.min()) == 1.0
    assert not folded.centres_input or not folded.input_offset.any()  # the offset went into b_enc (and b_dec)
    torch.testing.assert_close(folded.predict(x), before)
    torch.testing.assert_close(folded.encode_dense(x), code_before)  # raw-space codes do not move either
    assert folded.folded() is folded


def test_transcoder_init_is_untied_even_where_the_widths_agree():
    """(An untied start trained 9-10% lower FVU on MiniLM's MLP: docs/results/transcoders.md.)"""
    for tc in (transcoder(), transcoder(d_out=D_IN)):
        torch.testing.assert_close(tc.W_enc.norm(dim=0), torch.ones(N))
    square = transcoder(d_out=D_IN)
    assert (square.W_enc * square.W_dec.T).sum(0).abs().mean() < 0.5  # not W_dec^T (whose columns give 1)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_latents=N, k=K))
    assert torch.equal(sae.W_enc, sae.W_dec.T)  # an SAE still starts tied
    assert torch.equal(transcoder(skip=True).W_skip, torch.zeros(D_OUT, D_IN))


def test_expected_tensors_name_the_new_tensors():
    got = {n: tuple(s) for n, (s, _) in SparseAutoencoder.expected_tensors(clt(skip=True, family="jumprelu", k=None).cfg).items()}
    assert got == {
        "W_enc": (3, D_IN, N),
        "b_enc": (3, N),
        "W_dec_0": (N, 3, D_OUT),
        "W_dec_1": (N, 2, D_OUT),
        "W_dec_2": (N, 1, D_OUT),
        "b_dec": (3, D_OUT),
        "W_skip": (3, D_OUT, D_IN),
        "threshold": (3, N),
    }
    tc = {n: tuple(s) for n, (s, _) in SparseAutoencoder.expected_tensors(transcoder(skip=True).cfg).items()}
    assert tc == {"W_enc": (D_IN, N), "b_enc": (N,), "W_dec": (N, D_OUT), "b_dec": (D_OUT,), "W_skip": (D_OUT, D_IN)}


def test_from_tensors_builds_what_file_tensors_holds():
    sae = randomise(clt(skip=True, family="jumprelu", k=None), scales=False)
    tensors = sae.file_tensors()
    again = SparseAutoencoder.from_tensors(sae.cfg, tensors, "test")
    for name, t in again.file_tensors().items():
        assert torch.equal(t, tensors[name]), name
    x = torch.randn(B, 3, D_IN)
    torch.testing.assert_close(again.predict(x), sae.predict(x), rtol=0, atol=0)
    codes = SparseCode(torch.ones(B, 1), torch.full((B, 1), 2 * N + 5))  # layer 2, latent 5: writes layer 2 only
    decoded = sae.decode(codes) - sae.decode(SparseCode(torch.zeros(B, 1), torch.zeros(B, 1, dtype=torch.long)))
    assert decoded[:, :2].abs().max() == 0 and decoded[:, 2].abs().max() > 0
