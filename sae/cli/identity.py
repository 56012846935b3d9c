"""What makes a run the run it is: its data, its dictionary and its training settings, written to `run.json`
when the run starts so that `--resume` can refuse another run's settings before anything is harvested.

A checkpoint pins the dictionary and the trainer, but not the text they were trained on: without this, a
resumed run with another `--dataset` or `--context-len` would carry on with exit 0 on different data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.train import RESUMABLE_CHANGES

IDENTITY_FILE = "run.json"
_PROBE_D_IN = 4096  # SAEConfig needs a width; the model's true width is recorded by the checkpoint itself
# RunConfig fields that do not change what is trained: where results go and how the held-out metrics are sampled
_DATA_IGNORED = ("out", "resume", "overwrite", "eval_tokens", "pca_tokens")


def run_identity(run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The settings a resumed run must share with the run it continues, every field spelled out (defaults too)."""
    data = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name not in _DATA_IGNORED}
    data["hooks"] = list(run.hooks.names)
    data.pop("text")
    data.update({k: v for k, v in dataclasses.asdict(run.text).items() if k != "split"})  # the run reads both splits
    sae = SAEConfig(d_in=_PROBE_D_IN, **sae_kwargs).to_dict()
    for key in ("d_in", "n_latents", "hook_name", "model_name"):  # set from the model and hooks at run time
        sae.pop(key)
    sae["n_latents"] = sae_kwargs.get("n_latents")
    training = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps({"data": data, "dictionary": sae, "training": training}, default=str))


def write_identity(out: Path, identity: dict[str, dict[str, Any]]) -> None:
    """Record the run's identity in `out` (a fresh run; a resumed one keeps the file it found)."""
    from sae.io import write_json

    write_json(out / IDENTITY_FILE, identity)


def check_resume(out: Path, identity: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume the run in `out` with other settings, naming each field with both values. A run that
    predates run.json is left to the checkpoint's own check (dictionary and training, after the harvest)."""
    path = out / IDENTITY_FILE
    if not path.exists():
        return
    from sae.io import read_json

    saved = read_json(path)
    changed = []
    for part in ("data", "dictionary", "training"):
        was, now = saved.get(part, {}), identity[part]
        # a setting the record lacks came later than the run (it had its default then): the checkpoint checks it
        changed += [
            f"{part} {key}: run {was[key]!r}, this run {now.get(key, '<absent>')!r}"
            for key in sorted(was)
            if was[key] != now.get(key, "<absent>")
        ]
    if changed:
        raise ValueError(
            f"cannot resume the run in {str(out)!r} with other settings: "
            + "; ".join(changed)
            + ". Resume with the run's settings, or start a fresh --out"
        )
