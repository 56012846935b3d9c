"""`python -m sae trace ... --view`: the traced graph's offline view (sae.circuits.view) beside its files, with
each feature linked to the feature browser `python -m sae dashboard` writes beside its dictionary."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae.circuits.graph import Graph
    from sae.model import SparseAutoencoder


def check_view(cfg: Any) -> None:
    """Refuse a bad --slug or --browser before anything loads (the view needs a slug that can name a file)."""
    if not (cfg.view or cfg.browser):
        return
    from sae.circuits.view import check_browser, check_slug

    if cfg.browser and not cfg.view:
        raise ValueError("--browser sets the graph view's feature links: pass --view too")
    check_slug(cfg.slug)
    check_browser(cfg.browser or None)


def default_links(root: Path, out: Path, transcoders: Sequence[SparseAutoencoder]) -> tuple[dict[int, str] | str | None, int]:
    """Per layer, the page `python -m sae dashboard DIR` writes for the dictionary of that layer (DIR/browser/
    index.html), relative to `out`; for a CLT its one page and its width. None for a Hub id (no local folder)."""
    from sae.circuits.dictionaries import INPUT_HOOK
    from sae.pretrained import find_dictionaries

    if not root.is_dir():
        return None, 0
    found = list(find_dictionaries(root).values())  # load_all's order: one per transcoder
    if len(found) != len(transcoders):
        return None, 0
    pages: dict[int, str] = {}
    for path, t in zip(found, transcoders):
        folder = path.parent if path.is_file() else path
        page = Path(os.path.relpath(folder / "browser" / "index.html", out)).as_posix()
        if t.cfg.is_clt:
            return page, int(t.cfg.n_latents or 0)
        m = INPUT_HOOK.match(t.cfg.hook_name)
        if m:
            pages[int(m.group(1))] = page
    return pages, 0


def write_view(cfg: Any, graph: Graph, transcoders: Sequence[SparseAutoencoder]) -> str:
    """Write the view into --out; returns the URL that opens it."""
    import warnings

    from sae.circuits.view import view_url, write_graph_view

    out = Path(cfg.out)
    clt = [t for t in transcoders if t.cfg.is_clt]
    if cfg.browser:
        browser: dict[int, str] | str | None = cfg.browser
        width = int(clt[0].cfg.n_latents or 0) if clt else 0
    else:
        browser, width = default_links(Path(cfg.transcoders), out, transcoders)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = write_graph_view(graph, out, cfg.slug, browser, width, cfg.node_threshold, cfg.edge_threshold)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return view_url(page, cfg.slug)
