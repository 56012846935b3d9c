"""python -m sae explain against a loopback OpenAI-compatible server: explanations.jsonl and the browser written,
a rerun sends nothing, a budget stops cleanly, errors in one line, the API key nowhere; killed with SIGKILL and
rerun, no request is repeated and the browser shows the explanations (headless Chromium); a dictionary in
another layout (load_pretrained) gets the same."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sae.analysis.autointerp import load_explanations
from sae.analysis.dashboard import write_browser
from sae.analysis.features import STATS_FILE
from sae.cli import main

KEY = "sk-cli-secret-42"


@pytest.fixture
def run(synthetic, tmp_path):
    stats, _, sae = synthetic
    sae.save(tmp_path / "run")
    stats.save(tmp_path / "run" / STATS_FILE)
    write_browser(tmp_path / "run" / STATS_FILE, tmp_path / "run" / "browser", progress=False)
    return tmp_path / "run"


def _index(browser):
    text = (browser / "data" / "index.js").read_text()
    return json.loads(json.loads(text.removeprefix("window.SAE_INDEX = JSON.parse(").removesuffix(");\n")))


def _everything(folder):
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_explain_writes_lines_and_the_browser_and_a_rerun_sends_nothing(run, fresh, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    argv = ["explain", str(run), "--judge", fresh.url(), "--latents", "0-3,12", "--concurrency", "4"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "5 latents explained this run" in out and "unparsed: 0 explanations, 0 verdicts" in out
    assert f"explanations: {(run / 'explanations.jsonl').resolve()}" in out
    assert f"feature browser: {(run / 'browser' / 'index.html').resolve()}" in out
    recs = load_explanations(run)
    assert sorted(recs) == [0, 1, 2, 3, 12]
    assert recs[12]["explanation"].startswith("the word after") and recs[12]["judge"] == fresh.url()
    assert all(r["scores"]["fuzzing"]["balanced_accuracy"] == 1.0 for r in recs.values())
    index = _index(run / "browser")
    assert index["columns"]["explanation"][:4] == [recs[i]["explanation"] for i in range(4)]
    assert index["columns"]["score_detection"][12] == recs[12]["scores"]["detection"]["balanced_accuracy"]
    assert all(r["authorization"] == f"Bearer {KEY}" for r in fresh.received)
    assert KEY not in out + err and KEY.encode() not in _everything(run)
    sent = len(fresh.received)
    assert main(argv) == 0
    assert len(fresh.received) == sent and "0 latents explained this run (5 already done" in capsys.readouterr().out


def test_token_budget_stops_cleanly(run, fresh, capsys):
    argv = ["explain", str(run), "--judge", fresh.url(), "--latents", "0-7", "--token-budget", "40000", "--no-browser"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stopped: budget spent" in out
    assert 0 < len(load_explanations(run)) < 8


def test_similar_negatives_read_the_run_dictionary(run, fresh, capsys):
    argv = ["explain", str(run), "--judge", fresh.url(), "--latents", "0-1", "--negatives", "similar", "--score", "detection"]
    assert main([*argv, "--no-browser", "--per-prompt", "4"]) == 0
    recs = load_explanations(run)
    assert all(
        r["settings"]["sampling"]["negative_source"] == "similar" and r["settings"]["per_prompt"] == 4 for r in recs.values()
    )
    assert all(set(r["scores"]) == {"detection"} and r["scores"]["detection"]["auroc"] is None for r in recs.values())
    capsys.readouterr()


def test_errors_are_one_line(run, fresh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["explain", str(run)]) == 2
    assert "--judge is required" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "nowhere"), "--judge", fresh.url()]) == 2
    assert "python -m sae dashboard" in capsys.readouterr().err
    assert main(["explain", str(run), "--judge", fresh.url("echo"), "--latents", "0"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: the judge at http://127.0.0.1") and "HTTP 401" in last and KEY not in err
    assert main(["explain", str(run), "--judge", fresh.url(), "--latents", "99"]) == 2
    assert "out of range" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dictionary_in_another_layout(tmp_path, fresh, capsys):
    """load_pretrained's layouts: a sparsify folder gets its statistics from `dashboard`, then `explain` works."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tiny_lm import corpus, tiny_lm

    from sae import SAEConfig, SparseAutoencoder

    lm = tiny_lm()
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "docs.txt").write_text("\n".join(corpus(200)))
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_latents=32, k=4, hook_name="blocks.1.hook_resid_post"), seed=0)
    folder = tmp_path / "sparsify" / "layers.1"
    sae.save(folder, format="sparsify")
    common = ["--tokens", "256", "--context-len", "32", "--top-n", "6", "--quantiles", "3"]
    assert (
        main(["dashboard", str(folder), "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "docs.txt"), *common])
        == 0
    )
    assert main(["explain", str(folder), "--judge", fresh.url(), "--latents", "0-4"]) == 0
    recs = load_explanations(folder)
    assert sorted(recs) == list(range(5))
    assert "SAE_SHARD" in (folder / "browser" / "data" / "shard_00000.js").read_text()
    assert '"autointerp"' in (folder / "browser" / "data" / "shard_00000.js").read_text()
    capsys.readouterr()


@pytest.mark.slow
def test_killed_with_sigkill_resumes_without_repeating_a_request_and_the_browser_shows_it(run, fresh, tmp_path):
    from sae.analysis.chromium import chromium_path, launch

    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "sae", "explain", str(run), "--judge", fresh.url(), "--latents", "0-15", "--concurrency", "3"]
    fresh.hold_after = 60
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while fresh.held < 3:  # every worker is waiting on a held request: the answered ones are cached
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = set(fresh.answered)
    assert len(first) == 60
    fresh.release()
    time.sleep(0.2)
    fresh.reset()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    second = [r["key"] for r in fresh.received]
    assert not first & set(second), "a request answered before the kill was sent again"
    assert "answered from the cache" in done.stdout and KEY not in done.stdout + done.stderr
    recs = load_explanations(run)
    assert sorted(recs) == list(range(16)) and all(r["explanation"] for r in recs.values())
    assert KEY.encode() not in _everything(run)
    if chromium_path() is None:
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto((run / "browser" / "index.html").as_uri() + "#latent=12")
        page.wait_for_selector("body[data-latent='12']")
        assert page.locator("#explanation .explanation-text").inner_text() == recs[12]["explanation"]
        assert page.locator("#latents tbody tr[data-latent='12'] td.expl").inner_text() == recs[12]["explanation"]
        browser.close()
