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

from activations.hooks import HookPoints
from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.train import RESUMABLE_CHANGES

IDENTITY_FILE = "run.json"
_PROBE_D_IN = 4096  # SAEConfig needs a width; the model's true width is recorded by the checkpoint itself
TARGET_WIDTH = "the target hook's width"  # what run.json records as a transcoder's d_out (set from the model)
# RunConfig fields that do not change what is trained: where results go and how the held-out metrics are sampled
_DATA_IGNORED = ("out", "resume", "overwrite", "eval_tokens", "pca_tokens")


def hook_fields(hooks: HookPoints, index: int = 0) -> dict[str, Any]:
    """What the hook points make of dictionary `index`'s SAEConfig: its hook_name, and for a transcoder its
    target_hook (a CLT: both as templates, with its layers and first_layer)."""
    if hooks.clt:
        return {
            "hook_name": hooks.input_template,
            "target_hook": hooks.output_template,
            "layers": len(hooks),
            "first_layer": hooks.first_layer,
        }
    if hooks.paired:
        return {"hook_name": hooks.names[index], "target_hook": hooks.target_names[index]}
    return {"hook_name": hooks.names[index]}


def probe_config(hooks: HookPoints, model_name: str, sae_kwargs: dict[str, Any]) -> SAEConfig:
    """The run's (first) dictionary before the model gives its widths (d_in, and a transcoder's d_out, stand-ins):
    building it checks the dictionary's options, transcoder ones included, in a second."""
    if sae_kwargs.get("skip") and not hooks.paired:
        raise ValueError(
            "--skip adds a transcoder's linear skip term: give the hook it predicts (--target-hook, or --layers with "
            "--target-template, or --clt)"
        )
    d_out: dict[str, Any] = {"d_out": _PROBE_D_IN} if hooks.paired else {}
    return SAEConfig(d_in=_PROBE_D_IN, model_name=model_name, **hook_fields(hooks), **d_out, **sae_kwargs)


def run_identity(run: RunConfig, sae_kwargs: dict[str, Any], tcfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The settings a resumed run must share with the run it continues, every field spelled out (defaults too):
    the hooks, a transcoder's target hooks and whether the run trains one CLT over them among them."""
    data = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name not in _DATA_IGNORED}
    data["hooks"] = list(run.hooks.names)
    data["target_hooks"] = list(run.hooks.target_names)
    data["clt"] = run.hooks.clt
    data.pop("text")
    data.update({k: v for k, v in dataclasses.asdict(run.text).items() if k != "split"})  # the run reads both splits
    probe = probe_config(run.hooks, run.model, sae_kwargs)
    sae = probe.to_dict()
    for key in ("d_in", "n_latents", "hook_name", "model_name"):  # set from the model and hooks at run time
        sae.pop(key)
    if probe.is_transcoder:
        sae["d_out"] = TARGET_WIDTH
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
