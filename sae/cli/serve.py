"""`python -m sae serve RUN_OR_ID [--model M] [--host 127.0.0.1] [--port 8000]`: the feature browser, live.

The run's browser folder (when it has one) plus endpoints that run the model on any text, steer and ablate
latents; the model and the dictionary are loaded once. Binds the loopback interface unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from activations.source import TextSource
from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs
from sae.serve.limits import Limits


@dataclass
class ServeConfig:
    """Options of `python -m sae serve`."""

    path: str = field(metadata={"positional": True})
    """Run folder, dictionary folder in any layout, or a release / Hub id (then --hook picks one of several)."""
    model: str = ""
    """Model: empty = the model_name the dictionary records."""
    hook: str = ""
    """Which dictionary of a multi-hook folder, repo or release (e.g. blocks.8.hook_resid_pre)."""
    host: str = "127.0.0.1"
    """Interface to bind; anything but the loopback interface is warned about."""
    port: int = 8000
    """Port to listen on."""
    allow_host: tuple[str, ...] = ()
    """Further names the Host header may carry (repeatable): the names other machines reach this one by."""
    browser: str = ""
    """Browser folder to serve; empty = RUN/browser when it exists (else a page with the live panel only)."""
    device: str = "cpu"
    """Device of the model and the dictionary."""
    references: int = 300
    """Encoders: reference passages (the first 24 tokens of each document) for nearest neighbours; 0: none."""
    text: TextSource = field(default_factory=TextSource)
    """Where the reference passages come from (default: the embedded corpus)."""
    limits: Limits = field(default_factory=Limits)
    """Caps of each request."""


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """The `serve` subcommand."""
    p = sub.add_parser("serve", help="serve the feature browser with live activations, steering and ablation")
    add_dataclass_args(p, ServeConfig, skip=("context_len",))


def run_serve(args: argparse.Namespace) -> int:
    """Load once, serve until interrupted. Errors in one line, exit status 2."""
    try:
        from sae.serve import create_app, load_inspector, run_server
        from sae.serve.server import allowed_hosts

        cfg = build_dataclass(ServeConfig, dataclass_kwargs(args, ServeConfig))
        if not 0 <= cfg.port <= 65535:
            raise ValueError(f"--port must be from 0 to 65535, got {cfg.port}")
        hosts = allowed_hosts(cfg.host, cfg.allow_host)
        inspector, found = load_inspector(cfg.path, cfg.model, cfg.hook, cfg.device, cfg.limits, cfg.text, cfg.references)
        browser = Path(cfg.browser) if cfg.browser else found
        app = create_app(inspector, browser, hosts)
    except (ValueError, OSError, KeyError, TypeError, ImportError) as e:  # ImportError: no starlette / uvicorn
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"live feature browser: http://{shown}:{cfg.port}/  (Ctrl-C stops it)", flush=True)
    run_server(app, cfg.host, cfg.port)
    return 0
