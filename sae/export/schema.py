"""The record layouts the exports write, and a check of each record against them.

Transcribed from the formats' own definitions:
- Neuronpedia's exports (https://docs.neuronpedia.org/api-and-data/exports: `MODEL/SOURCE/{features,activations,
  explanations}/batch-N.jsonl.gz` plus `model.jsonl`, `release.jsonl`, `source.jsonl`, `sourceset.jsonl`), whose
  records are the dataclasses of neuronpedia's `utils/neuronpedia-utils/neuronpedia_utils/db_models/` (Feature,
  Activation, Explanation, Model, Source, SourceSet, SourceRelease), field for field;
- SAEDashboard's Neuronpedia batch files (`batch-N.json`, what its `NeuronpediaRunner` writes and Neuronpedia's
  `convert-saedashboard-to-neuronpedia-export.py` reads): `NeuronpediaDashboardBatch`, `...Feature` and
  `...Activation` of `sae_dashboard/neuronpedia/neuronpedia_dashboard.py`, plus the `qualifying_token_index` and
  `sae_id_suffix` that converter reads.

A field is (type, required); `check_record` refuses a missing required field, an unknown field and a value of the
wrong type (None only where the field is optional), so an export never writes what its importer would reject.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "check_record"]

_S, _I, _F, _B = "str", "int", "float", "bool"
_LS, _LI, _LF = "list[str]", "list[int]", "list[float]"


def _opt(kind: str) -> tuple[str, bool]:
    return kind, False


def _req(kind: str) -> tuple[str, bool]:
    return kind, True


_NP_FEATURE_LISTS = {
    name: _opt(kind)
    for name, kind in {
        "topkCosSimIndices": _LI,
        "topkCosSimValues": _LF,
        "neuron_alignment_indices": _LI,
        "neuron_alignment_values": _LF,
        "neuron_alignment_l1": _LF,
        "correlated_neurons_indices": _LI,
        "correlated_neurons_pearson": _LF,
        "correlated_neurons_l1": _LF,
        "correlated_features_indices": _LI,
        "correlated_features_pearson": _LF,
        "correlated_features_l1": _LF,
        "neg_str": _LS,
        "neg_values": _LF,
        "pos_str": _LS,
        "pos_values": _LF,
        "freq_hist_data_bar_heights": _LF,
        "freq_hist_data_bar_values": _LF,
        "logits_hist_data_bar_heights": _LF,
        "logits_hist_data_bar_values": _LF,
        "decoder_weights_dist": _LF,
    }.items()
}

SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    "neuronpedia.feature": {
        "modelId": _req(_S),
        "layer": _req(_S),
        "index": _req(_S),
        "creatorId": _opt(_S),
        "createdAt": _opt(_S),
        "maxActApprox": _opt(_F),
        "hasVector": _opt(_B),
        "vector": _opt(_LF),
        "vectorLabel": _opt(_S),
        "vectorDefaultSteerStrength": _opt(_F),
        "hookName": _opt(_S),
        "frac_nonzero": _opt(_F),
        **_NP_FEATURE_LISTS,
    },
    "neuronpedia.activation": {
        "id": _req(_S),
        "tokens": _req(_LS),
        "index": _req(_S),
        "layer": _req(_S),
        "modelId": _req(_S),
        "maxValue": _req(_F),
        "maxValueTokenIndex": _req(_I),
        "minValue": _req(_F),
        "values": _req(_LF),
        "creatorId": _req(_S),
        "dataSource": _opt(_S),
        "dataIndex": _opt(_S),
        "dfaValues": _opt(_LF),
        "dfaTargetIndex": _opt(_I),
        "dfaMaxValue": _opt(_F),
        "createdAt": _opt(_S),
        "lossValues": _opt(_LF),
        "logitContributions": _opt(_S),
        "binMin": _opt(_F),
        "binMax": _opt(_F),
        "binContains": _opt(_F),
        "qualifyingTokenIndex": _opt(_I),
    },
    "neuronpedia.explanation": {
        "id": _req(_S),
        "modelId": _req(_S),
        "layer": _req(_S),
        "index": _req(_S),
        "description": _req(_S),
        "authorId": _req(_S),
        "embedding": _opt(_LF),
        "triggeredById": _opt(_S),
        "typeName": _opt(_S),
        "explanationModelName": _opt(_S),
        "notes": _opt(_S),
        "createdAt": _opt(_S),
    },
    "neuronpedia.model": {
        "id": _req(_S),
        "instruct": _req(_B),
        "creatorId": _req(_S),
        "displayNameShort": _opt(_S),
        "displayName": _opt(_S),
        "tlensId": _opt(_S),
        "dimension": _opt(_I),
        "visibility": _opt(_S),
        "defaultSourceSetName": _opt(_S),
        "defaultSourceId": _opt(_S),
        "inferenceEnabled": _opt(_B),
        "layers": _opt(_I),
        "neuronsPerLayer": _opt(_I),
        "createdAt": _opt(_S),
        "owner": _opt(_S),
        "updatedAt": _opt(_S),
        "website": _opt(_S),
    },
    "neuronpedia.source": {
        "id": _req(_S),
        "modelId": _req(_S),
        "setName": _req(_S),
        "creatorId": _req(_S),
        "hasDashboards": _opt(_B),
        "inferenceEnabled": _opt(_B),
        "inferenceHosts": _opt(_LS),
        "saelensConfig": _opt(_S),
        "saelensRelease": _opt(_S),
        "saelensSaeId": _opt(_S),
        "hfRepoId": _opt(_S),
        "hfFolderId": _opt(_S),
        "visibility": _opt(_S),
        "defaultOfModelId": _opt(_S),
        "hasUmap": _opt(_B),
        "hasUmapLogSparsity": _opt(_B),
        "hasUmapClusters": _opt(_B),
        "num_prompts": _opt(_I),
        "num_tokens_in_prompt": _opt(_I),
        "dataset": _opt(_S),
        "notes": _opt(_S),
        "createdAt": _opt(_S),
    },
    "neuronpedia.sourceset": {
        "modelId": _req(_S),
        "name": _req(_S),
        "creatorId": _req(_S),
        "hasDashboards": _opt(_B),
        "visibility": _opt(_S),
        "description": _opt(_S),
        "type": _opt(_S),
        "creatorName": _opt(_S),
        "urls": _opt(_LS),
        "creatorEmail": _opt(_S),
        "releaseName": _opt(_S),
        "defaultOfModelId": _opt(_S),
        "defaultRange": _opt(_I),
        "defaultShowBreaks": _opt(_B),
        "showDfa": _opt(_B),
        "showCorrelated": _opt(_B),
        "showHeadAttribution": _opt(_B),
        "showUmap": _opt(_B),
        "createdAt": _opt(_S),
    },
    "neuronpedia.release": {
        "name": _req(_S),
        "description": _req(_S),
        "creatorName": _req(_S),
        "creatorId": _req(_S),
        "visibility": _opt(_S),
        "isNewUi": _opt(_B),
        "featured": _opt(_B),
        "descriptionShort": _opt(_S),
        "urls": _opt(_LS),
        "creatorEmail": _opt(_S),
        "creatorNameShort": _opt(_S),
        "defaultSourceSetName": _opt(_S),
        "defaultSourceId": _opt(_S),
        "defaultUmapSourceIds": _opt(_LS),
        "createdAt": _opt(_S),
    },
    "saedashboard.batch": {
        "model_id": _req(_S),
        "layer": _req(_I),
        "sae_set": _req(_S),
        "sae_id_suffix": _opt(_S),
        "features": _req("list[dict]"),
    },
    "saedashboard.feature": {
        "feature_index": _req(_I),
        **{k: _req(kind) for k, (kind, _) in _NP_FEATURE_LISTS.items() if not k.startswith("topk")},
        "frac_nonzero": _req(_F),
        "n_prompts_total": _req(_I),
        "n_tokens_in_prompt": _req(_I),
        "dataset": _req(_S),
        "activations": _req("list[dict]"),
    },
    "saedashboard.activation": {
        "bin_min": _req(_F),
        "bin_max": _req(_F),
        "bin_contains": _req(_F),
        "tokens": _req(_LS),
        "values": _req(_LF),
        "qualifying_token_index": _opt(_I),
        "dfa_values": _opt(_LF),
        "dfa_maxValue": _opt(_F),
        "dfa_targetIndex": _opt(_I),
    },
}


def _is(kind: str, value: Any) -> bool:
    scalar = {
        _S: lambda v: isinstance(v, str),
        _I: lambda v: isinstance(v, int) and not isinstance(v, bool),
        _F: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        _B: lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, dict),
    }
    if kind.startswith("list["):
        inner = kind[5:-1]
        return isinstance(value, list) and all(scalar[inner](v) for v in value)
    return scalar[kind](value)


def check_record(kind: str, record: dict[str, Any]) -> None:
    """Raise ValueError naming the field when `record` does not fit the layout `kind` (a key of SCHEMAS)."""
    schema = SCHEMAS[kind]
    unknown = sorted(set(record) - set(schema))
    if unknown:
        raise ValueError(f"{kind} record has fields the format does not define: {unknown}")
    for name, (ftype, required) in schema.items():
        if name not in record:
            if required:
                raise ValueError(f"{kind} record lacks the required field {name!r}")
            continue
        value = record[name]
        if value is None and not required:
            continue
        if not _is(ftype, value):
            raise ValueError(f"{kind} field {name!r} must be {ftype}, got {type(value).__name__}: {value!r}"[:300])
