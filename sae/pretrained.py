"""Load published dictionaries from a local folder or the Hugging Face Hub (our / SAELens layout)."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.io import CFG_FILE, WEIGHTS_FILE
from sae.model import SparseAutoencoder


def _find_folder(root: Path, hook: str | None) -> Path:
    """The dictionary folder under `root`: root itself, or the sub-folder named after `hook`."""
    if (root / CFG_FILE).exists():
        return root
    candidates = sorted(p.parent for p in root.rglob(CFG_FILE) if (p.parent / WEIGHTS_FILE).exists())
    if not candidates:
        raise FileNotFoundError(f"no {CFG_FILE} + {WEIGHTS_FILE} under {root}")
    if hook is None:
        if len(candidates) == 1:
            return candidates[0]
        names = [str(c.relative_to(root)) for c in candidates]
        raise ValueError(f"{root} holds several dictionaries {names}: pass hook= to choose one")
    for c in candidates:
        if c.name == hook or str(c.relative_to(root)) == hook:
            return c
    names = [str(c.relative_to(root)) for c in candidates]
    raise ValueError(f"no dictionary for hook {hook!r} under {root}; found {names}")


def load_pretrained(
    name_or_path: str | Path,
    hook: str | None = None,
    revision: str | None = None,
    device: torch.device | str = "cpu",
) -> SparseAutoencoder:
    """A dictionary from a local folder, or from a Hub repo id (downloaded once into the HF cache)."""
    path = Path(name_or_path)
    if not path.exists():
        looks_local = str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") != 1
        if looks_local:
            raise FileNotFoundError(f"{name_or_path} is neither a local folder nor a Hub repo id (owner/name)")
        from huggingface_hub import snapshot_download

        patterns = [f"{hook}/*", CFG_FILE, WEIGHTS_FILE] if hook else None
        path = Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    return SparseAutoencoder.load(_find_folder(path, hook), device=device)
