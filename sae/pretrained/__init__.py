"""Load published dictionaries in any of the known layouts, from a local path, a Hub repo or a release id.

    sae = load_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")      # a release id
    sae = load_pretrained("EleutherAI/sae-llama-3-8b-32x", "layers.10")        # a Hub repo
    sae = load_pretrained("path/to/folder")                                   # any local layout
    saes = load_all("EleutherAI/sae-pythia-160m-32x")                         # every hook of a repo
    tc = load_pretrained("gemma-scope-2-1b-pt-transcoders", sae_id="transcoder/layer_7_width_16k_l0_small")
    clt = load_pretrained("mntss/clt-gemma-2-2b-2.5M")                        # a circuit-tracer CLT repo

Every format lands in our one SparseAutoencoder (see FORMATS.md and the docstring of each module of `sae.formats`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sae.formats.common import layer_hook
from sae.formats.saelens import load_saelens
from sae.io import FORMATS, check_dtype, detect_format, format_names, get_format
from sae.model import SparseAutoencoder
from sae.pretrained.compat import check_compatible
from sae.pretrained.registry import Release, find_release, list_releases

MAX_DEPTH = 4  # how deep under a repo dictionaries are looked for


def _known_formats() -> str:
    return "; ".join(f"{name}: {FORMATS[name].files}" for name in format_names("load"))


def find_dictionaries(root: Path) -> dict[str, Path]:
    """Every dictionary under `root` (root itself included), keyed by its path relative to root ('.' for root)."""
    root = Path(root)
    if detect_format(root) is not None:
        return {".": root}
    found: dict[str, Path] = {}

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith("."):
                continue
            if detect_format(child) is not None:
                found[str(child.relative_to(root))] = child
            elif child.is_dir() and depth < MAX_DEPTH:
                walk(child, depth + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def _undetectable(root: Path) -> ValueError:
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20] if root.is_dir() else [root.name]
    return ValueError(f"cannot tell the format of {root}: found {listing or 'no files'}; known formats: {_known_formats()}")


def _names(rel: str) -> tuple[str, ...]:
    """What a dictionary's place under a root answers to: its path, its name, its stem."""
    name = Path(rel).name
    return rel, name, Path(name).stem


def _matches(rel: str, hook: str, path: Path) -> bool:
    """Whether the dictionary at `rel` (under a root; at `path` here) is the one for `hook`: by its folder or file
    name, the hook that name stands for, or the hooks its layout records (circuit-tracer's layer files)."""
    if hook in (*_names(rel), *(layer_hook(n) for n in _names(rel)[1:])):
        return True
    fmt = detect_format(path)
    reads = FORMATS[fmt].hooks if fmt is not None else None
    return reads is not None and hook in reads(path)


def choose(root: Path, hook: str | None) -> Path:
    """The one dictionary under `root` for `hook` (any dictionary when root holds just one)."""
    found = find_dictionaries(root)
    if not found:
        raise _undetectable(root)
    if "." in found:
        return found["."]
    if hook is None:
        if len(found) == 1:
            return next(iter(found.values()))
        raise ValueError(f"{root} holds several dictionaries {sorted(found)[:12]}: pass hook= to choose one")
    hits = [p for rel, p in found.items() if _matches(rel, hook, p)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"no dictionary for hook {hook!r} under {root}; found {sorted(found)[:12]}")
    raise ValueError(f"several dictionaries under {root} match hook {hook!r}: {sorted(str(h) for h in hits)}")


def load_path(
    path: Path,
    format: str | None = None,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    release: Release | None = None,
    sae_id: str | None = None,
) -> SparseAutoencoder:
    """Load one dictionary folder or file, its format detected unless given."""
    fmt = format or detect_format(path)
    if release is not None and release.format in FORMATS and FORMATS[release.format].detect is None:
        fmt = format or release.format  # a layout told by its release alone (one CLT layer's W_enc file)
    if fmt is None:
        raise _undetectable(path)
    loader = get_format(fmt).load
    assert loader is not None  # get_format returns only layouts that load
    if fmt == "saelens" and release is not None and sae_id in release.norm_scaling_factor:
        sae = load_saelens(path, device=device, dtype=dtype, norm_scaling_factor=release.norm_scaling_factor[sae_id])
    else:
        sae = loader(path, device=device, dtype=dtype)
    if release is not None:
        if not sae.cfg.model_name:
            sae.cfg.model_name = release.model
        if sae_id in release.hooks and not sae.cfg.hook_name.startswith("blocks."):
            sae.cfg.hook_name = release.hooks[sae_id]
    return sae


def _download(repo: str, patterns: list[str] | None, revision: str | None = None) -> Path:
    """snapshot_download into the HF cache; an offline miss names the repo and the cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
            f"(HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)} or no network): download it once online, e.g. "
            f"`python -m sae pretrained download {repo}`"
        ) from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"Hub repo {repo!r} does not exist (or is private)") from e
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"downloading {repo} failed: {e}") from e


def fetch(
    source: str | Path, hook: str | None = None, *, sae_id: str | None = None, revision: str | None = None
) -> tuple[Path, Release | None, str | None]:
    """Bring `source` onto this machine: (local root, the release if it was one, its sae_id)."""
    path = Path(source).expanduser()
    if path.exists():
        return path, None, sae_id
    text = str(source)
    release = find_release(text)
    if release is not None:
        if release.format not in format_names("load"):
            conversion = release.format.split(":", 1)[-1]
            raise ValueError(f"release {text!r} is converted by SAELens with {conversion!r}, a layout we do not read")
        sid, sub = release.find(sae_id, hook)
        wanted, target = release.files(sub)
        root = _download(release.repo, wanted, revision)
        return root / target, release, sid
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(
            f"{text!r} is neither a local path, a release id (see `python -m sae pretrained list`), "
            "nor a Hub repo id (owner/name)"
        )
    subfolder = sae_id or hook
    patterns = [f"{subfolder}/*", f"{subfolder}/**", subfolder, "*.json", "config.yaml"] if subfolder else None
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook or "")
    if patterns and m and sae_id is None:
        layer, site = m.groups()
        patterns.append(f"layer_{layer}.safetensors")  # circuit-tracer's transcoder sets name the files after the layer
        if site == "hook_resid_post":  # sparsify names its folders after the layer
            patterns += [f"{name}{layer}/*" for name in ("layers.", "layer_")]
        if site == "hook_mlp_in":  # and a transcoder's after the MLP module it wraps
            patterns += [f"{name}{layer}.mlp/*" for name in ("layers.", "h.")]
    root = _download(text, patterns, revision)
    return root, None, sae_id


def load_pretrained(
    source: str | Path,
    hook: str | None = None,
    *,
    sae_id: str | None = None,
    format: str | None = None,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> SparseAutoencoder:
    """A dictionary from a local folder or file, a Hub repo id or a release id, in any known format.

    `hook` picks one dictionary of a multi-hook folder or repo (folder names such as `layers.10` or the
    TransformerLens hook they stand for); `sae_id` picks one of a release (or a sub-folder of a repo).
    """
    if format is not None:
        get_format(format)  # an unknown name is refused before anything is downloaded
    dtype_name = check_dtype(dtype) if dtype is not None else None
    root, release, sid = fetch(source, hook, sae_id=sae_id, revision=revision)
    if release is not None:
        target = root
    elif format is not None and hook is None:  # the layout is given: read the path as it, detected or not
        target = root / sid if sid else root
    else:
        target = choose(root / sid if sid else root, hook)
    sae = load_path(target, format, device=device, dtype=dtype_name, release=release, sae_id=sid)
    if hook is not None and release is None:
        _check_recorded_hook(sae, hook, target)
    return sae


def _check_recorded_hook(sae: SparseAutoencoder, hook: str, path: Path) -> None:
    """A `hook` asked of a folder holding one dictionary must be the one it records (or it records none: then it
    takes `hook`), so that a dictionary trained elsewhere is never spliced into the wrong place silently. A hook
    that names the dictionary's own file (`layer_3` for layer_3.safetensors), or one of the hooks a CLT
    reads, is the one it records."""
    recorded = sae.cfg.hook_name
    if not recorded:
        sae.cfg.hook_name = layer_hook(hook)
        return
    if (path.is_file() and hook in _names(path.name)) or hook in sae.cfg.input_hooks():
        return
    if layer_hook(hook) != layer_hook(recorded):
        raise ValueError(
            f"load_pretrained({str(path)!r}, hook={hook!r}): the dictionary there records hook {recorded!r}; leave hook "
            "out to load it, or point at the folder of the dictionary for that hook"
        )


def load_all(
    repo: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> dict[str, SparseAutoencoder]:
    """Every dictionary of a multi-hook folder or Hub repo, keyed by its folder (e.g. 'layers.10')."""
    root, _, _ = fetch(repo, revision=revision)
    found = find_dictionaries(root)
    if not found:
        raise _undetectable(root)
    dtype_name = check_dtype(dtype) if dtype is not None else None
    return {rel: load_path(p, device=device, dtype=dtype_name) for rel, p in found.items()}


__all__ = [
    "check_compatible",
    "detect_format",
    "find_dictionaries",
    "list_releases",
    "load_all",
    "load_pretrained",
]
