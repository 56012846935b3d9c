"""The live server on the embedded MiniLM, run by uvicorn on the loopback interface and driven in headless Chromium:
typed text shows coloured tokens and top latents, steering changes the shown output, typed markup stays text;
and the hostile requests (foreign Host, `../` paths, an oversized body, a flood) get their answers."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sae import SAEConfig, SparseAutoencoder
from sae.analysis.chromium import chromium_path, launch
from sae.analysis.dashboard import write_browser
from sae.analysis.features import feature_stats
from sae.serve import Inspector, Limits, ThreadedServer, create_app
from sae.serve.inspector import reference_sentences

pytestmark = pytest.mark.slow

HOOK = "blocks.3.hook_resid_pre"


@pytest.fixture(scope="module")
def live(minilm, tmp_path_factory):
    from activations import TextSource

    run = tmp_path_factory.mktemp("live-run")
    sae = SparseAutoencoder(SAEConfig(d_in=384, n_latents=256, k=8, hook_name=HOOK, model_name="minilm"), seed=0)
    sae.save(run)
    stats = feature_stats(sae, minilm, None, tokens=256, context_len=32, top_n=3, quantiles=2, progress=False)
    write_browser(stats, run / "browser", progress=False)
    refs = reference_sentences(minilm, TextSource(split="test").texts(), 40)
    limits = Limits(max_body_bytes=4096, queue_size=4)
    app = create_app(Inspector(minilm, sae, limits, refs), run / "browser")
    with ThreadedServer(app) as server:
        yield server, run


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_type_steer_and_markup_in_headless_chromium(live):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    server, _ = live
    errors, dialogs = [], []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # the page's own CSP holds
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1'][data-live='1']")  # the browser and the live panel
        page.fill("#live-text", "Return the number of items in the list.")
        page.wait_for_selector("body[data-live-done]")
        assert float(page.get_attribute("body", "data-live-ms")) < 1000  # shown within a second of the request
        tokens = page.locator("#live-tokens .tok")
        assert tokens.count() >= 9 and "number" in page.locator("#live-tokens").inner_text()
        coloured = page.eval_on_selector_all("#live-tokens .tok", "els => els.filter(e => e.style.background).length")
        assert coloured >= 1
        links = page.locator("#live-top a")
        assert links.count() >= 1
        latent = int(links.first.get_attribute("data-latent"))
        links.first.click()  # the latent's page: the browser opens it, the live panel stays
        page.wait_for_selector(f"body[data-latent='{latent}']")
        assert page.locator("#detail h2").inner_text() == f"latent {latent}"
        assert page.input_value("#live-latents") == str(latent)
        page.fill("#live-strength", "6")
        page.click("#live-steer")
        page.wait_for_selector("body[data-live-effect='steer']")
        cosine = float(page.locator("#live-result td.with").first.inner_text())
        assert cosine < 0.999  # the embedding moved
        assert page.locator("#live-result td.without").nth(1).inner_text().strip()  # neighbours listed
        page.click("#live-ablate")
        page.wait_for_selector("body[data-live-effect='ablate']")
        hostile = '<script>window.PWNED=1</script><img src=x onerror="window.PWNED=2"> done'
        before = page.get_attribute("body", "data-live-done")
        page.fill("#live-text", hostile)
        page.wait_for_selector(f"body[data-live-done]:not([data-live-done='{before}'])")
        assert page.evaluate("window.PWNED") is None and not dialogs
        assert page.locator("#live script, #live img").count() == 0
        assert "script" in page.locator("#live-tokens").inner_text()  # shown as text
        browser.close()
    assert not errors, errors


def test_hostile_requests_and_a_flood(live):
    server, run = live
    port = server.port
    foreign = _raw(port, b"GET /api/info HTTP/1.1\r\nHost: attacker.example:%d\r\nConnection: close\r\n\r\n" % port)
    assert foreign.startswith(b"HTTP/1.1 400")
    for path in (b"/../cfg.json", b"/data/../../cfg.json", b"/data/%2e%2e/%2e%2e/sae_weights.safetensors", b"/live/../app.py"):
        out = _raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert out.split(b" ")[1] in (b"400", b"404"), (path, out[:200])
        assert b"d_in" not in out and b"create_app" not in out
    assert _raw(port, b"GET /data/index.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    big = httpx.post(server.url + "/api/activations", json={"text": "x" * 5000}, timeout=10)
    assert big.status_code == 413

    def ask(i: int) -> int:
        return httpx.post(server.url + "/api/activations", json={"text": f"a text numbered {i}"}, timeout=30).status_code

    with ThreadPoolExecutor(4) as pool:  # four tabs at once, within the queue: every one answered
        assert list(pool.map(ask, range(4))) == [200] * 4
    start = time.monotonic()
    with ThreadPoolExecutor(24) as pool:  # a flood: answered at once or refused at once, never piled up
        codes = list(pool.map(ask, range(48)))
    assert set(codes) <= {200, 503} and codes.count(200) >= 4 and codes.count(503) >= 1, codes
    assert time.monotonic() - start < 20
    assert ask(0) == 200  # and the server is still fine


def test_causal_lm_steering_on_the_bare_page(causal_inspector):
    """No browser folder: the bare page's live panel; a causal LM's continuations with and without the steer."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    errors = []
    with ThreadedServer(create_app(causal_inspector, None)) as server, sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-live='1']")
        page.fill("#live-text", "the|cat|sat")
        page.wait_for_selector("body[data-live-done]")
        assert page.locator("#live-tokens .tok").count() == 4
        page.fill("#live-latents", "3")
        page.fill("#live-strength", "8")
        page.fill("#live-max", "6")
        page.click("#live-steer")
        page.wait_for_selector("body[data-live-effect='steer']")
        greedy = page.locator("#live-result tr").nth(1)
        without, steered = greedy.locator("td.without").inner_text(), greedy.locator("td.with").inner_text()
        assert without and steered and without != steered  # the steer changed the shown continuation
        page.click("#live-ablate")
        page.wait_for_selector("body[data-live-effect='ablate']")
        assert "loss on the text" in page.locator("#live-result").inner_text()
        browser.close()
    assert not errors, errors
