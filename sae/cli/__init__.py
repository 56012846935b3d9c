"""Command line: python -m sae train|demo|eval|dashboard|explain|pretrained|serve|export. Options come from dataclasses.

One module per subcommand (`train`, `eval`, `dashboard`, `explain`, `pretrained`, `serve`, `export`), the whole
training run in `run` (its output folder in `run_folder`), the dataclass-to-argparse generator in `args`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sae.cli.dashboard import add_dashboard_parser, run_dashboard
from sae.cli.eval import add_eval_parser, run_eval
from sae.cli.explain import add_explain_parser, run_explain
from sae.cli.export import add_export_parser, run_export
from sae.cli.pretrained import add_pretrained_parser, run_pretrained
from sae.cli.serve import add_serve_parser, run_serve
from sae.cli.trace import add_trace_parser, run_trace
from sae.cli.train import add_train_parsers, run_train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sae", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parsers(sub)
    add_eval_parser(sub)
    add_pretrained_parser(sub)
    add_dashboard_parser(sub)
    add_explain_parser(sub)
    add_serve_parser(sub)
    add_export_parser(sub)
    add_trace_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pretrained":
        return run_pretrained(args)
    if args.command == "explain":
        return run_explain(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "trace":
        return run_trace(args)
    try:
        if args.command == "dashboard":
            print(f"feature browser: {run_dashboard(args).resolve()}  (open it in a web browser)")
            return 0
        if args.command == "eval":
            metrics = run_eval(args)
        else:
            from sae.distributed.group import PeerLost
            from sae.train import NonFiniteError

            try:
                metrics = run_train(args)
            except PeerLost as e:
                print(f"error: {e}", file=sys.stderr)
                return 3
            except NonFiniteError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    except (ValueError, OSError, KeyError, TypeError) as e:  # OSError: a full disk, a folder without permission
        print(f"error: {e}", file=sys.stderr)
        return 2
    if metrics:  # the other ranks of a distributed run write nothing
        print(json.dumps(metrics, indent=2))
    return 0
