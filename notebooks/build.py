"""Write notebooks/NN_*.ipynb from examples/NN_*.py, so each notebook and its script hold the same cells.

    python notebooks/build.py

A script's cells start at `# %%` (code) or `# %% [markdown]` (markdown, each line's leading `# ` removed); the
module docstring before the first cell is the script's own header. Notebooks are written without outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))


def notebook(script: Path) -> nbformat.NotebookNode:
    """The notebook whose cells are the `# %%` cells of `script`."""
    chunks = re.split(r"^# %%(.*)$", script.read_text(), flags=re.M)
    cells = []
    for marker, body in zip(chunks[1::2], chunks[2::2], strict=True):
        body = body.strip("\n")
        if marker.strip() == "[markdown]":
            text = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{script.stem[:2]}-{i:02d}"  # stable ids: a rebuild changes nothing
    return nb


def main() -> None:
    for script in SCRIPTS:
        out = ROOT / "notebooks" / (script.stem + ".ipynb")
        nbformat.write(notebook(script), out)
        print(out.relative_to(ROOT))


if __name__ == "__main__":
    main()
