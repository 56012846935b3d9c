"""The attribution graph's offline view: `graph.html` (the feature browser's package, beside its `index.html`) and
the pruned graph as `data/graph-{slug}.js`, opened from disk with no server and no network.

The page lays the nodes out by position (x, the prompt's tokens along the bottom) and layer (y, the targets at
the top), draws the pruned edges by weight with a threshold on |weight|, and links each feature to its page in
a feature browser (`python -m sae dashboard`). Where that page is, is the `browser` argument: a template, relative
to the graph's folder, with `{layer}`, `{feature}` (the feature's index in its layer's dictionary) and `{latent}`
(its id in that browser: the index for per-layer transcoders; `layer * latents_per_layer + index` for a CLT, whose
browser lists every layer's features in one list); `#latent={latent}` is appended when it names no fragment. A
mapping from layer to template gives each layer its own (one browser per dictionary folder).

`data/graphs.js` lists the graphs of the folder; `graph.html#graph={slug}` opens one.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from sae.analysis.dashboard import script_data
from sae.circuits.graph import ERROR, FEATURE, KIND_NAMES, TARGET, TOKEN, Graph
from sae.circuits.prune import prune
from sae.io import write_text_atomic

__all__ = ["check_browser", "check_slug", "graph_view_data", "view_url", "write_graph_view"]

FORMAT = "saekit-graph-view/1"
ASSETS = Path(__file__).resolve().parent.parent / "analysis" / "browser"
ASSET_FILES = ("graph.html", "graph.js", "graph.css")
SLUG = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
FIELDS = {"layer", "feature", "latent"}
_PLACEHOLDERS = "placeholders: {layer} {feature} {latent}"
LISTING = "graphs.js"
_LISTING_LINE = re.compile(r"^window\.SAE_GRAPHS = JSON\.parse\((.*)\);\n?$", re.S)

Browser = str | Mapping[int, str] | None


def check_slug(slug: str) -> str:
    """A graph's name is part of a file name and of the page's URL: letters, digits, '_' and '-' only."""
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise ValueError(f"slug {slug!r}: expected 1-100 letters, digits, '_' or '-' (it names data/graph-{{slug}}.js)")
    return slug


def _check_template(template: str, where: str) -> None:
    if not isinstance(template, str) or not template:
        raise ValueError(f"{where} {template!r}: expected a page template such as '../browser/index.html'")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"{where} {template!r} is not a template ({e}); {_PLACEHOLDERS}") from None
    if names - FIELDS:
        raise ValueError(f"{where} {template!r} names {sorted(names - FIELDS)}; {_PLACEHOLDERS}")
    scheme = urlsplit(template.replace("{", "").replace("}", "")).scheme.lower()
    if scheme and scheme not in ("http", "https", "file"):
        raise ValueError(f"{where} {template!r} has the scheme {scheme!r}; expected a relative path, file:, http: or https:")


def check_browser(browser: Browser) -> None:
    """Refuse a feature-page template that is not one (unknown placeholders, a `javascript:` or other scheme)."""
    if browser is None:
        return
    if isinstance(browser, Mapping):
        for layer, template in browser.items():
            if not isinstance(layer, int):
                raise ValueError(f"browser maps layers to templates; got the key {layer!r}")
            _check_template(template, f"browser[{layer}]")
    else:
        _check_template(browser, "browser")


def _links(graph: Graph, browser: Browser, latents_per_layer: int) -> dict[int, str]:
    """Node index -> the URL of the feature's page, for every feature node whose layer has a template."""
    check_browser(browser)
    if not isinstance(latents_per_layer, int) or latents_per_layer < 0:
        raise ValueError(f"latents_per_layer={latents_per_layer!r}; expected a non-negative integer (a CLT's width)")
    if browser is None:
        return {}
    clt = graph.info.get("transcoders") == "clt"
    templates = [browser] if isinstance(browser, str) else list(browser.values())
    if clt and latents_per_layer == 0 and any("{latent}" in t or "#" not in t for t in templates):
        raise ValueError("a CLT's browser numbers its features across layers: pass latents_per_layer (the CLT's width)")
    out = {}
    for i in graph.nodes(FEATURE).tolist():
        layer, index = int(graph.node_layer[i]), int(graph.node_index[i])
        template = browser if isinstance(browser, str) else browser.get(layer)
        if template is None:
            continue
        if "#" not in template:
            template += "#latent={latent}"
        latent = layer * latents_per_layer + index if latents_per_layer else index
        out[i] = template.format(layer=layer, feature=index, latent=latent)
    return out


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def _node_id(kind: int, layer: int, pos: int, index: int, rank: int) -> str:
    """The page's id of a node (what the URL's pins name): stable across writes of the same graph."""
    if kind == FEATURE:
        return f"f{layer}.{pos}.{index}"
    if kind == ERROR:
        return f"e{layer}.{pos}"
    if kind == TOKEN:
        return f"t{pos}"
    return f"o{rank}"  # a target: by rank, since direction targets share index -1


def graph_view_data(
    graph: Graph,
    slug: str = "graph",
    browser: Browser = None,
    latents_per_layer: int = 0,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Any]:
    """The pruned graph as the page reads it: its nodes (key, value, influence, label, feature link) and its
    edges `[source, target, weight]` (indices into the nodes, the weight `adjacency_matrix[target, source]`).

    Kept: the nodes and edges `prune` keeps, less edges of weight 0 and features and errors left without an
    edge; every token and target."""
    check_slug(slug)
    links = _links(graph, browser, latents_per_layer)
    pruned = prune(graph, node_threshold, edge_threshold)
    kept = pruned.node_mask
    A = graph.adjacency_matrix
    dst, src = (pruned.edge_mask & kept[:, None] & kept[None, :] & (A != 0)).nonzero(as_tuple=True)
    linked = torch.zeros_like(kept)
    linked[src] = True
    linked[dst] = True
    kinds = graph.node_kind
    shown = (linked & kept) | (kinds == TOKEN) | (kinds == TARGET)
    tokens = [str(t) for t in graph.info.get("token_strings") or graph.tokens.tolist()]
    targets = graph.nodes(TARGET).tolist()
    target_text = [str(t) for t in graph.info.get("target_strings") or graph.target_ids.tolist()]
    if len(tokens) != len(graph.tokens) or len(target_text) != len(targets):
        raise ValueError(
            f"the graph has {len(graph.tokens)} tokens and {len(targets)} targets but info names "
            f"{len(tokens)} token_strings and {len(target_text)} target_strings"
        )
    order = shown.nonzero().flatten().tolist()
    position = {n: j for j, n in enumerate(order)}
    nodes = []
    for n in order:
        kind, layer, pos, index = (int(getattr(graph, t)[n]) for t in ("node_kind", "node_layer", "node_pos", "node_index"))
        rank = targets.index(n) if kind == TARGET else -1
        node: dict[str, Any] = {
            "id": _node_id(kind, layer, pos, index, rank),
            "kind": KIND_NAMES[kind],
            "key": [kind, layer, pos, index],
            "value": _num(float(graph.node_value[n])),
            "influence": _num(float(pruned.cumulative_scores[n])),
        }
        if kind == TOKEN:
            node["label"] = tokens[pos]
        elif kind == TARGET:
            node["label"] = target_text[rank]
        if n in links:
            node["href"] = links[n]
        nodes.append(node)
    weights = A[dst, src].tolist()
    edges = sorted(
        ([position[s], position[d], _num(w)] for s, d, w in zip(src.tolist(), dst.tolist(), weights)),
        key=lambda e: (abs(e[2]), e[0], e[1]),
    )  # the strongest drawn last, on top
    info = {k: graph.info[k] for k in ("model", "transcoders") if k in graph.info}
    return {
        "format": FORMAT,
        "slug": slug,
        "prompt": graph.prompt,
        "n_layers": graph.n_layers,
        "target_kind": graph.target_kind,
        "tokens": tokens,
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "info": info,
        "nodes": nodes,
        "edges": edges,
    }


def _listing(data: Path) -> list[dict[str, Any]]:
    path = data / LISTING
    if not path.exists():
        return []
    m = _LISTING_LINE.match(path.read_text(encoding="utf-8"))
    if not m:
        raise ValueError(f"{path} is not a graph listing written by write_graph_view; remove it or pick another folder")
    return list(json.loads(json.loads(m.group(1))))


def _missing_pages(out: Path, links: Mapping[int, str]) -> list[str]:
    """The relative feature pages the links name that are not there (yet)."""
    pages = {href.split("#", 1)[0] for href in links.values()}
    return sorted(p for p in pages if p and not urlsplit(p).scheme and not (out / p).exists())


def write_graph_view(
    graph: Graph,
    out: str | Path,
    slug: str = "graph",
    browser: Browser = None,
    latents_per_layer: int = 0,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Path:
    """Write `graph.html` (with its script and style) and `data/graph-{slug}.js` into the folder `out`, and list
    the graph in `data/graphs.js`; returns `graph.html` (open it as `view_url(path, slug)`).

    `browser` (a template, or one per layer) links each feature to its feature page (module docstring); a
    relative page that does not exist yet is warned about once."""
    check_slug(slug)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the graph view goes into a folder; {out} is a file")
    data = graph_view_data(graph, slug, browser, latents_per_layer, node_threshold, edge_threshold)
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    listing = [g for g in _listing(folder) if g.get("slug") != slug]
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, out / name)
    write_text_atomic(folder / f"graph-{slug}.js", f"window.SAE_GRAPH({script_data(data)});\n")
    listing.append({"slug": slug, "prompt": graph.prompt, "nodes": len(data["nodes"]), "edges": len(data["edges"])})
    write_text_atomic(folder / LISTING, f"window.SAE_GRAPHS = {script_data(listing)};\n")
    links = {i: n["href"] for i, n in enumerate(data["nodes"]) if "href" in n}
    missing = _missing_pages(out, links)
    if missing:
        warnings.warn(
            f"the feature links lead to {len(missing)} pages not written yet ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): write them with python -m sae dashboard",
            stacklevel=2,
        )
    return out / "graph.html"


def view_url(page: str | Path, slug: str) -> str:
    """The file:// URL that opens graph `slug` of the view at `page` (graph.html)."""
    return f"{Path(page).resolve().as_uri()}#graph={check_slug(slug)}"
