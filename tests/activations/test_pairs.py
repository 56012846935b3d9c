"""Paired harvest for transcoders: (x, y) of the same token positions from one forward pass, equal row for row
to separate single-hook harvests; CLT stacks equal to their per-layer pairs; the stream's API for pairs."""

import itertools

import pytest
import torch

from activations import ActivationStream, HookPoints

X, Y = "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out"
WIDE = "encoder.layer.1.intermediate"  # the MLP's hidden layer: 1536 wide, so d_out != d_in
B, TOTAL = 64, 64 * 12
IN = [f"blocks.{i}.hook_mlp_in" for i in range(3)]
OUT = [f"blocks.{i}.hook_mlp_out" for i in range(3)]


def _stream(model, hook, **kw):
    args = dict(context_len=16, batch_size=B, total_tokens=TOTAL, seed=0, shuffle_contexts=24, progress=False)
    return ActivationStream(model, hook=hook, **{**args, **kw})


def _batches(stream):
    return list(stream.iter_with_contexts())


@pytest.fixture(scope="module")
def singles(minilm_hf):
    """Separate harvests of one hook each (and one of the CLT's hooks, whose rows are the same positions)."""
    out = {h: _batches(_stream(minilm_hf, h)) for h in (X, Y, WIDE)}
    layers = _batches(_stream(minilm_hf, IN + OUT))
    out.update({h: [(batch[h], ctx) for batch, ctx in layers] for h in IN + OUT})
    return out


def test_pairs_equal_single_hook_harvests_row_for_row(minilm_hf, singles):
    stream = _stream(minilm_hf, X, target=WIDE)
    assert (stream.d_in, stream.d_out, stream.hooks, stream.targets) == (384, 1536, [X], [WIDE])
    got = _batches(stream)
    assert len(got) == len(stream) == TOTAL // B
    for ((x, y), ctx), (sx, sctx), (sy, _) in zip(got, singles[X], singles[WIDE], strict=True):
        assert x.shape == (B, 384) and y.shape == (B, 1536) and x.dtype == y.dtype == torch.float32
        assert torch.equal(ctx, sctx) and torch.equal(x, sx) and torch.equal(y, sy)
    sx_stats, sy_stats = stream.stats
    for s, h in ((sx_stats, X), (sy_stats, WIDE)):
        one = _stream(minilm_hf, h)
        list(one)
        assert s["tokens"] == one.stats["tokens"] == TOTAL
        assert s["mean_sq_norm"] == pytest.approx(one.stats["mean_sq_norm"], rel=1e-12)
        assert torch.equal(s["mean"], one.stats["mean"])


def test_several_pairs_are_dicts_of_pairs(minilm_hf, singles):
    stream = _stream(minilm_hf, [X, IN[0]], target=[Y, OUT[0]])
    for (batch, _), *ref in zip(_batches(stream), singles[X], singles[Y], singles[IN[0]], singles[OUT[0]], strict=True):
        assert list(batch) == [X, IN[0]]
        assert torch.equal(batch[X][0], ref[0][0]) and torch.equal(batch[X][1], ref[1][0])
        assert torch.equal(batch[IN[0]][0], ref[2][0]) and torch.equal(batch[IN[0]][1], ref[3][0])
    assert set(stream.stats) == {X, IN[0]} and len(stream.stats[X]) == 2


def test_a_clt_stack_equals_its_per_layer_pairs(minilm_hf, singles):
    stream = _stream(minilm_hf, HookPoints(layers="0-2", clt=True))
    explicit = _stream(minilm_hf, IN, target=OUT, stack=True)
    got = _batches(stream)
    for ((x, y), ctx), ((ex, ey), ectx) in zip(got, _batches(explicit), strict=True):
        assert x.shape == y.shape == (B, 3, 384)
        assert torch.equal(x, ex) and torch.equal(y, ey) and torch.equal(ctx, ectx)
    for i, ((x, y), _) in enumerate(got):
        for layer in range(3):
            assert torch.equal(x[:, layer], singles[IN[layer]][i][0]) and torch.equal(y[:, layer], singles[OUT[layer]][i][0])
    sx, sy = stream.stats
    assert sx["mean"].shape == sy["mean"].shape == (3, 384) and sx["mean_sq_norm"].shape == (3,)
    ys = torch.cat([y for (_, y), _ in got]).double()
    torch.testing.assert_close(sy["mean_sq_norm"], ys.pow(2).sum(-1).mean(0), rtol=1e-9, atol=0)
    torch.testing.assert_close(sy["mean"], ys.mean(0).float(), rtol=1e-5, atol=1e-6)


def test_resume_prefetch_and_rank_share_work_for_pairs(minilm_hf, singles):
    stream = _stream(minilm_hf, X, target=Y, prefetch=0)
    plain = list(stream)
    again = list(itertools.islice(_stream(minilm_hf, X, target=Y).iter_from(5), 2))  # prefetched, from batch 5
    for (x, y), (px, py) in zip(again, plain[5:7], strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)
    shared = _batches(_stream(minilm_hf, X, target=Y, rank_share=(1, 2), total_tokens=4 * B))
    single = _batches(_stream(minilm_hf, Y, rank_share=(1, 2), total_tokens=4 * B))
    for ((_, y), ctx), (sy, sctx) in zip(shared, single, strict=True):
        assert torch.equal(y, sy) and torch.equal(ctx, sctx)
    kw = dict(exclude_special_tokens=False, total_tokens=2 * B)
    kept, kept_x = _batches(_stream(minilm_hf, X, target=Y, **kw)), _batches(_stream(minilm_hf, X, **kw))
    assert all(torch.equal(x, sx) for ((x, _), _), (sx, _) in zip(kept, kept_x, strict=True))


def test_the_forward_stops_after_the_last_layer_a_pair_needs(minilm):
    ran: list[int] = []
    handles = [blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, blk in enumerate(minilm.model.blocks)]
    try:
        list(_stream(minilm, "blocks.0.hook_mlp_in", target="blocks.1.hook_mlp_out", total_tokens=B))
    finally:
        for h in handles:
            h.remove()
    assert ran and max(ran) == 1, ran


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(hook=X, target=[Y]), "a name for a name, a list for a list"),
        (dict(hook=[X, IN[0]], target=[Y]), "pair 1:1"),
        (dict(hook=X, target=X), "its own input hook"),
        (dict(hook=IN, stack=True), "give the target hooks too"),
        (dict(hook=HookPoints([X], targets=[Y]), target=Y), "give its targets there"),
        (dict(hook=X, target=Y, cache_dtype=torch.bfloat16), "give a cache_dir too"),
        (dict(hook=X, target=Y, cache_dtype=torch.int8), "cache_dtype must be"),
        (dict(hook=[X, Y], target=[OUT[1], WIDE], stack=True), "one width"),
        (dict(hook=X, target="blocks.1.mlp.hook_ot"), "unknown hook point 'blocks.1.mlp.hook_ot'.*blocks.1.mlp.hook_out"),
    ],
)
def test_bad_pairs_are_refused(minilm_hf, kw, message):
    with pytest.raises(ValueError, match=message):
        ActivationStream(minilm_hf, context_len=16, progress=False, **kw)
