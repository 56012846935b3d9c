"""A static PNG of a plotly figure beside the interactive one: what a notebook keeps readable where plotly's renderer
does not run (a code host's notebook preview, a viewer without JavaScript).

The PNG comes from kaleido when it is installed and finds a browser, else from the headless Chromium the tests use
(`sae.analysis.chromium`, through Playwright); with neither, only the interactive figure is shown, and that is said.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["show_figure", "write_png"]


def write_png(fig: Any, path: str | Path, width: int = 900, height: int | None = None) -> Path | None:
    """Render `fig` to `path` (kaleido, else headless Chromium); None when neither renderer is available."""
    path = Path(path)
    height = height or int(fig.layout.height or 450)
    try:
        fig.write_image(path, width=width, height=height, scale=1)
        return path
    except Exception:  # noqa: BLE001 - kaleido missing or without a browser: try Chromium next
        pass
    # on a thread of its own: Playwright's sync API refuses to run where an event loop runs (a notebook's kernel)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(_png_via_chromium, fig, path, width, height).result()
        except Exception:  # noqa: BLE001 - no Chromium or no Playwright: the caller shows the interactive figure alone
            return None
    return path


def _png_via_chromium(fig: Any, path: Path, width: int, height: int) -> None:
    """The figure as plotly.js draws it in a headless Chromium (plotly.js inlined: no network needed)."""
    from playwright.sync_api import sync_playwright

    from sae.analysis.chromium import chromium_path, launch

    if chromium_path() is None:
        raise FileNotFoundError("no chromium")
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "figure.html"
        fig.write_html(page_file, include_plotlyjs=True, default_width=width, default_height=height)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(page_file.as_uri())
            page.wait_for_selector(".main-svg", timeout=30_000)
            page.screenshot(path=str(path), full_page=False)
            browser.close()


def show_figure(fig: Any, png: str | Path, width: int = 900) -> Path | None:
    """In a notebook: the interactive figure, then its static PNG (written to `png`) for viewers without plotly."""
    from IPython.display import Image, display

    display(fig)
    written = write_png(fig, png, width=width)
    if written is None:
        print(f"(no static copy of the figure: neither kaleido nor a headless Chromium is installed; {png} not written)")
    else:
        display(Image(filename=str(written)))
    return written
