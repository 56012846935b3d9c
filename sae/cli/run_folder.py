"""A run's output folder: refused when it holds another run, locked for the run's life, never left empty.

Training into a folder that already holds a run would replace its config, weights, metrics and log;
two runs on one folder at once would interleave one log. So a non-empty folder needs `resume`
(continue the run in it) or `overwrite` (replace it), and the folder is held with an exclusive
`flock` on `.lock` (holding the pid) until the run ends: a second writer is refused with that pid.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sae.checkpoint import remove_stale_temporaries

__all__ = ["RUN_FILES", "LOCK_FILE", "RunFolderError", "run_folder"]

# what a run (its evaluation, feature statistics, browser and explanations included) writes into its folder
RUN_FILES = (
    "run.json",
    "cfg.json",
    "sae_weights.safetensors",
    "metrics.json",
    "log.jsonl",
    "checkpoints",
    "eval",
    "feature_stats.safetensors",
    "feature_stats.safetensors.partial",
    "browser",
    "explanations.jsonl",
    "autointerp_cache.sqlite",
    "autointerp_cache.sqlite-wal",
    "autointerp_cache.sqlite-shm",
    "export-neuronpedia",
    "export-saedashboard",
)
LOCK_FILE = ".lock"


class RunFolderError(ValueError):
    """The output folder cannot take this run: a file, unwritable, in use, or holding another run."""


@contextmanager
def run_folder(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Check, create and lock `out` for one run; on exit unlock it, and remove it if this call made it
    and the run left nothing in it (a run that failed early leaves no empty folder behind)."""
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {str(out)!r} is a file; expected a folder for the run's files")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {str(out)!r}: {e.strerror or e}") from None
    try:
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunFolderError(f"run folder {str(out)!r} is not writable")
        fd = _lock(out / LOCK_FILE, out)
        try:
            _make_room(out, resume, overwrite)
            remove_stale_temporaries(out)  # a write killed mid-way left them; this process holds the folder now
            yield out
        finally:
            (out / LOCK_FILE).unlink(missing_ok=True)
            os.close(fd)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _lock(path: Path, out: Path) -> int:
    """Hold an exclusive flock on `path` (the pid written in it); refuse with the holder's pid."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {str(out)!r} is in use by another run (pid {holder}); wait for it to end or choose another --out"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder unlinked while we opened it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _is_run_file(path: Path) -> bool:
    """A file a run writes, or a sub-folder holding one hook's run (several hooks: OUT/<hook>/)."""
    if path.name in RUN_FILES or path.name.endswith(".tmp"):
        return True
    return path.is_dir() and (path / "cfg.json").exists() and all(_is_run_file(p) for p in path.iterdir())


def _make_room(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding a run unless resuming or overwriting; overwrite deletes only a run's files."""
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if not present or resume:
        return
    if not overwrite:
        raise RunFolderError(
            f"run folder {str(out)!r} is not empty (it holds {', '.join(present)}): pass --resume to continue "
            "the run in it, --overwrite to replace it, or choose another --out"
        )
    foreign = [name for name in present if not _is_run_file(out / name)]
    if foreign:
        raise RunFolderError(
            f"--overwrite: run folder {str(out)!r} holds files that are not a run's ({', '.join(foreign)}); "
            "refusing to delete them: choose another --out"
        )
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
