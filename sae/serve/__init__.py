"""Live inspection: `python -m sae serve RUN`, the feature browser plus endpoints that run the model.

`create_app(inspector, browser)` is the Starlette app; `Inspector` computes what the endpoints answer (a text's
activations, steering and ablation effects); `load_inspector` loads a run once; `run_server` / `ThreadedServer`
serve it under uvicorn. See `sae/serve/app.py` for why this stack and what the server refuses. The web parts load
on first use, so the command line (which reads `Limits`) works without the `serve` extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae.serve.inspector import Inspector
from sae.serve.limits import Limits

if TYPE_CHECKING:
    from sae.serve.app import create_app
    from sae.serve.server import ThreadedServer, load_inspector, run_server

__all__ = ["Inspector", "Limits", "ThreadedServer", "create_app", "load_inspector", "run_server"]

_WEB = {"create_app": "sae.serve.app", "ThreadedServer": "sae.serve.server", "load_inspector": "sae.serve.server",
        "run_server": "sae.serve.server"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WEB:
        import importlib

        try:
            return getattr(importlib.import_module(_WEB[name]), name)
        except ImportError as e:
            raise ImportError(f"the live server needs starlette and uvicorn: pip install -e '.[serve]' ({e})") from e
    raise AttributeError(f"module 'sae.serve' has no attribute {name!r}")
