"""The feature browser in real headless Chromium: renders, no JS error, no script from the corpus runs,
search / sort / links work; the files it reads are the ones written."""

import json
import re

import pytest
import torch
from tiny_lm import HOSTILE

from sae import SAEConfig, SparseAutoencoder
from sae.analysis.chromium import chromium_path, distinct_colours, launch
from sae.analysis.dashboard import write_browser
from sae.analysis.features import feature_stats

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def stats(lm, docs):
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=300, k=6, hook_name=HOOK), seed=0)
    return feature_stats(sae, lm, docs, tokens=2048, context_len=32, split="all", top_n=5, quantiles=4, progress=False)


def test_files_hold_every_latent(stats, tmp_path):
    index = write_browser(stats, tmp_path / "b", shard_size=128, progress=False)
    assert index.name == "index.html" and (index.parent / "app.js").exists()
    shards = sorted((tmp_path / "b" / "data").glob("shard_*.js"))
    assert len(shards) == 3
    text = shards[1].read_text()
    payload = json.loads(re.match(r"window\.SAE_SHARD\(1, (.*)\);\n$", text, re.S).group(1))
    assert [x["id"] for x in payload] == list(range(128, 256))
    assert payload[5] == json.loads(json.dumps(stats.latent(133)))
    assert "</script>" not in text  # escaped as <\/ inside the JSON
    with pytest.raises(ValueError, match="shard_size"):
        write_browser(stats, tmp_path / "c", shard_size=0)


def test_browser_in_headless_chromium(stats, tmp_path):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    index = write_browser(stats, tmp_path / "browser", shard_size=64, progress=False)
    errors, dialogs, requests = [], [], []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        # bypass_csp: the page's own Content-Security-Policy would block any injected script anyway; without it
        # the test shows the escaping alone keeps the corpus inert (and lets wait_for_function evaluate)
        page = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900}).new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        rows = page.locator("#latents tbody tr")
        assert rows.count() == 100
        # sorted by frequency, descending: the first row is the most frequent latent
        first = int(rows.nth(0).get_attribute("data-latent"))
        assert first == int(torch.argmax(stats["count"]))
        # open it, follow a co-occurrence link to a second latent, come back
        rows.nth(0).locator("a").click()
        page.wait_for_selector(f"body[data-latent='{first}']")
        assert page.locator("#detail h2").inner_text() == f"latent {first}"
        link = page.locator("#detail ul.cooc a").first
        second = int(link.inner_text().lstrip("#"))
        link.click()
        page.wait_for_selector(f"body[data-latent='{second}']")
        assert page.locator("#detail h2").inner_text() == f"latent {second}"
        page.go_back()
        page.wait_for_selector(f"body[data-latent='{first}']")
        # the hostile corpus shows as text: every hostile token appears verbatim, nothing ran or loaded
        shown = page.locator("#detail").inner_text()
        assert sum(h in shown for h in HOSTILE) >= 2, shown[:500]
        assert page.locator("#detail img, #detail script").count() == 0
        png = page.screenshot(full_page=False)
        # search by token text and by id; sort by max activation
        page.fill("#search", "onerror")
        page.wait_for_function("document.getElementById('count').textContent.split(' ')[0] !== '300'")
        hits = [int(r.get_attribute("data-latent")) for r in rows.all()]
        img_id = [i for i, s in stats.token_text.items() if s == HOSTILE[1]][0]
        peaks = stats.peak_tokens()
        shown_tokens = {h: peaks[h] + stats["tokens.top_ids"][h, :3].tolist() for h in range(stats.n_latents)}
        assert (
            hits
            == [
                h
                for h in (int(x) for x in torch.sort(-stats["count"].double(), stable=True).indices)
                if img_id in shown_tokens[h][:6]
            ][:100]
        )
        page.fill("#search", "42")
        page.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
        assert rows.nth(0).get_attribute("data-latent") == "42"
        page.fill("#search", "")
        page.select_option("#sort", "max")
        page.wait_for_function(
            f"document.querySelector('#latents tbody tr').dataset.latent === '{int(torch.argmax(stats['max']))}'"
        )
        colours = distinct_colours(page, png)
        browser.close()
    assert colours > 20, f"screenshot has {colours} colours: blank page?"
    assert errors == [], errors
    assert dialogs == [], f"the corpus ran script: {dialogs}"
    assert all(u.startswith("file://") for u in requests), [u for u in requests if not u.startswith("file://")]


def _explanations(n):
    """Lines as explanations.jsonl holds them: hostile text on some, a needle word on others, scores on most."""
    recs = {}
    for i in range(0, n, 3):
        text = "<script>alert(1)</script> needle" if i % 2 else "<img src=x onerror=alert(2)> plain"
        score = {"balanced_accuracy": round((i * 37 % 100) / 100, 2), "auroc": None, "tpr": 1.0, "tnr": 0.5}
        score.update(n_positive=20, n_negative=20, unparsed=1, ci95=[0.4, 0.9])
        recs[i] = {
            "latent": i,
            "explanation": text,
            "judge": "openai:http://127.0.0.1:1/v1:<b>m</b>",
            "scorer": "openai:http://127.0.0.1:1/v1:<b>m</b>",
            "prompt_version": "saekit-autointerp-1",
            "scores": {"detection": score, "fuzzing": dict(score)} if i % 9 else {},
            "skipped": None,
        }
    recs[1] = {"latent": 1, "explanation": None, "judge": "j", "prompt_version": "p", "scores": {}, "skipped": "never active"}
    return recs


def test_explanations_in_the_files(stats, tmp_path):
    recs = _explanations(stats.n_latents)
    write_browser(stats, tmp_path / "b", shard_size=128, progress=False, explanations=recs)
    text = (tmp_path / "b" / "data" / "shard_00000.js").read_text()
    payload = json.loads(re.match(r"window\.SAE_SHARD\(0, (.*)\);\n$", text, re.S).group(1))
    assert payload[3]["autointerp"]["explanation"] == recs[3]["explanation"] and "autointerp" not in payload[2]
    assert "</script>" not in text
    with pytest.raises(ValueError, match="latent 300"):
        write_browser(stats, tmp_path / "c", explanations={300: {"latent": 300}}, progress=False)


def test_explanations_in_headless_chromium(stats, tmp_path):
    """Shown on the latent's page and in the list, as text; searchable by their text; sortable by score."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    recs = _explanations(stats.n_latents)
    index = write_browser(stats, tmp_path / "browser", shard_size=64, progress=False, explanations=recs)
    errors, dialogs = [], []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_context(bypass_csp=True, viewport={"width": 1400, "height": 900}).new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(index.as_uri() + "#latent=3")
        page.wait_for_selector("body[data-latent='3']")
        panel = page.locator("#explanation")
        assert panel.locator(".explanation-text").inner_text() == "<script>alert(1)</script> needle"
        assert (
            panel.locator("tr[data-method='detection'] td").nth(1).inner_text()
            == f"{recs[3]['scores']['detection']['balanced_accuracy']:.3f}"
        )
        assert "<b>m</b>" in panel.inner_text()  # the judge's name, as text too
        page.goto(index.as_uri() + "#latent=1")
        page.wait_for_selector("body[data-latent='1']")
        assert page.locator("#explanation").inner_text().count("no explanation: never active") == 1
        assert page.locator("#latents thead th").all_inner_texts()[-3:] == ["explanation", "detection", "fuzzing"]
        assert page.locator("#detail script, #detail img, #latents img, #latents script").count() == 0
        # search by explanation text: exactly the latents whose explanation holds it (none of the tokens do)
        page.fill("#search", "needle")
        page.wait_for_function("document.getElementById('count').textContent.split(' ')[0] !== '300'")
        rows = page.locator("#latents tbody tr")
        hits = sorted(int(r.get_attribute("data-latent")) for r in rows.all())
        assert hits == sorted(i for i, r in recs.items() if r["explanation"] and "needle" in r["explanation"])
        # sort by detection score, best first; latents without a score last
        page.fill("#search", "")
        page.select_option("#sort", "score_detection")
        best = max((r["scores"]["detection"]["balanced_accuracy"], -i) for i, r in recs.items() if r["scores"])
        page.wait_for_function(f"document.querySelector('#latents tbody tr').dataset.latent === '{-best[1]}'")
        assert rows.nth(0).locator("td.expl").inner_text() == recs[-best[1]]["explanation"]
        page.click("#order")  # ascending: the worst score first, unscored still last
        worst = min((r["scores"]["detection"]["balanced_accuracy"], i) for i, r in recs.items() if r["scores"])
        page.wait_for_function(f"document.querySelector('#latents tbody tr').dataset.latent === '{worst[1]}'")
        browser.close()
    assert errors == [], errors
    assert dialogs == [], f"an explanation ran script: {dialogs}"
