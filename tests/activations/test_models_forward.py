"""Full forwards with activation edits, on every backend available here (transformer-lens >= 4 and plain HF)."""

import pytest
import torch
from transformers import AutoModel, GPT2LMHeadModel

from activations import load_model
from activations.models import minilm_path, transformer_lens_major

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def gpt2_ref(tiny_gpt2_path, ids):
    """Logits of the HF model itself, clean and with the residual before layer 1 doubled (by hand)."""
    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2_path).eval()
    with torch.no_grad():
        clean = hf(ids).logits
        h = hf.transformer.h[1].register_forward_pre_hook(
            lambda m, a, kw: ((a[0] * 2, *a[1:]), kw) if a else (a, {**kw, "hidden_states": kw["hidden_states"] * 2}),
            with_kwargs=True,
        )
        doubled = hf(ids).logits
        h.remove()
    return clean, doubled


@pytest.mark.parametrize("backend", ["transformer_lens", "hf"])
def test_causal_forward_gives_logits_and_applies_edits(tiny_gpt2_path, ids, gpt2_ref, backend):
    if backend == "transformer_lens" and (transformer_lens_major() or 4) < 4:
        pytest.skip("a local folder boots through transformer-lens only from version 4 (TransformerBridge)")
    clean, doubled = gpt2_ref
    model = load_model(tiny_gpt2_path, backend=backend)
    assert model.is_causal
    torch.testing.assert_close(model.forward(ids), clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.forward(ids, {HOOK: lambda a: a * 2}), doubled, atol=1e-4, rtol=1e-4)
    with model.edit(HOOK, lambda a: a * 2):  # an edit holds for run() too
        inside = model.run(ids, [HOOK])[HOOK]
    torch.testing.assert_close(inside, model.run(ids, [HOOK])[HOOK] * 2)
    torch.testing.assert_close(model.forward(ids), clean, atol=1e-4, rtol=1e-4)  # left the block: clean again


def test_encoder_forward_is_the_final_hidden_state_not_the_mlm_head(minilm, minilm_hf):
    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = minilm.bos_token_id
    with torch.no_grad():
        ref = AutoModel.from_pretrained(minilm_path()).eval()(ids).last_hidden_state
    for model in (minilm, minilm_hf):
        assert not model.is_causal
        torch.testing.assert_close(model.forward(ids), ref, atol=1e-4, rtol=1e-4)


def test_edits_chain_in_order_and_each_leaves_exactly(minilm, ids):
    hook = "blocks.2.hook_resid_pre"
    base = minilm.run(ids, [hook])[hook]
    with minilm.edit(hook, lambda a: a + 1):
        with minilm.edit(hook, lambda a: a * 3):
            torch.testing.assert_close(minilm.run(ids, [hook])[hook], (base + 1) * 3)
        torch.testing.assert_close(minilm.run(ids, [hook])[hook], base + 1)
    assert torch.equal(minilm.run(ids, [hook])[hook], base)
    assert not minilm.model.hook_dict[hook]._forward_hooks


def test_bad_edits_are_refused(minilm, ids):
    with pytest.raises(ValueError, match="unknown hook point 'blocks.99.hook_resid_pre'"):
        minilm.forward(ids, {"blocks.99.hook_resid_pre": lambda a: a})
    with pytest.raises(ValueError, match=r"returned \(2, 12\), expected shape \(2, 12, 384\)"):
        minilm.forward(ids, {"blocks.2.hook_resid_pre": lambda a: a.sum(-1)})
    with pytest.raises(TypeError, match="must be callable"):
        with minilm.edit("blocks.2.hook_resid_pre", 3):
            pass


@pytest.mark.skipif(
    (transformer_lens_major() or 4) >= 4, reason="HookedTransformer exists in transformer-lens < 4 only (run in .venv-interop)"
)
def test_hooked_transformer_forward_and_edits():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, n_ctx=64, d_vocab=30522, act_fn="gelu", model_name="tiny"
    )
    hooked = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(minilm_path()))
    model = load_model(hooked)
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))
    assert model.backend == "transformer_lens<4" and model.is_causal
    clean = model.forward(ids)
    torch.testing.assert_close(clean, hooked(ids))
    doubled = hooked.run_with_hooks(ids, fwd_hooks=[(HOOK, lambda a, hook: a * 2)])
    torch.testing.assert_close(model.forward(ids, {HOOK: lambda a: a * 2}), doubled)
    assert torch.equal(model.forward(ids), clean) and not hooked.hook_dict[HOOK]._forward_hooks
