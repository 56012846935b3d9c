"""explain_text against a direct encode; show / show_text render escaped static HTML."""

import pytest
import torch
from tiny_lm import HOSTILE

from sae import SAEConfig, SparseAutoencoder
from sae.analysis import explain_text, feature_stats, show, show_text

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def sae():
    return SparseAutoencoder(SAEConfig(d_in=32, n_latents=160, k=6, hook_name=HOOK), seed=1)


def test_explain_text_matches_encoding(sae, lm):
    text = "|".join(["the", "cat", HOSTILE[0], "sat", "on", "mat"])
    ex = explain_text(sae, lm, text, top=4)
    ids = [lm.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    dense = sae.encode_dense(lm.run(torch.tensor([ids]), HOOK)[HOOK][0]).abs()
    dense[0] = 0  # BOS is left out
    assert ex.latents == dense.max(0).values.topk(4).indices.tolist()
    torch.testing.assert_close(ex.acts, dense[:, ex.latents].detach())
    assert ex.tokens[3] == HOSTILE[0]
    html = show_text(sae, lm, text, top=4)._repr_html_()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    with pytest.raises(ValueError, match="non-empty"):
        explain_text(sae, lm, "  ")


def test_show_renders_the_latent_panels(sae, lm, docs):
    st = feature_stats(sae, lm, docs, tokens=1024, context_len=32, split="all", top_n=3, quantiles=2, progress=False)
    i = int(torch.argmax(st["count"]))
    view = show(sae, i, st)
    html = view._repr_html_()
    assert f"latent {i}" in html and html.count('class="ctx"') >= 3
    assert "<img" not in html and "<script>" not in html and "&lt;img src=x" in html
    assert view.panel == st.latent(i)
    other = SparseAutoencoder(SAEConfig(d_in=32, n_latents=64, k=4, hook_name=HOOK))
    with pytest.raises(ValueError, match="160 latents, this one has 64"):
        show(other, 0, st)
