"""The live stream: mixing, special tokens, determinism, resume, prefetch, stats, multi-hook, bad input."""

import itertools
import threading
import warnings

import pytest
import torch
from datasets import Dataset

from activations import ActivationStream, TextSource
from activations.text import pack_contexts

H2_POST, H3_PRE = "blocks.2.hook_resid_post", "blocks.3.hook_resid_pre"
B, TOTAL = 64, 64 * 60


def _stream(model, **kw):
    args = dict(
        hook=[H2_POST, H3_PRE], context_len=16, batch_size=B, total_tokens=TOTAL, seed=0, shuffle_contexts=160, progress=False
    )
    args.update(kw)
    return ActivationStream(model, **args)


@pytest.fixture(scope="module")
def live(minilm_hf):
    # the plain-HF adapter (twice as fast on CPU); the cache tests run the TransformerBridge one
    stream = _stream(minilm_hf)
    batches = list(stream.iter_with_contexts())
    return stream, batches


def test_shapes_dtype_and_count(live):
    stream, batches = live
    assert stream.d_in == 384 and stream.hooks == [H2_POST, H3_PRE]
    assert len(batches) == len(stream) == TOTAL // B
    for x, ctx in batches:
        assert set(x) == {H2_POST, H3_PRE}
        for t in x.values():
            assert t.shape == (B, 384) and t.dtype == torch.float32 and t.device.type == "cpu"
            assert not t.is_inference()  # usable in the trainer's autograd
        assert ctx.shape == (B,)


def test_multi_hook_rows_are_the_same_positions(live):
    # resid_post of block 2 is resid_pre of block 3: equal rows prove both hooks see one token set
    for x, _ in live[1]:
        torch.testing.assert_close(x[H2_POST], x[H3_PRE])


def test_every_batch_mixes_many_contexts(live):
    distinct = [len(set(ctx.tolist())) for _, ctx in live[1]]
    assert min(distinct) >= min(B, 64), distinct
    # and the stream is not in harvest order: context ids are spread over the pool
    first = live[1][0][1]
    assert first.max() - first.min() > 100


def test_mixing_large_batches(minilm):
    stream = ActivationStream(
        minilm, hook=H3_PRE, context_len=16, batch_size=256, total_tokens=1536, progress=False, shuffle_contexts=96
    )
    for _, ctx in stream.iter_with_contexts():
        assert len(set(ctx.tolist())) >= 64


def test_stats_match_yielded_vectors(live):
    stream, batches = live
    x = torch.cat([b[H3_PRE] for b, _ in batches]).double()
    s = stream.stats[H3_PRE]
    assert s["tokens"] == TOTAL == x.shape[0]
    assert s["mean_sq_norm"] == pytest.approx(x.pow(2).sum(1).mean().item(), rel=1e-6)
    torch.testing.assert_close(s["mean"], x.mean(0).float(), atol=1e-5, rtol=1e-5)


def test_deterministic_for_a_seed_with_or_without_prefetch(minilm_hf, live):
    again = list(itertools.islice(_stream(minilm_hf, prefetch=0).iter_with_contexts(), 15))
    for (a, ca), (b, cb) in zip(again, live[1][:15], strict=True):
        assert torch.equal(ca, cb) and torch.equal(a[H3_PRE], b[H3_PRE])
    other = next(iter(_stream(minilm_hf, seed=1)))
    assert not torch.equal(other[H3_PRE], live[1][0][0][H3_PRE])


def test_iter_from_matches_plain_iteration(minilm_hf, live):
    tail = list(itertools.islice(_stream(minilm_hf).iter_from(10), 3))
    for got, (want, _) in zip(tail, live[1][10:13], strict=True):
        assert torch.equal(got[H3_PRE], want[H3_PRE])


def test_forward_runs_on_a_background_thread(minilm, monkeypatch):
    threads = set()
    real = minilm.run

    def spy(tokens, hooks):
        threads.add(threading.current_thread().name)
        return real(tokens, hooks)

    stream = ActivationStream(minilm, hook=H3_PRE, context_len=32, batch_size=B, total_tokens=B * 4, progress=False, prefetch=2)
    monkeypatch.setattr(minilm, "run", spy)
    x = next(iter(stream))
    assert x.shape == (B, 384)
    assert threads == {"activation-prefetch"}


def _tiny_dataset():
    return Dataset.from_dict({"text": [f"Document number {i} says hello to the world and more." for i in range(30)]})


@pytest.mark.parametrize("exclude", [True, False])
def test_special_positions_dropped_when_asked(minilm, exclude):
    ds = _tiny_dataset()
    contexts = list(pack_contexts(ds["text"], minilm.tokenizer, 16, minilm.bos_token_id, minilm.sep_token_id))
    tokens = torch.stack(contexts)
    special = torch.tensor(sorted(minilm.special_token_ids))
    want = int((~torch.isin(tokens, special)).sum()) if exclude else tokens.numel()
    assert want < tokens.numel() or not exclude
    stream = ActivationStream(
        minilm,
        hook=H3_PRE,
        source=ds,
        context_len=16,
        batch_size=8,
        total_tokens=10**6,
        exclude_special_tokens=exclude,
        progress=False,
        prefetch=0,
    )
    with pytest.warns(UserWarning, match="ran out"):
        n = sum(x.shape[0] for x in stream)
    assert stream.stats["tokens"] == want and n == want // 8 * 8


def test_empty_dataset(minilm):
    with pytest.raises(ValueError, match="empty"):
        ActivationStream(minilm, source=Dataset.from_dict({"text": []}), progress=False)
    short = ActivationStream(
        minilm,
        hook=H3_PRE,
        source=Dataset.from_dict({"text": ["hi"]}),
        context_len=64,
        batch_size=8,
        total_tokens=100,
        progress=False,
    )
    with pytest.raises(ValueError, match="no context of 64 tokens"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(short)


def test_bad_arguments(minilm):
    with pytest.raises(ValueError, match="'nope'"):
        ActivationStream(minilm, source=TextSource(Dataset.from_dict({"text": ["a"]}), text_column="nope"))
    with pytest.raises(ValueError, match="context_len 1024.*512"):
        ActivationStream(minilm, context_len=1024)
    with pytest.raises(ValueError, match="close matches"):
        ActivationStream(minilm, hook="blocks.3.resid_pre")
    with pytest.raises(ValueError, match=r"\[batch, pos, d\]"):
        ActivationStream(minilm, hook="blocks.1.attn.hook_pattern")
    with pytest.raises(ValueError, match="batch_size"):
        ActivationStream(minilm, batch_size=0)
