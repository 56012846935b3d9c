"""Atomic checkpoint files: written to a temporary file, then renamed over the old one."""

from __future__ import annotations

import errno
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp over `path`: a crash never leaves a half-written file.

    The result gets the permissions the user's umask gives any new file: writers such as `tempfile.mkstemp`
    or safetensors' `save_file` (which replaces the file it is given) would leave it owner-only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(path) from e
        raise
    except RuntimeError as e:  # torch's zip writer reports a failed write as a RuntimeError
        if _nearly_full(path.parent):
            raise DiskFullError(path) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


TMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """No space was left to write a file; the file it would have replaced is left as it was."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            errno.ENOSPC,
            f"no space left on device writing {path}; the previous {path.name}, if any, is left as it was: free "
            "some space and run again (training resumes from the last checkpoint with --resume)",
        )


def _nearly_full(folder: Path) -> bool:
    return shutil.disk_usage(folder).free < 16 * 2**20


def remove_stale_temporaries(folder: Path, depth: int = 3) -> list[Path]:
    """Delete what a killed `atomic_write` left in `folder` (its hidden `.<name>.<pid>.<hex>.tmp` files, up to
    `depth` folders down); only for a folder this process holds (a run's, under its lock). Returns them."""
    stale = [p for p in folder.glob("**/.*" + TMP_SUFFIX) if len(p.relative_to(folder).parts) <= depth and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint holding only tensors and plain data (`weights_only=True`): a file that would
    run code when unpickled is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "").strip()
        raise ValueError(
            f"checkpoint {path} holds objects other than tensors and plain data, so loading it could run code: "
            f"refused{f' ({why})' if why else ''}; delete it or train without --resume"
        ) from e
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
