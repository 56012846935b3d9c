"""argparse options generated from config dataclasses: field docstrings become --help text."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import types
import typing
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (the string literal following each annotation)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _base_type(hint: Any) -> Any:
    """int | None -> int; leaves other hints alone."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One --option per field of `cls`, typed from its annotation, defaulting to None (= the field's default)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        origin = typing.get_origin(hint)
        if hint is bool:
            group.add_argument(flag, dest=f.name, type=_parse_bool, nargs="?", const=True, default=None,
                               help=help_text)
        elif origin is tuple:
            group.add_argument(flag, dest=f.name, type=float, nargs=len(typing.get_args(hint)), default=None,
                               help=help_text)
        elif origin is dict or hint is dict:
            group.add_argument(flag, dest=f.name, type=json.loads, default=None, help=help_text + " as JSON")
        else:
            group.add_argument(flag, dest=f.name, type=hint, default=None, help=help_text)


def dataclass_kwargs(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user set on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
