"""Live inspection: `python -m sae serve RUN`, the feature browser plus endpoints that run the model.

`create_app(inspector, browser)` is the Starlette app; `Inspector` computes what the endpoints answer (a text's
activations, steering and ablation effects); `load_inspector` loads a run once; `run_server` / `ThreadedServer`
serve it under uvicorn. See `sae/serve/app.py` for why this stack and what the server refuses.
"""

from sae.serve.app import create_app
from sae.serve.inspector import Inspector
from sae.serve.limits import Limits
from sae.serve.server import ThreadedServer, load_inspector, run_server

__all__ = ["Inspector", "Limits", "ThreadedServer", "create_app", "load_inspector", "run_server"]
