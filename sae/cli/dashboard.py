"""`python -m sae dashboard DIR --out browser/`: feature statistics of a saved dictionary, then the offline browser."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from activations.source import TextSource
from sae.cli.args import add_dataclass_args, build_dataclass, dataclass_kwargs


@dataclass
class DashboardConfig:
    """Options of `python -m sae dashboard`."""

    path: str = field(metadata={"positional": True})
    """Dictionary folder, in any layout load_pretrained reads (ours: cfg.json + sae_weights.safetensors)."""
    out: str = ""
    """Browser folder (index.html + data/); empty = DIR/browser."""
    stats: str = ""
    """Statistics file (resumable); empty = DIR/feature_stats.safetensors (for a one-file dictionary, beside it)."""
    tokens: int = 65_536
    """Tokens the statistics pass reads."""
    model: str = ""
    """Model: empty = the model_name the dictionary records."""
    text: TextSource = field(default_factory=lambda: TextSource(context_len=64))
    """The text the statistics are measured on (the embedded corpus's 'test' split has about 18k tokens)."""
    top_n: int = 20
    """Top-activating contexts kept per latent."""
    quantiles: int = 10
    """Activation quantile groups sampled per latent."""
    device: str = "cpu"
    """Device of the model and the dictionary."""
    seed: int = 0
    """Seed of the firing and co-occurrence samples."""


def add_dashboard_parser(sub: argparse._SubParsersAction) -> None:
    """The `dashboard` subcommand."""
    p = sub.add_parser("dashboard", help="write the offline feature browser of a saved dictionary")
    add_dataclass_args(p, DashboardConfig)


def run_dashboard(args: argparse.Namespace) -> Path:
    """Statistics into --stats (DIR/feature_stats.safetensors; resumable), the browser into --out (with
    DIR/explanations.jsonl when there is one); returns index.html. Both places are checked writable before the
    dictionary and the model load."""
    from activations import load_model
    from sae.analysis.autointerp.results import explanations_path
    from sae.analysis.dashboard import write_browser
    from sae.analysis.features import STATS_FILE, feature_stats
    from sae.pretrained import load_pretrained

    cfg = build_dataclass(DashboardConfig, dataclass_kwargs(args, DashboardConfig))
    path = Path(cfg.path)
    folder = path.parent if path.is_file() else path
    out = Path(cfg.out) if cfg.out else folder / "browser"
    stats_path = Path(cfg.stats) if cfg.stats else folder / STATS_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the browser needs a folder")
    if stats_path.is_dir():
        raise ValueError(f"--stats {stats_path} is a folder; give the statistics file's path")
    check_writable(stats_path.parent, "the statistics", "--stats")
    check_writable(out, "the browser", "--out")
    sae = load_pretrained(path, device=cfg.device)
    model_name = cfg.model or sae.cfg.model_name
    if not model_name:
        raise ValueError(f"the dictionary at {path} records no model_name: pass --model")
    model = load_model(model_name, device=cfg.device)
    stats = feature_stats(
        sae, model, cfg.text, tokens=cfg.tokens, top_n=cfg.top_n, quantiles=cfg.quantiles, out=stats_path, seed=cfg.seed
    )
    return write_browser(stats, out, explanations=explanations_path(folder))


def check_writable(folder: Path, what: str, flag: str) -> None:
    """Create `folder` if needed and write a probe file there, so a read-only place is refused before the pass
    that would write into it, naming the option that moves it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {what} into {folder} ({e.strerror or e}); pass {flag} with a writable place") from None
