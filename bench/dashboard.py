"""Feature browser at dictionary sizes people train: statistics-pass memory and first-page render time.

    python bench/dashboard.py [--latents 131072] [--tokens 4096]

An untrained dictionary of `--latents` latents on MiniLM's layer-3 residual stream (its statistics are as
large as a trained one's: the tables are fixed-size per latent), a statistics pass over `--tokens` held-out
tokens, the browser written, then the first page opened in headless Chromium several times. The same is done
at the demo's 3072 latents in the same run as the baseline.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages, installed or not

from activations import load_model  # noqa: E402
from sae import SAEConfig, SparseAutoencoder  # noqa: E402
from sae.analysis import feature_stats, write_browser  # noqa: E402
from sae.analysis.chromium import chromium_path, launch  # noqa: E402

HOOK = "blocks.3.hook_resid_pre"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model, n: int, tokens: int, folder: Path, repeats: int) -> dict[str, float]:
    sae = SparseAutoencoder(SAEConfig(d_in=model.d_model, n_latents=n, k=32, hook_name=HOOK, model_name="minilm"), seed=0)
    before = _rss_mib()
    t0 = time.perf_counter()
    stats = feature_stats(sae, model, tokens=tokens, top_n=20, quantiles=10)
    pass_s = time.perf_counter() - t0
    grew = _rss_mib() - before
    tables = sum(t.numel() * t.element_size() for t in stats.tensors.values()) / 2**20
    t0 = time.perf_counter()
    index = write_browser(stats, folder / f"browser-{n}")
    write_s = time.perf_counter() - t0
    from playwright.sync_api import sync_playwright

    ready_ms, wall_ms = [], []
    with sync_playwright() as p:
        browser = launch(p)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            t0 = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            wall_ms.append((time.perf_counter() - t0) * 1000)
            ready_ms.append(float(page.evaluate("document.body.dataset.readyMs")))
            page.close()
        browser.close()
    return {
        "latents": n,
        "tokens": stats.meta["tokens"],
        "pass_s": pass_s,
        "peak_rss_growth_mib": grew,
        "tables_mib": tables,
        "dense_mib": stats.meta["tokens"] * n * 4 / 2**20,
        "write_s": write_s,
        "ready_ms": statistics.median(ready_ms),
        "wall_ms": statistics.median(wall_ms),
        "index_mib": (index.parent / "data" / "index.js").stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=131_072)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("chromium is not installed (make chromium installs it when run as root)")
    model = load_model("minilm")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(model, n, args.tokens, Path(tmp), args.repeats) for n in (3072, args.latents)]
    print(
        f"\n{'latents':>8} {'tokens':>7} {'stats pass s':>12} {'RSS growth MiB':>14} {'tables MiB':>10} "
        f"{'dense MiB':>10} {'write s':>8} {'index.js MiB':>12} {'first page ms':>13} {'goto->ready ms':>14}"
    )
    for r in rows:
        print(
            f"{r['latents']:>8} {r['tokens']:>7} {r['pass_s']:>12.1f} {r['peak_rss_growth_mib']:>14.0f} "
            f"{r['tables_mib']:>10.0f} {r['dense_mib']:>10.0f} {r['write_s']:>8.1f} {r['index_mib']:>12.2f} "
            f"{r['ready_ms']:>13.0f} {r['wall_ms']:>14.0f}"
        )
    base, big = rows
    print(
        f"first page at {big['latents']} latents: {big['ready_ms']:.0f} ms in page "
        f"({big['ready_ms'] / base['ready_ms']:.2f}x the {base['latents']}-latent baseline), "
        f"{big['wall_ms']:.0f} ms from navigation to drawn; target < 2000 ms"
    )


if __name__ == "__main__":
    main()
