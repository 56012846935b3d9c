"""Shown and held-out examples are disjoint and seeded; negatives avoid the latent's contexts; fuzzing's wrong
marks sit on silent tokens; 'similar' negatives come from the neighbours' top contexts."""

import pytest
import torch

from sae.analysis.autointerp.sampling import (
    SampleSettings,
    detection_items,
    expected_contamination,
    fuzzing_items,
    latent_samples,
)


def test_split_is_disjoint_seeded_and_independent_of_the_batch(synthetic):
    stats, _, _ = synthetic
    a = latent_samples(stats, [0, 1, 2, 3], seed=3)
    b = latent_samples(stats, [2], seed=3)
    assert a[2] == b[2]
    assert latent_samples(stats, [2], seed=4)[2] != b[2]
    for s in a.values():
        shown = {e.key for e in s.explain}
        assert not shown & {e.key for e in s.positives}
        assert sum(e.source == "top" for e in s.explain) == 10 and sum(e.source == "quantile" for e in s.explain) == 10
        assert 5 <= len(s.positives) <= 20 and len(s.negatives) == len(s.positives)
        assert all(e.value > 0 and max(e.acts) > 0 for e in s.positives)
        assert max(e.value for e in s.explain) == stats.latent(s.latent)["top"][0]["value"]  # the best is shown


def test_negatives_are_windows_of_other_contexts(synthetic):
    stats, _, _ = synthetic
    s = latent_samples(stats, [5], SampleSettings(negatives=30))[5]
    used = {int(c) for c in stats["top.ctx"][5].tolist() + stats["sample.ctx"][5].tolist() if c >= 0}
    contexts = stats["contexts"]
    assert len(s.negatives) == 30
    for e in s.negatives:
        assert e.value == 0 and not any(e.acts) and len(e.ids) <= 13
        rows = [c for c in range(contexts.shape[0]) if c not in used]
        assert any(  # the window is found in a context without an example of the latent
            contexts[c, p : p + len(e.ids)].tolist() == list(e.ids)
            for c in rows
            for p in range(contexts.shape[1] - len(e.ids) + 1)
        )
    assert 0 < expected_contamination(0.01, 13) < 0.13


def test_fuzzing_items_mark_silent_tokens_as_wrong(synthetic):
    stats, _, _ = synthetic
    s = latent_samples(stats, [1])[1]
    items = fuzzing_items(s, seed=0)
    assert len(items) == 2 * len(s.positives)
    for it in items:
        firing = [a > 0 for a in it.example.acts]
        if it.label:
            assert list(it.marks) == firing
        else:
            assert sum(it.marks) == min(sum(firing), firing.count(False))
            assert not any(m and f for m, f in zip(it.marks, firing))
    assert fuzzing_items(s, seed=0) == items
    det = detection_items(s, seed=0)
    assert sum(it.label for it in det) == len(s.positives) and all(it.marks is None for it in det)


def test_similar_negatives_need_the_decoder_and_come_from_neighbours(synthetic):
    stats, truth, sae = synthetic
    settings = SampleSettings(negative_source="similar", similar_latents=2)
    with pytest.raises(ValueError, match="decoder"):
        latent_samples(stats, [0], settings)
    s = latent_samples(stats, [0], settings, decoder=sae.W_dec)[0]
    d = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = d @ d[0]
    cos[0] = -2
    near = cos.topk(2).indices.tolist()
    neighbour_windows = {tuple(e["ids"]) for j in near for e in stats.latent(j)["top"]}
    from_near = [e for e in s.negatives if e.source == "similar"]
    assert from_near and all(e.ids in neighbour_windows or len(e.ids) < 13 for e in from_near)
    with pytest.raises(ValueError, match="negative_source"):
        SampleSettings(negative_source="nearby")
