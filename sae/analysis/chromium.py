"""Headless Chromium through Playwright (Debian's chromium or $CHROMIUM): how the feature browser's tests, its
benchmark and the study figures open pages. Playwright is imported by the caller, not here."""

from __future__ import annotations

import base64
import os
import shutil

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium (or $CHROMIUM), None when it is not installed."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.path.exists(path) else None


def launch(playwright):
    """A headless Chromium browser from a started Playwright (`sync_playwright()`), with CHROMIUM_ARGS."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def distinct_colours(page, png: bytes) -> int:
    """Distinct pixel colours of a PNG screenshot, counted by the browser itself (a canvas)."""
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return page.evaluate(
        """async (url) => {
        const img = new Image(); img.src = url; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        return seen.size; }""",
        url,
    )
