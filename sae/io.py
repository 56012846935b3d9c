"""File-level building blocks every dictionary format shares, and the registry of formats.

Reading: JSON and safetensors files with errors that name the file, sizes checked before anything is
allocated, dtypes and finiteness checked. The registry: each layout (`sae.formats`) registers a `Format`
saying how to recognise, read and (where it can) write it; `SparseAutoencoder.save`/`load` and
`load_pretrained` dispatch through it, so this module knows neither the layouts nor the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sae.checkpoint import atomic_write
from sae.config import DTYPES

if TYPE_CHECKING:
    from sae.model import SparseAutoencoder

MAX_PARAMETERS = 2**34  # d_in * d_sae above this (64 GiB of fp32 per matrix) is a corrupt or hostile config


@dataclass(frozen=True)
class Format:
    """One file layout of a dictionary."""

    name: str
    files: str
    """What identifies it, as error messages list it (e.g. 'cfg.json + sae.safetensors')."""
    detect: Callable[[Path], bool] | None = None
    """Whether a folder or file is in this layout; None: used only when asked for by name."""
    load: Callable[..., SparseAutoencoder] | None = None
    """load(path, device=..., dtype=...) -> a dictionary; None: a layout we only write."""
    save: Callable[[SparseAutoencoder, Path], Path] | None = None
    """save(sae, folder) -> the folder; None: a layout we only read."""
    hooks: Callable[[Path], list[str]] | None = None
    """hooks(path) -> the hook names the dictionary at `path` reads, known without loading it (so `hook=` can pick
    it out of a folder whose file names are not hook names); None: only its file name is matched."""


FORMATS: dict[str, Format] = {}  # by name, in detection order (a path is read as the first layout that claims it)


def register_format(fmt: Format) -> Format:
    """Add a layout to `load_pretrained`'s detection (after the ones registered before it) and, where it can
    write, to `SparseAutoencoder.save(format=...)`. Refuses a duplicate name or a layout that neither reads nor
    writes. Returns `fmt`."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format takes a sae.io.Format, got {fmt!r}")
    if fmt.name in FORMATS:
        raise ValueError(f"format name {fmt.name!r} is already registered; give the new layout a name of its own")
    if fmt.load is None and fmt.save is None:
        raise ValueError(f"format {fmt.name!r} neither loads nor saves: give it load=, save= or both")
    FORMATS[fmt.name] = fmt
    return fmt


def format_names(use: Literal["load", "save"]) -> list[str]:
    """The registered layouts that can `use` ('load' or 'save'), in registration order."""
    return [name for name, fmt in FORMATS.items() if getattr(fmt, use) is not None]


def get_format(name: str, use: Literal["load", "save"] = "load") -> Format:
    """The registered layout `name`, which must be able to `use`; a clear error listing the ones that can."""
    names = format_names(use)
    if name not in names:
        if use == "save":
            raise ValueError(f"unknown save format {name!r}; expected one of {tuple(names)}")
        raise ValueError(f"unknown format {name!r}; expected one of {sorted(names)}")
    return FORMATS[name]


def detect_format(path: str | Path) -> str | None:
    """The layout of one dictionary at `path` (a folder or a file), or None."""
    path = Path(path)
    if not (path.is_file() or path.is_dir()):
        return None
    return next((name for name, fmt in FORMATS.items() if fmt.detect is not None and fmt.detect(path)), None)


def check_size(d_in: Any, d_sae: Any, source: str | Path) -> None:
    """Refuse non-integer or absurd sizes before anything is allocated."""
    for name, v in (("d_in", d_in), ("d_sae", d_sae)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{source}: {name}={v!r}; expected a positive integer")
    if d_in * d_sae > MAX_PARAMETERS:
        raise ValueError(
            f"{source}: d_in={d_in} x d_sae={d_sae} = {d_in * d_sae:.3g} weights per matrix, over the limit of "
            f"{MAX_PARAMETERS:.3g}; refusing to allocate it (a corrupt or hostile config?)"
        )


def check_tensors(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse NaN or inf in loaded weights, naming the tensor (a diverged or corrupt dictionary)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: tensor {name!r} holds {bad} NaN or inf values; refusing to load it")


def check_dtype(dtype: str | torch.dtype) -> str:
    """The dtype's name in SAEConfig terms; a clear error for an unknown one."""
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; expected one of {tuple(DTYPES)}")
        return names[dtype]
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    return name


def read_safetensors(
    path: Path, expected: dict[str, tuple] | None = None, hint: Callable[[str, tuple[int, ...]], str] | None = None
) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; with `expected` shapes, the header is checked before anything is read
    (`hint(name, shape)` may add why a shape is wrong to the error)."""
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if expected is not None:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if name in expected and tuple(f.get_slice(name).get_shape()) != tuple(expected[name][0]):
                        shape = tuple(f.get_slice(name).get_shape())
                        why = hint(name, shape) if hint is not None else ""
                        raise ValueError(f"{path}: tensor {name} has shape {shape}, expected {tuple(expected[name][0])}{why}")
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ValueError(f"weights file {path} is truncated or corrupt: {e}") from e


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; errors name the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}; expected an object")
    return raw


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` to a safetensors file atomically (a crash never leaves half a file)."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (a crash never leaves half a file)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write `obj` as indented JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2))
