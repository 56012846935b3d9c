"""The attribution graph's offline view (sae.circuits.view): the data it writes against `prune`, its refusals, and
the page in real headless Chromium: nodes and edges drawn, the threshold, hover values, feature links, pins and
groups through the address, hostile token text inert."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from sae.analysis.chromium import chromium_path, launch
from sae.circuits.graph import ERROR, FEATURE, TARGET, TOKEN, Graph, node_tables
from sae.circuits.prune import prune
from sae.circuits.view import graph_view_data, view_url, write_graph_view

sys.path.insert(0, str(Path(__file__).parent))

HOSTILE_TOKENS = [
    "<bos>",
    "<img src=x onerror=window.__pwned=1>",
    "</script><script>window.__pwned=2</script>",
    "\"quoted' &amp;",
    " cat",
    "<b>bold</b>",
]
HOSTILE_TARGETS = ["<svg onload=window.__pwned=3>", " mat", "direction: <i>x</i>"]
BROWSER = "browsers/layer_{layer}/index.html"


def synthetic_graph(n_layers: int = 3, seed: int = 0) -> Graph:
    """Random active features (a few per layer and position past the BOS), edges only from lower layers and
    earlier positions (an acyclic graph), three targets: two token logits and a direction (index -1)."""
    g = torch.Generator().manual_seed(seed)
    P = len(HOSTILE_TOKENS)
    feats = []
    for layer in range(n_layers):
        for pos in range(1, P):
            for f in torch.randperm(40, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))].sort().values.tolist():
                feats.append((layer, pos, f))
    features = torch.tensor(feats)
    values = torch.rand(len(feats), generator=g) * 3 + 0.1
    tables = node_tables(
        features, values, n_layers, torch.arange(10, 10 + P), torch.tensor([5, 7, -1]), torch.tensor([0.5, 0.3, 0.2])
    )
    kind, layer, pos = tables["node_kind"], tables["node_layer"], tables["node_pos"]
    n = len(kind)
    src_ok = (kind == FEATURE) | (kind == ERROR) | (kind == TOKEN)
    allowed = (layer[None, :] < layer[:, None]) & (pos[None, :] <= pos[:, None]) & src_ok[None, :]
    allowed &= ((kind == FEATURE) | (kind == TARGET))[:, None]
    dense = torch.randn(n, n, generator=g) * torch.rand(n, n, generator=g).pow(3) * 4
    matrix = torch.where(allowed & (torch.rand(n, n, generator=g) < 0.5), dense, torch.zeros(()))
    info = {"model": "<tiny>", "transcoders": "per-layer", "token_strings": HOSTILE_TOKENS, "target_strings": HOSTILE_TARGETS}
    return Graph(
        adjacency_matrix=matrix,
        **tables,
        tokens=torch.arange(10, 10 + P),
        active_features=features,
        active_values=values,
        n_layers=n_layers,
        prompt="".join(HOSTILE_TOKENS[1:]),
        info=info,
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return synthetic_graph()


def _payload(path: Path, call: str) -> object:
    m = re.match(rf'^window\.{call}[ =(]+JSON\.parse\((".*")\)\)?;\n$', path.read_text(), re.S)
    assert m, path.read_text()[:200]
    return json.loads(json.loads(m.group(1)))


def _expected(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    """The kept edges (source, target, weight) as `prune` says, and the nodes the view shows: tokens, targets and
    every node of a kept edge."""
    p = prune(graph, node_threshold, edge_threshold)
    A = graph.adjacency_matrix
    keys = graph.keys()
    edges = [
        (keys[s], keys[d], float(A[d, s]))
        for d, s in p.edge_mask.nonzero().tolist()
        if p.node_mask[s] and p.node_mask[d] and A[d, s] != 0
    ]
    nodes = {k for e in edges for k in e[:2]} | {k for k in keys if k[0] in (TOKEN, TARGET)}
    return edges, nodes


def test_the_data_are_the_pruned_graph(graph, tmp_path):
    data = graph_view_data(graph, "g", browser=BROWSER)
    edges, nodes = _expected(graph)
    assert 20 < len(edges) < int((graph.adjacency_matrix != 0).sum())  # pruning kept some and dropped some
    keys = [tuple(n["key"]) for n in data["nodes"]]
    assert set(keys) == nodes and len(keys) == len(nodes)
    got = sorted((keys[s], keys[d], w) for s, d, w in data["edges"])
    assert [(a, b) for a, b, _ in got] == sorted((a, b) for a, b, _ in edges)
    assert [w for *_, w in got] == pytest.approx([w for *_, w in sorted(edges)], rel=1e-5)
    by_key = dict(zip(keys, data["nodes"]))
    for i, k in enumerate(graph.keys()):
        if k in by_key:
            assert by_key[k]["value"] == pytest.approx(float(graph.node_value[i]), rel=1e-5)
    targets = [n for n in data["nodes"] if n["kind"] == "target"]
    assert [t["label"] for t in targets] == HOSTILE_TARGETS and [t["id"] for t in targets] == ["o0", "o1", "o2"]
    assert [n["label"] for n in data["nodes"] if n["kind"] == "token"] == HOSTILE_TOKENS
    f = next(n for n in data["nodes"] if n["kind"] == "feature")
    assert f["href"] == f"browsers/layer_{f['key'][1]}/index.html#latent={f['key'][3]}"
    assert len({n["id"] for n in data["nodes"]}) == len(data["nodes"])

    # a CLT's browser numbers features across layers; one template per layer, a layer without one unlinked
    clt = Graph(**{**graph.__dict__, "info": {**graph.info, "transcoders": "clt"}})
    with pytest.raises(ValueError, match="latents_per_layer"):
        graph_view_data(clt, browser="clt/index.html")
    linked = graph_view_data(clt, browser="clt/index.html", latents_per_layer=40)["nodes"]
    assert {n["href"] for n in linked if n["id"] == f["id"]} == {f"clt/index.html#latent={f['key'][1] * 40 + f['key'][3]}"}
    per = graph_view_data(graph, browser={0: "a/index.html#f={feature}&l={layer}"})["nodes"]
    assert {n["href"] for n in per if n["kind"] == "feature" and n["key"][1] == 0} == {
        f"a/index.html#f={n['key'][3]}&l=0" for n in per if n["kind"] == "feature" and n["key"][1] == 0
    }
    assert all("href" not in n for n in per if n["key"][1] != 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slug": "../x"}, "slug '../x'"),
        ({"browser": "b/{layers}.html"}, r"names \['layers'\]"),
        ({"browser": "javascript:alert(1)//{latent}"}, "scheme 'javascript'"),
        ({"browser": "b/{"}, "is not a template"),
        ({"latents_per_layer": -1}, "latents_per_layer=-1"),
        ({"node_threshold": 2.0}, "node_threshold=2.0"),
    ],
)
def test_refusals(graph, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_graph_view(graph, tmp_path / "v", **kwargs)
    assert not (tmp_path / "v").exists()  # refused before anything is written


def test_files(graph, tmp_path):
    out = tmp_path / "view"
    with pytest.warns(UserWarning, match="pages not written yet"):
        page = write_graph_view(graph, out, "first", browser=BROWSER)
    assert page == out / "graph.html" and (out / "graph.js").exists() and (out / "graph.css").exists()
    text = (out / "data" / "graph-first.js").read_text()
    assert "</script>" not in text and "<\\\\/script>" in text  # escaped inside the string literal
    assert _payload(out / "data" / "graph-first.js", "SAE_GRAPH") == graph_view_data(graph, "first", browser=BROWSER)
    (out / "browsers").mkdir()
    for layer in range(3):
        (out / "browsers" / f"layer_{layer}").mkdir()
        (out / "browsers" / f"layer_{layer}" / "index.html").write_text("<p>feature page</p>")
    write_graph_view(graph, out, "second", browser=BROWSER, edge_threshold=0.5)  # no warning: the pages exist
    write_graph_view(graph, out, "first", browser=BROWSER)  # rewritten in place, listed once
    assert [g["slug"] for g in _payload(out / "data" / "graphs.js", "SAE_GRAPHS")] == ["second", "first"]
    assert view_url(page, "first") == page.resolve().as_uri() + "#graph=first"
    (out / "data" / "graphs.js").write_text("window.alert(1);\n")
    with pytest.raises(ValueError, match="not a graph listing"):
        write_graph_view(graph, out, "third")


def test_trace_default_links(tmp_path):
    """Without --browser, `trace --view` links each layer's features to DIR/browser/index.html beside its
    dictionary (where `python -m sae dashboard DIR` writes it); a CLT's to its one browser, numbered across layers."""
    import tiny_models as tm

    from sae.cli.trace_view import default_links
    from sae.pretrained import load_all

    folder = tmp_path / "transcoders"
    for layer in (1, 0):
        t = tm.random_transcoder(8, 4, skip=False, jumprelu=False, seed=layer)
        tm.our_transcoder(t, layer, "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out").save(folder / f"l{layer}")
    out = tmp_path / "graph"
    assert default_links(folder, out, list(load_all(folder).values())) == (
        {0: "../transcoders/l0/browser/index.html", 1: "../transcoders/l1/browser/index.html"},
        0,
    )
    tm.our_clt(tm.random_clt(2, 8, 4, jumprelu=False, seed=0), "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out").save(
        tmp_path / "clt"
    )
    assert default_links(tmp_path / "clt", out, list(load_all(tmp_path / "clt").values())) == ("../clt/browser/index.html", 4)
    assert default_links(Path("org/hub-repo"), out, []) == (None, 0)


@pytest.fixture(scope="module")
def chromium():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


class Page:
    """A page of the browser with every console error, dialog and request recorded."""

    def __init__(self, browser, **context):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
        self.page = page = self.context.new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url: str):
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        return self.page

    def check_clean(self) -> None:
        assert self.errors == [] and self.dialogs == [], (self.errors, self.dialogs)
        assert all(u.startswith("file://") for u in self.requests), [u for u in self.requests if not u.startswith("file:")]
        self.context.close()


def _shown(page) -> tuple[int, int, float]:
    d = page.evaluate("() => ({...document.body.dataset})")
    return int(d["edgesShown"]), int(d["nodesShown"]), float(d["threshold"])


def _visible(graph_edges, nodes, t):
    """Edges with |weight| >= t, and the nodes shown with them: tokens, targets and nodes of a shown edge."""
    on = [e for e in graph_edges if abs(e[2]) >= t]
    return len(on), len({k for e in on for k in e[:2]} | {k for k in nodes if k[0] in (TOKEN, TARGET)})


def test_graph_view_in_headless_chromium(graph, chromium, tmp_path):
    out = tmp_path / "view"
    with pytest.warns(UserWarning):
        page_path = write_graph_view(graph, out, "hostile", browser=BROWSER)
    data = graph_view_data(graph, "hostile", browser=BROWSER)
    (out / "browsers" / "layer_1").mkdir(parents=True)
    (out / "browsers" / "layer_1" / "index.html").write_text("<!doctype html><title>feature page</title>")
    edges, nodes = _expected(graph)
    keys = [tuple(n["key"]) for n in data["nodes"]]
    weights = [(keys[s], keys[d], w) for s, d, w in data["edges"]]

    # the page's own Content-Security-Policy enforced: it draws under it, and the hostile text stays text
    tab = Page(chromium)
    page = tab.open(view_url(page_path, "hostile"))
    assert page.locator("#graph .node").count() == len(nodes)
    assert page.locator("#graph .edge").count() == len(edges)
    assert _shown(page) == (len(edges), len(nodes), 0.0)
    labels = page.locator("#graph text.tokens").all()
    assert [t.locator("title").text_content() for t in labels] == [f"{p}: {t}" for p, t in enumerate(HOSTILE_TOKENS)]
    shown = [t.evaluate("e => e.firstChild.textContent") for t in labels]  # long tokens cut at 40 characters
    assert shown == [t if len(t) <= 40 else t[:39] + "…" for t in HOSTILE_TOKENS]
    shown_targets = page.locator("#graph text.targets").all_text_contents()
    assert [t.split(" (p=")[0] for t in shown_targets] == HOSTILE_TARGETS
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("img, b, i, svg svg, script:not([src])").count() == 0
    assert "</script>" in page.locator("#summary").inner_text()
    # two graphs in the folder: without a slug the page lists them, and a link opens one
    write_graph_view(synthetic_graph(seed=1), out, "other")
    page = tab.open(page_path.as_uri())
    assert page.locator("#plot li a").all_inner_texts() == ["hostile", "other"]
    page.click("#plot li a >> text=other")
    page.wait_for_selector("body[data-graph='other']")
    assert page.url.endswith("#graph=other")
    tab.check_clean()

    tab = Page(chromium, bypass_csp=True)  # without the CSP: the escaping alone keeps the text inert
    page = tab.open(view_url(page_path, "hostile"))
    # the threshold: typed, then by the slider; edges below it hidden, then the nodes left without an edge
    strengths = sorted(abs(w) for *_, w in weights)
    t = (strengths[len(strengths) // 2] + strengths[len(strengths) // 2 + 1]) / 2
    page.fill("#threshold", repr(t))
    assert _shown(page) == (*_visible(weights, keys, t), t)
    assert page.locator("#graph .edge:not(.hidden)").count() == _visible(weights, keys, t)[0]
    page.fill("#slider", "700")
    n_edges, n_nodes, t = _shown(page)
    assert strengths[0] < t < strengths[-1] and (n_edges, n_nodes) == _visible(weights, keys, t)
    assert f"t={t}" in page.url

    # hover: a feature's activation and an edge's weight, as the data hold them
    feature = max((n for n in data["nodes"] if n["kind"] == "feature"), key=lambda n: n["value"])
    page.fill("#threshold", "0")
    page.hover(f"#graph [data-node='{feature['id']}']")
    i = graph.keys().index(tuple(feature["key"]))
    assert float(page.locator("#tip tr[data-field='value'] td").nth(1).inner_text()) == pytest.approx(
        float(graph.node_value[i]), rel=1e-5
    )
    strongest = len(data["edges"]) - 1
    s, d, w = data["edges"][strongest]
    tip = page.locator("#tip")
    page.dispatch_event(f"#graph [data-edge='{strongest}']", "mouseover")
    weight = float(tip.locator("tr[data-field='weight'] td").nth(1).inner_text())
    assert weight == pytest.approx(float(graph.adjacency_matrix[graph.keys().index(keys[d]), graph.keys().index(keys[s])]))
    token = next(n for n in data["nodes"] if n["id"] == "t1")
    page.dispatch_event("#graph [data-node='t1']", "mouseover")
    assert page.locator("#tip tr[data-field='token'] td").nth(1).inner_text() == HOSTILE_TOKENS[1] == token["label"]

    # pins (shift-click, and a plain click on a token), a named group, the threshold: all survive a reload
    pinned = [n for n in data["nodes"] if n["kind"] == "feature"][:3]
    for n in pinned:
        page.click(f"#graph [data-node='{n['id']}']", modifiers=["Shift"], force=True)
    page.fill("#group-name", "<img src=x onerror=window.__pwned=4> group")
    page.click("#group")
    page.click("#graph [data-node='t2']", force=True)
    page.click(f"#graph [data-node='{pinned[0]['id']}']", modifiers=["Shift"], force=True)
    page.fill("#threshold", repr(strengths[-1]))  # only the strongest edge: pinned and grouped nodes stay
    before = _shown(page)
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert _shown(page) == before
    assert page.locator("#pins li").evaluate_all("ls => ls.map(l => l.dataset.node)") == ["t2", pinned[0]["id"]]
    group = page.locator("#groups > li")
    assert group.count() == 1 and group.locator(".group-name").inner_text() == "<img src=x onerror=window.__pwned=4> group"
    assert group.locator("li").evaluate_all("ls => ls.map(l => l.dataset.node)") == [n["id"] for n in pinned]
    assert page.locator("#graph .node.grouped").count() == 3 and page.locator("#graph .node.pinned").count() == 2
    assert all(page.locator(f"#graph [data-node='{n['id']}']").is_visible() for n in pinned)

    # a click on a feature opens its page in the feature browser
    page.fill("#threshold", "0")
    layer1 = next(n for n in data["nodes"] if n["kind"] == "feature" and n["key"][1] == 1)
    page.click(f"#graph [data-node='{layer1['id']}']", force=True)
    page.wait_for_url("**/layer_1/index.html*")
    assert page.url == (out / "browsers" / "layer_1" / "index.html").as_uri() + f"#latent={layer1['key'][3]}"
    assert page.evaluate("() => window.__pwned") is None
    tab.check_clean()


@pytest.mark.slow
def test_trace_view_on_a_tiny_llama(chromium, tmp_path, capsys):
    """`python -m sae trace --view`: a real graph's view, its features linked to the browsers `python -m sae
    dashboard` writes beside each dictionary; bad view options refused before anything loads."""
    import tiny_models as tm

    from sae.cli import main

    model, folder = tm.save_trace_inputs(tmp_path)
    out = tmp_path / "graph"
    argv = ["trace", "--model", str(model), "--transcoders", str(folder), "--prompt", "the cat sat on", "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--browser", "x/index.html"]) == 2
    assert capsys.readouterr().err == "error: --browser sets the graph view's feature links: pass --view too\n"
    assert main([*argv, "--view", "--slug", "a b"]) == 2
    assert "slug 'a b'" in capsys.readouterr().err
    assert main([*argv, "--view", "--browser", "javascript:x"]) == 2
    assert "scheme 'javascript'" in capsys.readouterr().err
    assert not out.exists()  # refused before tracing

    assert main([*argv, "--view", "--slug", "cat", "--no-progress"]) == 0
    io = capsys.readouterr()
    assert "pages not written yet" in io.err  # no dashboard written for these dictionaries
    url = json.loads(io.out)["view"]
    assert url == (out / "graph.html").resolve().as_uri() + "#graph=cat"
    graph = Graph.load(out / "graph.safetensors")
    data = graph_view_data(graph, "cat")
    edges, nodes = _expected(graph)
    assert len(data["edges"]) == len(edges) > 0 and len(data["nodes"]) == len(nodes)
    page_data = _payload(out / "data" / "graph-cat.js", "SAE_GRAPH")
    hrefs = {n["id"]: n["href"] for n in page_data["nodes"] if n["kind"] == "feature"}
    assert hrefs and all(
        h == f"../transcoders/blocks.{i.split('.')[0][1:]}.mlp.hook_in/browser/index.html#latent={i.split('.')[2]}"
        for i, h in hrefs.items()
    )
    tab = Page(chromium)
    page = tab.open(url)
    assert page.locator("#graph .node").count() == len(nodes) and page.locator("#graph .edge").count() == len(edges)
    labels = page.locator("#graph text.tokens").evaluate_all("ts => ts.map(t => t.firstChild.textContent)")
    assert labels == graph.info["token_strings"]
    tab.check_clean()


def test_a_minilm_clt_graph_opens_in_headless_chromium(minilm_clt_graph, chromium, tmp_path):
    """The bar's case: the embedded MiniLM with a CLT over its 6 layers (the pooled-direction target), its nodes and
    edges drawn as prune keeps them, and hostile text in its token and target labels shown as text."""
    import copy

    _, clt, real = minilm_clt_graph
    graph = copy.copy(real)
    n_tokens = len(graph.info["token_strings"])
    hostile = (HOSTILE_TOKENS * n_tokens)[:n_tokens]
    graph.info = {**real.info, "token_strings": hostile, "target_strings": HOSTILE_TARGETS[:1]}
    out = tmp_path / "view"
    with pytest.warns(UserWarning, match="pages not written yet"):
        page_path = write_graph_view(graph, out, "minilm", browser="clt/index.html", latents_per_layer=clt.cfg.latents)
    edges, nodes = _expected(graph)
    assert len(edges) > 0 and sum(1 for k in nodes if k[0] == FEATURE) > 0
    tab = Page(chromium)
    page = tab.open(view_url(page_path, "minilm"))
    assert page.locator("#graph .node").count() == len(nodes)
    assert page.locator("#graph .edge").count() == len(edges)
    labels = page.locator("#graph text.tokens").all()
    assert [t.locator("title").text_content() for t in labels] == [f"{p}: {t}" for p, t in enumerate(hostile)]
    # a direction target's value is its weight in influence, not a probability
    assert page.locator("#graph text.targets").all_text_contents() == [f"{HOSTILE_TARGETS[0]} (w=1.000)"]
    page.hover("#graph .node.target")
    assert page.locator("#tip tr[data-field='value'] td").first.inner_text() == "weight"
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("img, b, i, svg svg, script:not([src])").count() == 0
    tab.check_clean()
