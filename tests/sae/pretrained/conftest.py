"""A Hugging Face hub cache laid out by a test: release ids and Hub repos resolve offline against it."""

import huggingface_hub.constants
import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache; `add(repo)` gives the snapshot folder to fill."""
    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def add(repo: str):
        base = cache / f"models--{repo.replace('/', '--')}"
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(COMMIT)
        snap = base / "snapshots" / COMMIT
        snap.mkdir(parents=True, exist_ok=True)
        return snap

    add.root = cache
    return add
