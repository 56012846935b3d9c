"""Evaluation metrics against values computed by hand with the Hugging Face models themselves."""

import warnings

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from activations import load_model
from sae.analysis.evaluate import evaluate as run_evaluation
from sae.analysis.evaluate import held_out_contexts, reconstruction_metrics
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Sparse autoencoders split a model's activations into many directions that fire rarely.",
    "Each context is packed from consecutive documents without any padding at all.",
    "A dictionary is judged by what happens to the model when it replaces the activations.",
] * 3


def _sae(d: int, hook: str, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_latents=4 * d, k=8, hook_name=hook, normalize="none"), seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    return sae.eval()


def _hf_run(hf, layer, ids, replace=None):
    """The Hugging Face model's own outputs, the input of `layer` replaced by replace(input) when given."""

    def pre(mod, args, kwargs):
        if args:
            return (replace(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

    handle = layer.register_forward_pre_hook(pre, with_kwargs=True) if replace else None
    try:
        with torch.no_grad():
            return hf(ids, output_hidden_states=True)
    finally:
        if handle:
            handle.remove()


def test_reconstruction_metrics_match_direct_computation(tiny_sae, acts):
    x = acts[:1000]
    m = reconstruction_metrics(tiny_sae, x.split(300))
    out = tiny_sae.eval()(x)
    fvu = ((x - out.x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum()).item()
    assert m["fvu"] == pytest.approx(fvu, abs=1e-6)
    assert m["cosine"] == pytest.approx(F.cosine_similarity(x, out.x_hat, dim=1).mean().item(), abs=1e-5)
    assert m["l0"] == pytest.approx((out.code.values != 0).sum(1).double().mean().item(), abs=1e-9)
    dense = out.code.to_dense(128) != 0
    assert m["dead_latents"] == int((~dense.any(0)).sum())
    assert m["dense_latents"] == int((dense.double().mean(0) > 0.1).sum())
    assert m["eval_tokens"] == 1000


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_path):
    return load_model(tiny_gpt2_path)


def test_spliced_causal_metrics_by_hand(gpt2, tiny_gpt2_path):
    hook = "blocks.1.hook_resid_pre"
    sae, ds = _sae(64, hook), datasets.Dataset.from_dict({"text": TEXTS})
    budget = 50  # ends inside the second batch: later positions are neither spliced nor scored
    m = run_evaluation(sae, gpt2, ds, tokens=budget, batch_size=2, context_len=16, progress=False)

    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2_path).eval()
    batches = list(held_out_contexts(gpt2, ds, tokens=budget, context_len=16, batch_size=2))
    ids, keep = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert int(keep.sum()) == budget and not keep.all()

    def logits(replace=None):
        return _hf_run(hf, hf.transformer.h[1], ids, replace)

    clean = logits()
    x = clean.hidden_states[1]
    x_hat = sae(x.reshape(-1, 64)).x_hat.reshape(x.shape)
    mean = x[keep].mean(0)
    runs = {
        "spliced": logits(lambda h: torch.where(keep[..., None], x_hat, h)),
        "zero_ablation": logits(lambda h: torch.zeros_like(h)),
        "mean_ablation": logits(lambda h: mean.expand_as(h)),
    }

    def ce(lg):  # -log p(next token), averaged over scored positions
        lp = lg[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        return -lp[keep[:, :-1]].mean().item()

    def kl(lg):
        p, q = clean.logits.log_softmax(-1), lg.log_softmax(-1)
        return (p.exp() * (p - q)).sum(-1)[keep].mean().item()

    ce_clean = ce(clean.logits)
    fvu = ((x[keep] - x_hat[keep]).pow(2).sum() / (x[keep] - mean).pow(2).sum()).item()
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert m["ce_loss_clean"] == pytest.approx(ce_clean, rel=1e-4)
    for name, out in runs.items():
        assert m[f"ce_loss_{name}"] == pytest.approx(ce(out.logits), rel=1e-4)
        assert m[f"kl_div_{name}"] == pytest.approx(kl(out.logits), rel=1e-3, abs=1e-6)
    assert m["ce_loss_spliced"] > ce_clean + 1e-3  # the splice really changed something
    assert m["ce_loss_spliced_with_error"] == pytest.approx(ce_clean, abs=1e-5)
    assert m["kl_div_spliced_with_error"] == pytest.approx(0.0, abs=1e-5)
    for short in ("zero", "mean"):
        abl = ce(runs[f"{short}_ablation"].logits)
        assert m[f"loss_recovered_{short}"] == pytest.approx((abl - ce(runs["spliced"].logits)) / (abl - ce_clean), rel=1e-3)
    kz = kl(runs["zero_ablation"].logits)
    assert m["kl_div_score"] == pytest.approx((kz - kl(runs["spliced"].logits)) / kz, rel=1e-3)


def test_spliced_encoder_metrics_by_hand(minilm, minilm_hf):
    hook = "blocks.3.hook_resid_pre"
    sae, ds = _sae(384, hook), datasets.Dataset.from_dict({"text": TEXTS})
    m = run_evaluation(sae, minilm, ds, tokens=60, batch_size=4, context_len=24, progress=False)
    assert m["eval_model_kind"] == "encoder" and "ce_loss_clean" not in m

    bert = minilm_hf.model  # the Hugging Face BertModel itself
    batches = list(held_out_contexts(minilm, ds, tokens=60, context_len=24, batch_size=4))
    ids, keep = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert not keep[:, 0].any()  # CLS is never scored nor spliced

    def hidden(replace=None):
        return _hf_run(bert, bert.encoder.layer[3], ids, replace)

    clean = hidden()
    x = clean.hidden_states[3]
    x_hat = sae(x.reshape(-1, 384)).x_hat.reshape(x.shape)
    spliced = hidden(lambda h: torch.where(keep[..., None], x_hat, h)).last_hidden_state
    zero = hidden(lambda h: torch.zeros_like(h)).last_hidden_state
    ref = clean.last_hidden_state

    def pooled_cos(h):
        return F.cosine_similarity(h.mean(1), ref.mean(1), dim=-1).mean().item()

    assert m["embedding_cos_spliced"] == pytest.approx(pooled_cos(spliced), abs=1e-4)
    assert m["hidden_cos_spliced"] == pytest.approx(F.cosine_similarity(spliced, ref, dim=-1)[keep].mean().item(), abs=1e-4)
    assert m["embedding_cos_zero_ablation"] == pytest.approx(pooled_cos(zero), abs=1e-4)
    assert m["embedding_cos_spliced_with_error"] == pytest.approx(1.0, abs=1e-5)
    c_abl, c_spl = pooled_cos(zero), pooled_cos(spliced)
    assert m["embedding_recovered_zero"] == pytest.approx((c_spl - c_abl) / (1 - c_abl), abs=1e-3)


def test_bad_inputs_name_the_values(gpt2, minilm):
    ds = datasets.Dataset.from_dict({"text": TEXTS})
    with pytest.raises(ValueError, match=r"d_in=32 but hook 'blocks.1.hook_resid_pre' has width 64"):
        run_evaluation(_sae(32, "blocks.1.hook_resid_pre"), gpt2, ds, tokens=10, progress=False)
    with pytest.raises(ValueError, match="unknown hook point 'blocks.9.hook_resid_pre'"):
        run_evaluation(_sae(64, "blocks.9.hook_resid_pre"), gpt2, ds, tokens=10, progress=False)
    with pytest.raises(ValueError, match="tokens must be a positive integer, got 0"):
        run_evaluation(_sae(64, "blocks.1.hook_resid_pre"), gpt2, ds, tokens=0, progress=False)
    with pytest.warns(UserWarning, match="ran out after"):
        m = run_evaluation(
            _sae(64, "blocks.1.hook_resid_pre"), gpt2, ds, tokens=10_000, context_len=16, skip=("spliced",), progress=False
        )
    assert 0 < m["eval_tokens"] < 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no number asked: all the split holds, and no warning that it ran out
        everything = run_evaluation(
            _sae(64, "blocks.1.hook_resid_pre"), gpt2, ds, context_len=16, skip=("spliced",), progress=False
        )
    assert everything["eval_tokens"] == m["eval_tokens"]


@pytest.fixture
def registry():
    """The measure registry, restored after the test: a registration ends with it."""
    from sae.analysis.measures import MEASURES

    before = dict(MEASURES)
    yield MEASURES
    MEASURES.clear()
    MEASURES.update(before)


def test_a_registered_measure_is_in_the_output_and_can_be_skipped(gpt2, registry):
    """A new measure is a function of the held-out pass plus one `register_measure` call."""
    from sae.analysis import measures

    assert list(registry) == ["geometry", "spliced"]

    def mean_norm(run):
        run.distributions["token_norm"] = run.sample.norm(dim=1).cpu()
        return {"mean_activation_norm": run.sample.norm(dim=1).mean().item(), "saw_l0": run.metrics["l0"]}

    measures.register_measure("mean_norm", mean_norm)
    with pytest.raises(ValueError, match="'mean_norm' is already registered"):
        measures.register_measure("mean_norm", mean_norm)
    sae, ds = _sae(64, "blocks.1.hook_resid_pre"), datasets.Dataset.from_dict({"text": TEXTS})
    kept: list[torch.Tensor] = []
    m = run_evaluation(
        sae,
        gpt2,
        ds,
        tokens=40,
        context_len=16,
        skip=("spliced",),
        keep_activations=kept,
        return_distributions=True,
        progress=False,
    )
    x = torch.cat(kept)
    assert m["mean_activation_norm"] == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-6)
    assert m["saw_l0"] == m["l0"] and "ce_loss_clean" not in m and "afa_eps_lbo" in m
    assert list(m)[-3:] == ["mean_activation_norm", "saw_l0", "distributions"]  # after the built-in measures
    torch.testing.assert_close(m["distributions"]["token_norm"], x.norm(dim=1))
    skipped = run_evaluation(sae, gpt2, ds, tokens=40, context_len=16, skip=("spliced", "mean_norm"), progress=False)
    assert "mean_activation_norm" not in skipped and skipped["fvu"] == m["fvu"]
    with pytest.raises(ValueError, match=r"skip names no registered measure: \['nope'\]"):
        run_evaluation(sae, gpt2, ds, tokens=40, skip=("nope",), progress=False)
