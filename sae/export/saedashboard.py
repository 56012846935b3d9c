"""`--format saedashboard`: the `batch-N.json` files SAEDashboard's NeuronpediaRunner writes (what Neuronpedia's
`convert-saedashboard-to-neuronpedia-export.py` turns into an export). Each file is checked against
`schema.SCHEMAS` before it is written. SAEDashboard's own HTML viewer data (`SaeVisData`) is not written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae.export.records import ExportRun
from sae.export.schema import check_record

__all__ = ["write_saedashboard"]

_EMPTY_LISTS = (
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "decoder_weights_dist",
)


def _feature(run: ExportRun, latent: dict[str, Any]) -> dict[str, Any]:
    counts = latent["hist"]["counts"]
    width = latent["hist"]["upper"] / max(len(counts), 1)
    top, bottom = (latent.get(k, []) if run.logit_effects else [] for k in ("tokens_top", "tokens_bottom"))
    acts = []
    for ex in run.examples(latent):
        rec = {
            "bin_min": ex.bin_min,
            "bin_max": ex.bin_max,
            "bin_contains": ex.bin_contains,
            "tokens": ex.tokens,
            "values": [float(v) for v in ex.values],
            "qualifying_token_index": ex.peak,
        }
        check_record("saedashboard.activation", rec)
        acts.append(rec)
    feature = {
        "feature_index": latent["id"],
        **{k: [] for k in _EMPTY_LISTS},
        "pos_str": run.stats.text([t for t, _ in top]),
        "pos_values": [float(v) for _, v in top],
        "neg_str": run.stats.text([t for t, _ in bottom]),
        "neg_values": [float(v) for _, v in bottom],
        "frac_nonzero": float(latent["frequency"]),
        "freq_hist_data_bar_values": [round((b + 0.5) * width, 6) for b in range(len(counts))],
        "freq_hist_data_bar_heights": [float(c) for c in counts],
        "n_prompts_total": run.contexts,
        "n_tokens_in_prompt": run.context_len,
        "dataset": run.dataset,
        "activations": acts,
    }
    check_record("saedashboard.feature", feature)
    return feature


def write_saedashboard(run: ExportRun, out: str | Path, sae_set: str, batch_size: int = 1024) -> list[Path]:
    """Write `run`'s latents as `out/batch-N.json`, `batch_size` latents each; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    features: list[dict[str, Any]] = []

    def flush() -> None:
        body = {"model_id": run.model_id, "layer": run.layer, "sae_set": sae_set, "sae_id_suffix": None, "features": features}
        check_record("saedashboard.batch", body)
        path = out / f"batch-{len(written)}.json"
        path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        written.append(path)

    for latent in run.latents():
        features.append(_feature(run, latent))
        if len(features) >= batch_size:
            flush()
            features = []
    if features:
        flush()
    return written
