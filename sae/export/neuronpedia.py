"""`--format neuronpedia`: the layout of Neuronpedia's exports, which its admin panel imports.

    OUT/MODEL_ID/SOURCE_ID/{model,release,source,sourceset}.jsonl
    OUT/MODEL_ID/SOURCE_ID/features/batch-N.jsonl.gz      one Feature per latent
    OUT/MODEL_ID/SOURCE_ID/activations/batch-N.jsonl.gz   one Activation per stored context
    OUT/MODEL_ID/SOURCE_ID/explanations/batch-0.jsonl.gz  one Explanation per explained latent (when there are any)

SOURCE_ID is LAYER-SOURCE_SET, as Neuronpedia names sources. Every record is checked against `schema.SCHEMAS`
before it is written.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sae.export.records import ExportRun, record_id
from sae.export.schema import check_record

__all__ = ["write_neuronpedia"]


def _jsonl(path: Path, kind: str, records: list[dict[str, Any]], compress: bool) -> None:
    for rec in records:
        check_record(kind, rec)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text, compresslevel=5, mtime=0) if compress else text)


def _hist(latent: dict[str, Any]) -> tuple[list[float], list[float]]:
    counts = latent["hist"]["counts"]
    width = latent["hist"]["upper"] / max(len(counts), 1)
    return [float(c) for c in counts], [round((b + 0.5) * width, 6) for b in range(len(counts))]


def _notes(rec: dict[str, Any]) -> str | None:
    scores = rec.get("scores") or {}
    parts = [f"saekit autointerp, prompts {rec.get('prompt_version')}"]
    for m, sc in sorted(scores.items()):
        ba = (sc or {}).get("balanced_accuracy")
        if ba is not None:
            parts.append(f"{m} balanced accuracy {ba:.3f}")
    return "; ".join(parts)


def write_neuronpedia(
    run: ExportRun,
    out: str | Path,
    source_set: str,
    creator_id: str,
    creator_name: str = "saekit",
    hf_repo: str | None = None,
    batch_size: int = 1024,
    created_at: str | None = None,
) -> list[Path]:
    """Write the export of `run` under `out`; returns the files written."""
    when = created_at or datetime.now(timezone.utc).isoformat()
    source_id = f"{run.layer}-{source_set}"
    base = Path(out) / run.model_id / source_id
    common = {"modelId": run.model_id, "layer": source_id}
    written: list[Path] = []

    def emit(rel: str, kind: str, records: list[dict[str, Any]], compress: bool = True) -> None:
        _jsonl(base / rel, kind, records, compress)
        written.append(base / rel)

    emit("model.jsonl", "neuronpedia.model", [
        {"id": run.model_id, "instruct": False, "creatorId": creator_id, "displayNameShort": run.model_id,
         "displayName": run.model_id, "dimension": run.cfg.get("d_in"), "createdAt": when, "updatedAt": when}
    ], compress=False)  # fmt: skip
    emit("release.jsonl", "neuronpedia.release", [
        {"name": source_set, "description": f"saekit dictionary at {run.hook}", "creatorName": creator_name,
         "creatorId": creator_id, "creatorNameShort": creator_name, "createdAt": when}
    ], compress=False)  # fmt: skip
    emit("sourceset.jsonl", "neuronpedia.sourceset", [
        {"modelId": run.model_id, "name": source_set, "creatorId": creator_id, "creatorName": creator_name,
         "releaseName": source_set, "description": f"{run.hook}, {run.stats.n_latents} latents",
         "visibility": "PUBLIC", "createdAt": when}
    ], compress=False)  # fmt: skip
    emit("source.jsonl", "neuronpedia.source", [
        {"id": source_id, "modelId": run.model_id, "setName": source_set, "creatorId": creator_id,
         "hasDashboards": True, "inferenceEnabled": False, "hfRepoId": hf_repo, "visibility": "PUBLIC",
         "num_prompts": run.contexts, "num_tokens_in_prompt": run.context_len, "dataset": run.dataset,
         "createdAt": when}
    ], compress=False)  # fmt: skip

    features: list[dict[str, Any]] = []
    activations: list[dict[str, Any]] = []
    batch = 0

    def flush() -> None:
        nonlocal batch, features, activations
        emit(f"features/batch-{batch}.jsonl.gz", "neuronpedia.feature", features)
        emit(f"activations/batch-{batch}.jsonl.gz", "neuronpedia.activation", activations)
        batch, features, activations = batch + 1, [], []

    for latent in run.latents():
        i = latent["id"]
        heights, values = _hist(latent)
        feature: dict[str, Any] = {
            **common, "index": str(i), "creatorId": creator_id, "createdAt": when, "maxActApprox": float(latent["max"]),
            "hasVector": False, "frac_nonzero": float(latent["frequency"]),
            "freq_hist_data_bar_heights": heights, "freq_hist_data_bar_values": values,
        }  # fmt: skip
        if run.logit_effects:
            feature["pos_str"] = run.stats.text([t for t, _ in latent.get("tokens_top", [])])
            feature["pos_values"] = [float(v) for _, v in latent.get("tokens_top", [])]
            feature["neg_str"] = run.stats.text([t for t, _ in latent.get("tokens_bottom", [])])
            feature["neg_values"] = [float(v) for _, v in latent.get("tokens_bottom", [])]
        features.append(feature)
        for k, ex in enumerate(run.examples(latent)):
            vals = [float(v) for v in ex.values]
            activations.append({
                "id": record_id(run.model_id, source_id, i, k), **common, "index": str(i), "tokens": ex.tokens,
                "values": vals, "maxValue": max(vals), "maxValueTokenIndex": vals.index(max(vals)), "minValue": min(vals),
                "creatorId": creator_id, "createdAt": when, "binMin": ex.bin_min, "binMax": ex.bin_max,
                "binContains": ex.bin_contains, "qualifyingTokenIndex": ex.peak,
            })  # fmt: skip
        if len(features) >= batch_size:
            flush()
    if features:
        flush()
    explained = [
        {
            "id": record_id(run.model_id, source_id, i, "explanation"),
            **common,
            "index": str(i),
            "description": rec["explanation"],
            "authorId": creator_id,
            "explanationModelName": rec.get("judge"),
            "notes": _notes(rec),
            "createdAt": when,
        }  # fmt: skip
        for i, rec in sorted(run.explanations.items())
        if rec.get("explanation")
    ]
    if explained:
        emit("explanations/batch-0.jsonl.gz", "neuronpedia.explanation", explained)
    return written
