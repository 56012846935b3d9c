"""Property-based tests (hypothesis) of the parts that take outside input: configs, cfg.json, text, cache manifests.

Each property says which exceptions are allowed: a config or file a user wrote by hand may be refused, but only
with the project's clear error type, never with a TypeError or KeyError from deep inside.
"""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from activations import ActivationStream, CacheError
from activations.cache import FORMAT
from activations.text import pack_contexts
from sae.config import SAEConfig
from sae.families import FAMILIES
from sae.formats.saekit import read_cfg
from sae.formats.saelens import CFG_FILE

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6
)
option_names = sorted({name for fam in FAMILIES.values() for name in fam.option_names} | {"zz"})
options = st.dictionaries(st.sampled_from(option_names), json_values, max_size=3)
config_dicts = st.fixed_dictionaries(
    {},
    optional={
        "d_in": scalars,
        "n_latents": scalars,
        "expansion": scalars,
        "k": scalars,
        "k_aux": scalars,
        "aux_coef": scalars,
        "dtype": st.sampled_from(["float32", "bfloat16", "float8"]) | scalars,
        "normalize": st.sampled_from(["none", "layer_norm", "zscore"]) | scalars,
        "family": st.sampled_from([*FAMILIES, "topq"]) | scalars,
        "options": options | json_values,
        "hook_name": scalars,
        "model_name": scalars,
        "extra": json_values,
    },
)


@FAST
@given(config_dicts)
def test_sae_config_from_any_dict_is_built_or_refused_with_a_value_error(d):
    try:
        cfg = SAEConfig.from_dict(d)
    except ValueError:
        return
    assert isinstance(cfg.n_latents, int) and cfg.n_latents >= 1
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg  # what is accepted round-trips


saelens_like = st.fixed_dictionaries(
    {},
    optional={
        "d_in": scalars,
        "d_sae": scalars,
        "architecture": st.sampled_from([*FAMILIES, "standard"]) | scalars,
        "k": scalars,
        "dtype": scalars,
        "metadata": json_values,
        "activation_fn_kwargs": json_values,
        "hook_point": scalars,
        "saekit": config_dicts | json_values,
    },
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


@FAST
@given(saelens_like | json_values | st.binary(max_size=40))
@example({"metadata": True})  # once crashed the SAELens reader with an AttributeError
@example({"d_in": 8, "d_sae": 16, "activation_fn_kwargs": [32]})
def test_cfg_json_of_any_content_is_read_or_refused_with_a_value_error(folder, content):
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (folder / CFG_FILE).write_bytes(data)
    try:
        cfg = read_cfg(folder)
    except ValueError:
        return
    assert isinstance(cfg, SAEConfig)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from activations.models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(st.text(max_size=40), max_size=8),
    context_len=st.integers(2, 12),
    specials=st.sampled_from([(101, 102), (None, 102), (101, None), (None, None)]),
    doc_batch=st.integers(1, 4),
)
def test_packing_any_unicode_loses_and_duplicates_no_token(tokenizer, docs, context_len, specials, doc_batch):
    bos, sep = specials
    stream = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if ids:
            stream += ids + ([sep] if sep is not None else [])
    body = context_len - (bos is not None)
    contexts = list(pack_contexts(iter(docs), tokenizer, context_len, bos, sep, doc_batch=doc_batch))
    assert len(contexts) == len(stream) // body
    assert all(c.shape == (context_len,) for c in contexts)
    if bos is not None:
        assert all(int(c[0]) == bos for c in contexts)
    packed = [int(t) for c in contexts for t in c[context_len - body :]]
    assert packed == stream[: len(contexts) * body]  # in order, none lost or repeated; only the last partial dropped


@FAST
@given(st.binary(max_size=64) | st.text(max_size=30).map(str.encode))
def test_cache_manifest_of_any_bytes_is_refused_with_a_cache_error(folder, data):
    (folder / "manifest.json").write_bytes(data)
    with pytest.raises(CacheError):
        ActivationStream.from_cache(folder, batch_size=4)


manifests = st.fixed_dictionaries(
    {"format": st.just(FORMAT)},
    optional={
        "hooks": st.lists(st.sampled_from(["h", "g"]), max_size=2) | json_values,
        "model": st.just("m") | scalars,
        "d_in": st.fixed_dictionaries({"h": st.integers(0, 4)}) | json_values,
        "tokens": scalars,
        "complete": st.booleans() | scalars,
        "total_tokens": scalars,
        "shards": st.lists(
            st.fixed_dictionaries(
                {"file": st.sampled_from(["s.safetensors", "../x", ""]) | scalars},
                optional={"rows": scalars, "bytes": scalars, "sha256": scalars, "sums": json_values},
            ),
            max_size=2,
        )
        | json_values,
        "stats": st.fixed_dictionaries({"h": json_values}) | json_values,
    },
)


@FAST
@given(manifests)
def test_a_manifest_with_fields_of_any_type_is_refused_with_a_cache_error(folder, manifest):
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError):  # no shard file exists here, so nothing may be accepted
        ActivationStream.from_cache(folder, batch_size=4)
