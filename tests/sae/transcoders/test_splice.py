"""splice(model, transcoder) and splice(model, clt) on every backend: the target hook holds the prediction from the
input hook of the same forward (a CLT: each layer's from the inputs as the model ran), the error-term splice leaves
the output exactly unchanged, leaving the block restores the model, and hooks that do not fit are refused."""

import pytest
import torch

from activations import load_model
from sae.analysis.interventions import ablate, fit_hooks, splice, steer
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

from .tiny_models import IN, OUT, dictionaries, hf_model, saved


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny GPT-2 and Llama through plain Hugging Face hooks and through the transformer-lens bridge."""
    out = {f"{kind}-hf": hf_model(kind) for kind in ("gpt2", "llama")}
    for kind in ("gpt2", "llama"):
        out[f"{kind}-bridge"] = load_model(saved(kind, tmp_path_factory.mktemp(kind)))
    return out


def _check_splices(model, tc, clt, ids):
    clean = model.forward(ids)
    hooks = list(dict.fromkeys([*fit_hooks(model, clt).harvested, tc.cfg.hook_name, tc.cfg.target_hook]))
    before = model.run(ids, hooks)
    d = tc.cfg.d_in

    with splice(model, tc):
        got = model.run(ids, [tc.cfg.hook_name, tc.cfg.target_hook])
        changed = model.forward(ids)
    pred = tc.predict(got[tc.cfg.hook_name].reshape(-1, d)).reshape(got[tc.cfg.target_hook].shape)
    assert torch.equal(got[tc.cfg.target_hook], pred)  # the prediction from this forward's input, exactly
    assert torch.equal(got[tc.cfg.hook_name], before[tc.cfg.hook_name])  # the input is read, not changed
    assert not torch.allclose(changed, clean, atol=1e-3)
    with splice(model, tc, error_term=True):
        assert torch.equal(model.forward(ids), clean)

    fit = fit_hooks(model, clt)
    with splice(model, clt):  # the replacement model: each target from the inputs as the model ran
        got = model.run(ids, fit.harvested)
        changed = model.forward(ids)
    x = torch.stack([got[h] for h in fit.inputs], 2).reshape(-1, 2, d)
    y = torch.stack([got[h] for h in fit.targets], 2).reshape(-1, 2, d)
    torch.testing.assert_close(y, clt.predict(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[fit.inputs[1]], before[fit.inputs[1]], atol=1e-4)  # layer 1 read layer 0's edit
    assert not torch.allclose(changed, clean, atol=1e-3)
    with splice(model, clt, error_term=True):
        assert torch.equal(model.forward(ids), clean)
    assert torch.equal(model.forward(ids), clean)  # left: restored exactly
    after = model.run(ids, hooks)
    assert all(torch.equal(after[h], before[h]) for h in hooks)


@pytest.mark.parametrize("name", ["gpt2-hf", "gpt2-bridge", "llama-hf", "llama-bridge"])
def test_splice_on_tiny_causal_lms(models, name):
    model = models[name]
    ids = torch.randint(3, model.tokenizer.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    _check_splices(model, *dictionaries(model.d_model), ids)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformer_lens", "hf"])
def test_splice_on_minilm(minilm, minilm_hf, backend):
    model = minilm if backend == "transformer_lens" else minilm_hf
    ids = torch.randint(1000, 2000, (2, 8), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.bos_token_id
    _check_splices(model, *dictionaries(model.d_model, layer=3), ids)


def test_ablate_and_steer_a_transcoder_act_on_its_prediction(models):
    model = models["gpt2-hf"]
    tc, _ = dictionaries(model.d_model)
    ids = torch.randint(3, 17, (2, 9), generator=torch.Generator().manual_seed(0))
    acts = model.run(ids, [tc.cfg.hook_name, tc.cfg.target_hook])
    x, y = acts[tc.cfg.hook_name].reshape(-1, 32), acts[tc.cfg.target_hook].reshape(-1, 32)
    z = tc.encode_dense(x)
    latents = z.abs().sum(0).topk(2).indices.tolist()
    with ablate(model, tc, latents):
        got = model.run(ids, [tc.cfg.target_hook])[tc.cfg.target_hook].reshape(-1, 32)
    torch.testing.assert_close(got, y - z[:, latents] @ tc.W_dec[latents], atol=1e-5, rtol=1e-5)
    with steer(model, tc, latents[0], alpha=2.0):
        got = model.run(ids, [tc.cfg.target_hook])[tc.cfg.target_hook].reshape(-1, 32)
    torch.testing.assert_close(got, y + 2.0 * y.norm(dim=-1, keepdim=True) * tc.W_dec[latents[0]])


def test_hooks_that_do_not_fit_are_refused_naming_both_values(models):
    model = models["gpt2-hf"]
    hooks = dict(hook_name="blocks.1.hook_mlp_in", target_hook="blocks.1.hook_mlp_out")

    def tc(**kw):
        return SparseAutoencoder(SAEConfig(**{"d_in": 32, "d_out": 32, "n_latents": 16, "k": 2, **hooks, **kw}))

    cases = {
        "the transcoder reads d_in=16 but hook 'blocks.1.hook_mlp_in' has width 32": tc(d_in=16),
        "the transcoder predicts d_out=24 but hook 'blocks.1.hook_mlp_out' has width 32": tc(d_out=24),
        "target hook 'blocks.1.hook_mlp_in' runs before its input hook 'blocks.2.hook_mlp_in'": tc(
            hook_name="blocks.2.hook_mlp_in", target_hook="blocks.1.hook_mlp_in"
        ),
        "unknown hook point 'blocks.1.hook_mlp_outt'": tc(target_hook="blocks.1.hook_mlp_outt"),
        "records no target_hook": tc(target_hook=""),
        "the CLT reads layers 1-3 ('blocks.{}.hook_mlp_in' -> 'blocks.{}.hook_mlp_out') but model": tc(
            layers=3, first_layer=1, hook_name=IN, target_hook=OUT
        ),
    }
    for message, bad in cases.items():
        with pytest.raises(
            ValueError, match=r"\A[^\n]*" + message.replace("(", r"\(").replace(")", r"\)").replace("{}", r"\{\}")
        ):
            splice(model, bad)
    clt = tc(layers=2, hook_name=IN, target_hook=OUT)
    with pytest.raises(ValueError, match="a CLT's features write to several layers"):
        ablate(model, clt, [0])
