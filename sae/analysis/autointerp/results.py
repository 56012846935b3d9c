"""`explanations.jsonl` beside `feature_stats.safetensors`: one JSON line per latent, appended as latents finish.

A line holds the latent, its explanation (None when the judge's answer could not be read, with the raw
answer kept), the judge and prompt version, the sampling settings and sample counts, each method's
score, the unparsed counts and the tokens it took. Lines are appended as latents finish, so a killed
run leaves every finished latent; a later line for a latent replaces an earlier one, a torn last line
is ignored, and `compact` rewrites the file sorted, one line per latent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sae.analysis.features import STATS_FILE
from sae.io import write_text_atomic

__all__ = ["EXPLANATIONS_FILE", "append_lines", "compact", "explanations_path", "load_explanations"]

EXPLANATIONS_FILE = "explanations.jsonl"


def explanations_path(where: str | Path) -> Path:
    """The explanations file for a run folder, a statistics file, or the explanations file itself."""
    p = Path(where)
    if p.is_dir():
        return p / EXPLANATIONS_FILE
    if p.name == STATS_FILE or p.suffix == ".safetensors":
        return p.with_name(EXPLANATIONS_FILE)
    return p


def load_explanations(where: str | Path) -> dict[int, dict[str, Any]]:
    """Latent -> its line, from a run folder, statistics file or explanations file ({} when there is none)."""
    path = explanations_path(where)
    out: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):  # the torn last line of a killed run
                    continue
                raise ValueError(f"{path}:{n} is not a JSON line: delete the line or the file") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("latent"), int):
                raise ValueError(f"{path}:{n}: expected an object with an integer 'latent', got {line[:80]!r}")
            out[rec["latent"]] = rec
    return out


def append_lines(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one JSON line each, flushed to disk (the torn tail of a killed run is cut off first)."""
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    if not text:
        return
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def compact(path: str | Path) -> None:
    """Rewrite the file with one line per latent, sorted by latent (atomically)."""
    path = explanations_path(path)
    records = load_explanations(path)
    text = "".join(json.dumps(records[i], ensure_ascii=False, separators=(",", ":")) + "\n" for i in sorted(records))
    write_text_atomic(path, text)
