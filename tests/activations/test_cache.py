"""The disk cache: manifest, memory-mapped reads, exact resume, refusals, corrupt shards."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import activations.cache as cache
from activations import ActivationStream, CacheError

H2_POST, H3_PRE = "blocks.2.hook_resid_post", "blocks.3.hook_resid_pre"
B, TOTAL = 64, 1500


def _stream(model, cache_dir, **kw):
    args = dict(
        hook=[H2_POST, H3_PRE],
        context_len=16,
        batch_size=B,
        total_tokens=TOTAL,
        seed=0,
        cache_dir=cache_dir,
        shard_tokens=480,
        progress=False,
    )
    args.update(kw)
    return ActivationStream(model, **args)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def full(minilm, tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    _stream(minilm, d).harvest()
    return d


def test_manifest_records_what_was_harvested(full):
    m = json.loads((full / "manifest.json").read_text())
    assert m["complete"] and m["model"] == "minilm" and m["hooks"] == [H2_POST, H3_PRE]
    assert m["dataset"].startswith("embedded") and m["dtype"] == "float32" and m["tokens"] == TOTAL
    assert m["d_in"] == {H2_POST: 384, H3_PRE: 384}
    assert len(m["shards"]) >= 3 and sum(s["rows"] for s in m["shards"]) == TOTAL
    x = torch.cat([load_file(str(full / s["file"]))[H3_PRE] for s in m["shards"]]).double()
    st = m["stats"][H3_PRE]
    assert st["tokens"] == TOTAL
    assert st["mean_sq_norm"] == pytest.approx(x.pow(2).sum(1).mean().item(), rel=1e-9)
    np.testing.assert_allclose(st["mean"], x.mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_from_cache_reads_memory_mapped_and_matches_the_cached_stream(minilm, full):
    reader = ActivationStream.from_cache(full, batch_size=B, seed=0)
    assert isinstance(reader.shards[0].arrays[H3_PRE], np.memmap)
    assert reader.d_in == 384 and len(reader) == TOTAL // B
    assert reader.stats[H3_PRE]["tokens"] == TOTAL
    batches = list(reader)
    live = list(_stream(minilm, full))  # same cache_dir: reads the finished cache, no forward
    assert len(batches) == len(live) == TOTAL // B
    for a, b in zip(batches, live):
        assert a[H3_PRE].shape == (B, 384) and a[H3_PRE].dtype == torch.float32
        assert torch.equal(a[H3_PRE], b[H3_PRE]) and torch.equal(a[H2_POST], b[H2_POST])
    single = ActivationStream.from_cache(full, batch_size=B, seed=0, hook=H3_PRE)
    assert torch.equal(next(iter(single)), batches[0][H3_PRE])


def test_cache_batches_mix_contexts_and_resume_exactly(full):
    reader = ActivationStream.from_cache(full, batch_size=B, seed=3, hook=H3_PRE, epochs=3)
    both = list(reader.iter_with_contexts())
    assert len(both) == 3 * (TOTAL // B)
    assert min(len(set(c.tolist())) for _, c in both) >= 64
    plain = [x for x, _ in both]
    for start in (0, 7, TOTAL // B + 2):
        got = list(itertools.islice(reader.iter_from(start), 2))
        assert all(torch.equal(g, w) for g, w in zip(got, plain[start : start + 2]))
    assert not torch.equal(plain[0], plain[TOTAL // B])  # a fresh order each epoch
    other = next(iter(ActivationStream.from_cache(full, batch_size=B, seed=4, hook=H3_PRE)))
    assert not torch.equal(other, plain[0])
    endless = ActivationStream.from_cache(full, batch_size=B, seed=3, hook=H3_PRE, epochs=None)
    assert len(list(itertools.islice(endless, 4 * (TOTAL // B)))) == 4 * (TOTAL // B)


def test_killed_harvest_resumes_to_the_same_cache(minilm, full, tmp_path, monkeypatch):
    real = cache._atomic_write

    def dies_at_third_shard(path, data):
        if path.name == "shard_00002.safetensors":
            (path.parent / (path.name + ".tmp999")).write_bytes(data[: len(data) // 2])  # half-written
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(cache, "_atomic_write", dies_at_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _stream(minilm, tmp_path).harvest()
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert not m["complete"] and len(m["shards"]) == 2
    with pytest.raises(CacheError, match="incomplete"):
        ActivationStream.from_cache(tmp_path, batch_size=B)
    monkeypatch.setattr(cache, "_atomic_write", real)
    _stream(minilm, tmp_path).harvest()
    assert _files(tmp_path) == _files(full)


def test_damaged_listed_shard_is_harvested_again(minilm, full, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(full, d)
    m = json.loads((d / "manifest.json").read_text())
    m["complete"] = False
    (d / "manifest.json").write_text(json.dumps(m))
    shard = d / m["shards"][-1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(UserWarning, match=shard.name):
        _stream(minilm, d).harvest()
    assert _files(d) == _files(full)


def test_other_model_or_hook_is_refused(minilm, minilm_hf, full):
    with pytest.raises(CacheError, match="hooks"):
        _stream(minilm, full, hook=["blocks.1.hook_resid_post"])
    with pytest.raises(CacheError, match="model"):
        _stream(minilm_hf, full)
    with pytest.raises(CacheError, match="context_len"):
        _stream(minilm, full, context_len=32)
    with pytest.raises(CacheError, match="not 'gpt2'"):
        ActivationStream.from_cache(full, batch_size=B, expect_model="gpt2")
    with pytest.raises(CacheError, match="blocks.4.hook_resid_pre"):
        ActivationStream.from_cache(full, batch_size=B, hook="blocks.4.hook_resid_pre")


def test_corrupt_or_half_written_shard_is_named(full, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(full, d)
    flipped = d / "shard_00001.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-10] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard_00001.safetensors.*corrupt"):
        ActivationStream.from_cache(d, batch_size=B)
    cut = d / "shard_00000.safetensors"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(CacheError, match="shard_00000.safetensors.*half-written"):
        ActivationStream.from_cache(d, batch_size=B, verify=False)
    with pytest.raises(CacheError, match="no activation cache"):
        ActivationStream.from_cache(tmp_path / "nothing", batch_size=B)


def test_trainer_consumes_cache_and_live_streams_unchanged(minilm, full, tmp_path):
    sae = pytest.importorskip("sae")
    from sae.train import train

    cfg = sae.SAEConfig(d_in=384, n_latents=256, k=8)
    tcfg = sae.TrainConfig(tokens=8 * B, batch_size=B, init_tokens=B, checkpoint_every=4, log_every=4)
    reader = ActivationStream.from_cache(full, batch_size=B, seed=0, hook=H3_PRE)
    res = train(sae.SparseAutoencoder(cfg), reader, tcfg, out_dir=tmp_path / "a")
    assert res.steps == 8
    live = ActivationStream(
        minilm, hook=H3_PRE, context_len=16, batch_size=B, total_tokens=9 * B, progress=False, shuffle_contexts=40
    )
    assert train(sae.SparseAutoencoder(cfg), live, tcfg).steps == 8


_KILLED_CHILD = """
import sys, time
import activations.cache as cache
from activations import ActivationStream
real = cache._atomic_write
def slow(path, data):
    real(path, data)
    if path.name == "shard_00001.safetensors":
        time.sleep(120)  # the parent kills us here
cache._atomic_write = slow
ActivationStream("minilm", hook=[{h2!r}, {h3!r}], context_len=16, batch_size={b}, total_tokens={total}, seed=0,
                 cache_dir=sys.argv[1], shard_tokens=480, progress=False).harvest()
"""


@pytest.mark.slow
def test_sigkilled_harvest_resumes_to_the_same_cache(minilm, full, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = _KILLED_CHILD.format(h2=H2_POST, h3=H3_PRE, b=B, total=TOTAL)
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "shard_00001.safetensors").exists():
            assert child.poll() is None and time.time() < deadline, "child ended before its second shard"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    _stream(minilm, tmp_path).harvest()
    assert _files(tmp_path) == _files(full)


def test_a_corrupt_shard_of_a_finished_cache_is_refused_on_every_read(minilm, full, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(full, d)
    assert len(list(_stream(minilm, d))) == TOTAL // B  # intact: read back
    shard = d / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-400:] = np.full(100, 1e30, dtype=np.float32).tobytes()  # huge values, the same file size
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard_00001\.safetensors.*does not match its checksum"):
        list(_stream(minilm, d))  # the path `--cache-dir` takes, not only from_cache


def _docs(start, n):
    import pydoc_data.topics as topics

    texts = [" ".join(t.split()) for t in topics.topics.values() if len(t) > 300]
    return "\n".join(texts[start : start + n]) + "\n"


def test_a_cache_of_an_edited_local_corpus_is_harvested_again(minilm, tmp_path):
    corpus, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    kw = dict(hook=H3_PRE, source=str(corpus), split="all", total_tokens=4 * B)
    corpus.write_text(_docs(0, 6))
    before = list(_stream(minilm, cache, **kw))
    corpus.write_text(_docs(6, 6))  # edited in place: same path, other text
    with pytest.warns(UserWarning, match="changed since it was harvested.*harvesting them again"):
        after = list(_stream(minilm, cache, **kw))
    fresh = list(_stream(minilm, tmp_path / "fresh", **kw))
    assert all(torch.equal(a, f) for a, f in zip(after, fresh)) and len(after) == len(fresh) == 4
    assert not torch.equal(after[0], before[0])


def test_cache_files_get_the_permissions_the_umask_gives(full):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in full.iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes
