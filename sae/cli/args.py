"""argparse options generated from config dataclasses: field docstrings become --help text.

A field whose type is a dataclass (a `TextSource`, `HookPoints`) contributes its own fields as options, so a
setting defined once reaches every subcommand that holds it. Field metadata may name the option (`flag`,
e.g. "--hook" for `hooks`, or "--no-splice" for a bool that defaults to True), add `aliases`, or make it
`positional`. A field typed `tuple[str, ...]` is repeatable (`--hook a --hook b`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import types
import typing
from typing import Any

__all__ = ["add_dataclass_args", "build_dataclass", "dataclass_kwargs", "field_docs", "option_fields"]


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


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def option_fields(cls: type, default: Any = None) -> list[tuple[dataclasses.Field, Any, Any, str]]:
    """(field, type, default, docstring) of every option of `cls`, nested dataclasses' fields in their place."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = _base_type(hints[f.name])
        value = getattr(default, f.name) if default is not None else _default(f)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += option_fields(hint, value if value is not dataclasses.MISSING else None)
        else:
            out.append((f, hint, value, docs.get(f.name, "")))
    return out


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One option per field of `cls`, typed from its annotation, defaulting to None (= the field's default)."""
    group = parser.add_argument_group(cls.__name__)
    for f, hint, default, doc in option_fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        if meta.get("positional"):
            parser.add_argument(f.name, help=doc)
            continue
        flags = [meta.get("flag", "--" + f.name.replace("_", "-")), *meta.get("aliases", ())]
        unset = default is None or default is dataclasses.MISSING or (isinstance(default, str | tuple) and not default)
        shown = "" if unset else f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{doc}{shown}"}
        if "flag" in meta:
            kw["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is bool and flags[0].startswith("--no-"):
            group.add_argument(*flags, dest=f.name, action="store_const", const=False, default=None, help=doc)
        elif hint is bool:
            group.add_argument(*flags, type=_parse_bool, nargs="?", const=True, **kw)
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            group.add_argument(*flags, type=args[0], action="append", **kw)
        elif origin is tuple:
            group.add_argument(*flags, type=float, nargs=len(args), **kw)
        elif origin is dict or hint is dict:
            group.add_argument(*flags, type=json.loads, **{**kw, "help": kw["help"] + " as JSON"})
        else:
            group.add_argument(*flags, type=str if hint is Any else hint, **kw)


def dataclass_kwargs(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` (nested dataclasses' fields by their own names) the user set on the command line."""
    out = {}
    for f, _, _, _ in option_fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def build_dataclass(cls: type, options: dict[str, Any]) -> Any:
    """`cls` from flat options (as `dataclass_kwargs` gives them): each nested dataclass gets its own fields."""
    known = {f.name for f, _, _, _ in option_fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no options {unknown}")
    return _build(cls, options)


def _build(cls: type, options: dict[str, Any], base: Any = None) -> Any:
    """`cls` from `base` (or the field defaults), with the options given replacing its fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = _base_type(hints[f.name])
        inner_base = getattr(base, f.name) if base is not None else _default(f)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, options, None if inner_base is dataclasses.MISSING else inner_base)
        elif f.name in options:
            kwargs[f.name] = options[f.name]
        elif base is not None:
            kwargs[f.name] = inner_base
    return cls(**kwargs)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
