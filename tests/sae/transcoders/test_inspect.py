"""Evaluating and inspecting transcoders and CLTs on a tiny GPT-2: the metrics of the target and the spliced model,
feature statistics read at the input hooks, a CLT feature's decoder norm per target layer, and the notebook and
browser views (corpus text inserted as text, never markup)."""

import json
import re

import pytest
import torch
from datasets import Dataset

from sae.analysis.chromium import chromium_path, launch
from sae.analysis.dashboard import write_browser
from sae.analysis.evaluate import evaluate, held_out_contexts
from sae.analysis.features import feature_stats
from sae.analysis.interventions import fit_hooks, splice
from sae.analysis.show import latent_html

from .tiny_models import HOSTILE, dictionaries, hf_model, texts

STATS = dict(tokens=768, context_len=16, split="all", top_n=3, quantiles=2, per_quantile=1, progress=False)


@pytest.fixture(scope="module")
def setting():
    model = hf_model("gpt2")
    return model, *dictionaries(model.d_model), Dataset.from_dict({"text": texts(80)})


def _ce(model, ids, keep) -> float:
    lp = model.forward(ids).float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return -lp[keep[:, :-1]].mean().item()


@pytest.mark.slow
def test_eval_scores_the_target_and_the_spliced_model(setting):
    model, tc, clt, docs = setting
    kw = dict(tokens=120, batch_size=4, context_len=16, skip=("geometry",), progress=False)
    m = evaluate(tc, model, docs, **kw)
    batches = list(held_out_contexts(model, docs, tokens=120, context_len=16, batch_size=4))
    x, y = [], []
    for ids, keep in batches:
        acts = model.run(ids, [tc.cfg.hook_name, tc.cfg.target_hook])
        x.append(acts[tc.cfg.hook_name][keep]), y.append(acts[tc.cfg.target_hook][keep])
    x, y = torch.cat(x), torch.cat(y)
    y_hat = tc.predict(x)
    fvu = ((y - y_hat).double().pow(2).sum() / (y - y.mean(0)).double().pow(2).sum()).item()
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert (m["eval_hook"], m["eval_target_hook"]) == (tc.cfg.hook_name, tc.cfg.target_hook)
    assert 0 < m["l0"] <= tc.cfg.k and {"dead_latents", "dense_latents", "loss_recovered_zero", "kl_div_score"} <= set(m)
    ids, keep = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with splice(model, tc, mask=keep):  # the measure's spliced CE is the splice's
        assert m["ce_loss_spliced"] == pytest.approx(_ce(model, ids, keep), rel=1e-4)
    assert abs(m["ce_loss_spliced"] - m["ce_loss_clean"]) > 1e-4
    assert m["ce_loss_spliced_with_error"] == m["ce_loss_clean"] and m["kl_div_spliced_with_error"] == 0.0

    c = evaluate(clt, model, docs, **kw)
    fit = fit_hooks(model, clt)
    assert c["eval_hook"] == list(fit.inputs) and c["spliced_hooks"] == list(fit.targets) == c["eval_target_hook"]
    assert len(c["fvu_per_layer"]) == 2 and c["fvu"] == pytest.approx(sum(c["fvu_per_layer"]) / 2)
    assert c["l0"] == pytest.approx(sum(c["l0_per_layer"]))
    assert c["ce_loss_spliced_with_error"] == c["ce_loss_clean"] and c["ce_loss_spliced"] != c["ce_loss_clean"]


@pytest.fixture(scope="module")
def clt_stats(setting):
    model, _, clt, docs = setting
    return feature_stats(clt, model, docs, **STATS)


def test_clt_features_are_read_at_their_layer_and_show_where_they_write(setting, clt_stats, tmp_path):
    model, _, clt, _ = setting
    st = clt_stats
    n = clt.cfg.latents
    assert st.n_latents == 2 * n and st.meta["layers"] == 2 and st.meta["target_hook"] == clt.cfg.target_hook

    fit = fit_hooks(model, clt)
    ctx = st["contexts"].long()
    acts = model.run(ctx, list(fit.inputs))
    x = torch.stack([acts[h] for h in fit.inputs], 2).reshape(-1, 2, clt.cfg.d_in)
    dense = clt.encode_dense(x).abs().reshape(*ctx.shape, -1) * ~torch.isin(ctx, torch.tensor([0, 1, 2]))[..., None]
    torch.testing.assert_close(st["max"], dense.reshape(-1, 2 * n).max(0).values.detach())

    folded = clt.folded()
    early, late = st.latent(3), st.latent(n + 5)
    assert (early["layer"], early["local"], late["layer"], late["local"]) == (0, 3, 1, 5)
    want = folded.W_dec_0[3].norm(dim=1).tolist()
    assert [w[0] for w in early["writes"]] == [0, 1]
    assert [w[1] for w in early["writes"]] == pytest.approx(want, rel=1e-4)
    assert late["writes"] == [[1, pytest.approx(folded.W_dec_1[5, 0].norm().item(), rel=1e-4)]]

    top = max(range(2 * n), key=lambda i: int(st["count"][i]))
    html = latent_html(st.latent(top), st)
    assert "writes to layers" in html and f"reads {fit.inputs[top // n]}" in html
    shown = [t for t in HOSTILE if any(t == st.token_text.get(int(i)) for i in ctx.unique())]
    assert shown and "<script>" not in html and "<img" not in html

    index = write_browser(st, tmp_path / "browser", shard_size=64, progress=False)
    data = index.parent / "data"
    text = (data / "index.js").read_text()
    meta = json.loads(json.loads(re.match(r"window\.SAE_INDEX = JSON\.parse\((.*)\);\n$", text, re.S).group(1)))
    assert meta["columns"]["layer"] == [0] * n + [1] * n and meta["meta"]["latents_per_layer"] == n
    assert "</script>" not in "".join(p.read_text() for p in data.glob("*.js"))


def test_a_transcoders_stats_record_its_target_and_its_output_effect(setting):
    model, tc, _, docs = setting
    st = feature_stats(tc, model, docs, **STATS)
    assert (st.meta["hook"], st.meta["target_hook"], st.meta["d_out"]) == (tc.cfg.hook_name, tc.cfg.target_hook, 32)
    assert st.meta["tokens_kind"].startswith("logit effect")  # the MLP's output is as wide as the residual
    W = tc.folded().W_dec[7].float() @ model.unembedding().float()
    assert st["tokens.top_ids"][7, 0] == W.argmax()
    assert "predicts " + tc.cfg.target_hook in latent_html(st.latent(7), st)


@pytest.mark.slow
def test_a_clt_in_the_browser_shows_layers_and_writes(clt_stats, tmp_path):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    st, n = clt_stats, clt_stats.meta["latents_per_layer"]
    index = write_browser(st, tmp_path / "browser", shard_size=64, progress=False)
    errors, dialogs = [], []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_context(bypass_csp=True).new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert "2 layers" in page.locator("#summary").inner_text() and "→" in page.locator("#summary").inner_text()
        assert page.locator("#latents thead th").nth(1).inner_text() == "layer"
        page.select_option("#sort", "layer")  # descending: layer 1's features first
        page.wait_for_function(f"+document.querySelector('#latents tbody tr').dataset.latent >= {n}")
        page.goto(index.as_uri() + "#latent=3")
        page.wait_for_selector("body[data-latent='3']")
        assert page.locator("#detail h2").inner_text() == "feature 3 · layer 0, latent 3"
        assert [r.get_attribute("data-layer") for r in page.locator("#writes tr").all()] == ["0", "1"]
        assert "predicts layers 0, 1 of blocks.{}.hook_mlp_out" in page.locator("#detail").inner_text()
        assert page.locator("#detail img, #detail script").count() == 0
        browser.close()
    assert errors == [] and dialogs == []
