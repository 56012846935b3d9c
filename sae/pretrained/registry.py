"""The release registry: our releases.json, then SAELens's own pretrained_saes.yaml when sae_lens is installed.

A release maps an id to a Hub repo, a file format and, per layer, the folder holding one dictionary. SAELens's
YAML is read as data (never imported: sae_lens pins another transformer-lens), so its ~170 releases resolve too
whenever their conversion is one of the formats we read, its transcoder releases included: Gemma Scope 2
`transcoder`/`transcoder_all` folders (`gemma_3`), Gemma Scope's transcoders (`gemma_2_transcoder`), the Qwen3
transcoders in circuit-tracer's layer files (`mwhanna_transcoder`) and the Gemma 2 2B CLT read one layer at a time
(`mntss_clt_layer_transcoder`; the whole CLT loads from the repo itself).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

RELEASES_FILE = Path(__file__).with_name("releases.json")
# SAELens conversion_func -> our format name (None: SAELens's own layout)
SAELENS_CONVERSIONS = {
    None: "saelens",
    "gemma_2": "gemma-scope",
    "gemma_3": "gemma-scope-2",
    "llama_scope": "llama-scope",
    "sparsify": "sparsify",
    "dictionary_learning_1": "dictionary-learning",
    "gemma_2_transcoder": "gemma-scope-transcoder",
    "mwhanna_transcoder": "circuit-tracer",
    "mntss_clt_layer_transcoder": "circuit-tracer-clt-layer",
}


@dataclass
class Release:
    """One published set of dictionaries."""

    id: str
    repo: str
    format: str
    model: str
    saes: dict[str, str]  # sae_id -> path inside the repo
    hooks: dict[str, str] = field(default_factory=dict)  # sae_id -> hook point
    d_in: int | None = None
    width: int | None = None
    description: str = ""
    source: str = "saekit"
    norm_scaling_factor: dict[str, float] = field(default_factory=dict)
    kind: str = "sae"  # sae, transcoder or clt: what one of its dictionaries is

    def files(self, path: str) -> tuple[list[str], str]:
        """(what to download, the path to load, both relative to the repo) for the dictionary at `path`: its folder,
        or for circuit-tracer's layouts its files at the repo's root beside config.yaml."""
        if self.format == "circuit-tracer":  # layer_{l}.safetensors, or a CLT's folder ("" for the repo itself)
            if path.endswith(".safetensors"):
                return [path, "config.yaml"], path
            where = f"{path}/" if path else ""
            return [f"{where}*.safetensors", f"{where}config.yaml"], path
        if self.format == "circuit-tracer-clt-layer":  # the layer number
            enc = f"W_enc_{path}.safetensors"
            return [enc, f"W_dec_{path}.safetensors", "config.yaml"], enc
        return [f"{path}/*", f"{path}/**", path], path

    def find(self, sae_id: str | None, hook: str | None) -> tuple[str, str]:
        """(sae_id, path) for an sae_id or a hook point; a clear error listing a few valid ids otherwise."""
        if sae_id is None and hook is not None:
            ids = [i for i, h in self.hooks.items() if h == hook] or ([hook] if hook in self.saes else [])
            if len(ids) == 1:
                sae_id = ids[0]
            elif len(ids) > 1:
                raise ValueError(f"release {self.id!r} holds several dictionaries for hook {hook!r}: {ids}; pass sae_id=")
        if sae_id is None and len(self.saes) == 1:
            sae_id = next(iter(self.saes))
        if sae_id not in self.saes:
            some = list(self.saes)[:6]
            what = f"sae_id {sae_id!r}" if sae_id is not None else f"hook {hook!r}" if hook else "no sae_id or hook"
            raise ValueError(f"release {self.id!r} has no dictionary for {what}; valid sae_ids include {some}")
        return sae_id, self.saes[sae_id]


def _expand(entry: dict[str, Any]) -> Release:
    """A releases.json entry: patterns over {layer} for each of its `layers`, or one dictionary without them."""
    if "layers" in entry:
        first, last = entry["layers"]
        ids = {entry["sae_id"].format(layer=i): i for i in range(first, last + 1)}
        saes = {s: entry["path"].format(layer=i) for s, i in ids.items()}
        hooks = {s: entry["hook"].format(layer=i) for s, i in ids.items()}
    else:
        saes = {entry["sae_id"]: entry["path"]}
        hooks = {entry["sae_id"]: entry["hook"]} if entry.get("hook") else {}
    return Release(
        id=entry["id"],
        repo=entry["repo"],
        format=entry["format"],
        model=entry["model"],
        saes=saes,
        hooks=hooks,
        d_in=entry.get("d_in"),
        width=entry.get("width"),
        description=entry.get("description", ""),
        kind=entry.get("kind", "sae"),
    )


def _saelens_kind(release_id: str, conversion: str | None) -> str:
    """What a SAELens release's dictionaries are: its transcoder releases say so in their id or conversion (the
    mntss CLT is read one layer at a time, as a transcoder)."""
    return "transcoder" if "transcoder" in release_id or "transcoder" in str(conversion) else "sae"


@cache
def our_releases() -> dict[str, Release]:
    """The releases in releases.json."""
    data = json.loads(RELEASES_FILE.read_text())
    return {e["id"]: _expand(e) for e in data["releases"]}


def saelens_yaml_path() -> Path | None:
    """SAELens's registry file when sae_lens is installed (found without importing it)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    return path if path.exists() else None


@cache
def saelens_releases() -> dict[str, Release]:
    """SAELens's releases whose conversion we read; {} without sae_lens."""
    path = saelens_yaml_path()
    if path is None:
        return {}
    import yaml

    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = {}
    for rid, entry in (data or {}).items():
        fmt = SAELENS_CONVERSIONS.get(entry.get("conversion_func"), f"saelens:{entry.get('conversion_func')}")
        saes = entry.get("saes") or []
        out[rid] = Release(
            id=rid,
            repo=entry.get("repo_id", ""),
            format=fmt,
            model=entry.get("model", ""),
            saes={s["id"]: str(s["path"]) for s in saes if "id" in s and "path" in s},
            description=(entry.get("links") or {}).get("publication", ""),
            source="sae_lens",
            norm_scaling_factor={s["id"]: s["norm_scaling_factor"] for s in saes if "norm_scaling_factor" in s},
            kind=_saelens_kind(rid, entry.get("conversion_func")),
        )
    return out


def find_release(release_id: str) -> Release | None:
    """Ours first, then SAELens's."""
    return our_releases().get(release_id) or saelens_releases().get(release_id)


def list_releases(model: str | None = None, include_saelens: bool = False) -> list[Release]:
    """Our releases (and SAELens's when asked), optionally only those for `model` (substring match)."""
    found = list(our_releases().values())
    if include_saelens:
        found += [r for r in saelens_releases().values() if r.id not in our_releases()]
    return [r for r in found if model is None or model.lower() in r.model.lower()]
