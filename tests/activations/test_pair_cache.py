"""The disk cache for transcoder pairs and CLT stacks: round trips (float32 exact, bf16 / fp16 within their
rounding, half the disk), exact resume of a killed harvest, and the refusals of a damaged pair cache."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import activations.cache as cache
from activations import ActivationStream, CacheError, HookPoints

X, Y = "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out"
B, TOTAL = 64, 64 * 10


def _stream(model, cache_dir, hook=X, **kw):
    args = dict(context_len=16, batch_size=B, total_tokens=TOTAL, seed=0, shard_tokens=200, progress=False)
    return ActivationStream(model, hook=hook, cache_dir=cache_dir, **{**args, **kw})


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _rows(batches):
    """All rows of (x, y) batches in a canonical order, to compare harvests mixed in different orders."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    key = torch.argsort(x.double() @ torch.linspace(1, 2, x.shape[-1], dtype=torch.float64))
    return x[key], y[key]


@pytest.fixture(scope="module")
def caches(minilm_hf, tmp_path_factory):
    out = {}
    for name in ("float32", "bfloat16", "float16"):
        d = tmp_path_factory.mktemp(name)
        _stream(minilm_hf, d, target=Y, cache_dtype=getattr(torch, name)).harvest()
        out[name] = d
    return out


def test_a_pair_cache_round_trips_exactly_and_records_its_pairs(minilm_hf, caches):
    d = caches["float32"]
    m = json.loads((d / "manifest.json").read_text())
    assert m["hooks"] == [X, Y] and m["pairs"] == [[X, Y]] and m["stack"] is False and m["dtype"] == "float32"
    reader = ActivationStream.from_cache(d, batch_size=B, seed=0)
    assert (reader.d_in, reader.d_out, reader.hooks, reader.targets) == (384, 384, [X], [Y])
    cached = list(reader)
    assert len(cached) == TOTAL // B and all(isinstance(b, tuple) and len(b) == 2 for b in cached)
    again = list(_stream(minilm_hf, d, target=Y))  # the stream with this cache_dir reads it back
    assert all(torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]) for a, c in zip(again, cached, strict=True))
    live = list(ActivationStream(minilm_hf, hook=X, target=Y, context_len=16, batch_size=B, total_tokens=TOTAL, progress=False))
    for got, want in zip(_rows(cached), _rows(live), strict=True):
        assert torch.equal(got, want)  # float32: bit for bit what the live stream harvests
    one_half = next(iter(ActivationStream.from_cache(d, batch_size=B, seed=0, hook=Y)))
    assert torch.equal(one_half, cached[0][1])
    sx, sy = reader.stats
    x, y = _rows(cached)
    assert sx["tokens"] == sy["tokens"] == TOTAL
    assert sy["mean_sq_norm"] == pytest.approx(y.double().pow(2).sum(1).mean().item(), rel=1e-9)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_caches_halve_the_disk_and_read_back_float32(caches, dtype):
    full, half = caches["float32"], caches[dtype]
    assert json.loads((half / "manifest.json").read_text())["dtype"] == dtype
    size = {d: sum(p.stat().st_size for p in d.glob("shard_*")) for d in (full, half)}
    assert size[half] < 0.56 * size[full]
    exact = list(ActivationStream.from_cache(full, batch_size=B, seed=2))
    for (hx, hy), (fx, fy) in zip(ActivationStream.from_cache(half, batch_size=B, seed=2), exact, strict=True):
        assert hx.dtype == torch.float32
        assert torch.equal(hx, fx.to(getattr(torch, dtype)).float()) and torch.equal(hy, fy.to(getattr(torch, dtype)).float())
    stored = load_file(str(half / "shard_00000.safetensors"))
    assert stored[X].dtype == getattr(torch, dtype)


def test_a_cache_of_another_dtype_or_pairing_is_refused(minilm_hf, caches):
    with pytest.raises(CacheError, match="dtype='float32'.*dtype='bfloat16'"):
        _stream(minilm_hf, caches["float32"], target=Y, cache_dtype=torch.bfloat16)
    with pytest.raises(CacheError, match="hooks"):
        _stream(minilm_hf, caches["float32"], target="blocks.2.mlp.hook_out")
    with pytest.raises(ValueError, match="give hook= too"):
        ActivationStream.from_cache(caches["float32"], batch_size=B, target=Y)


def test_a_clt_cache_holds_its_stack(minilm_hf, tmp_path):
    hooks = HookPoints(layers="0-1", clt=True)
    batches = list(_stream(minilm_hf, tmp_path, hook=hooks, cache_dtype=torch.bfloat16))
    assert batches[0][0].shape == batches[0][1].shape == (B, 2, 384)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["stack"] is True and m["pairs"] == [list(p) for p in hooks.pairs]
    reader = ActivationStream.from_cache(tmp_path, batch_size=B, seed=0)
    per_layer = ActivationStream.from_cache(
        tmp_path, batch_size=B, seed=0, hook=list(hooks.names), target=list(hooks.target_names)
    )
    for (x, y), pairs, (cx, cy) in zip(reader, per_layer, batches, strict=True):
        assert torch.equal(x, cx) and torch.equal(y, cy)
        for layer, h in enumerate(hooks.names):
            assert torch.equal(pairs[h][0], x[:, layer]) and torch.equal(pairs[h][1], y[:, layer])
    assert reader.stats[1]["mean"].shape == (2, 384)


def _rewrite_shard(d, name, change):
    """Replace shard `name`'s tensors by change(tensors), keeping the manifest's size and checksum consistent."""
    path = d / name
    tensors = change(load_file(str(path)))
    save_file(tensors, str(path))
    m = json.loads((d / "manifest.json").read_text())
    entry = next(e for e in m["shards"] if e["file"] == name)
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))


def test_a_pair_cache_whose_halves_disagree_is_refused(caches, tmp_path):
    short, wide = tmp_path / "short", tmp_path / "wide"
    for d in (short, wide):
        shutil.copytree(caches["float32"], d)
    _rewrite_shard(short, "shard_00001.safetensors", lambda t: {**t, Y: t[Y][:-5]})
    with pytest.raises(CacheError, match=r"shard_00001.*input 'blocks.1.mlp.hook_in' holds \d+ rows but target .* holds"):
        ActivationStream.from_cache(short, batch_size=B)
    _rewrite_shard(wide, "shard_00000.safetensors", lambda t: {**t, Y: torch.zeros(t[Y].shape[0], 7)})
    with pytest.raises(
        CacheError, match=r"shard_00000.*'blocks.1.mlp.hook_out' as F32 \[\d+, 7\], the manifest says \[\d+, 384\]"
    ):
        ActivationStream.from_cache(wide, batch_size=B)
    for edit, message in (
        (lambda m: m.update(pairs=[[X, "blocks.9.mlp.hook_out"]]), "damaged: pairs"),
        (lambda m: m.update(dtype="int8"), "damaged: dtype 'int8'"),
        (lambda m: m.update(version=2), "format version 2"),
    ):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(caches["float32"], bad)
        m = json.loads((bad / "manifest.json").read_text())
        edit(m)
        (bad / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(CacheError, match=message):
            ActivationStream.from_cache(bad, batch_size=B)


def test_a_clt_cache_of_two_widths_is_refused(minilm_hf, tmp_path):
    _stream(minilm_hf, tmp_path, hook=HookPoints(layers="0-1", clt=True)).harvest()
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["d_in"]["blocks.1.hook_mlp_out"] = 100
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="target hooks need one width"):
        ActivationStream.from_cache(tmp_path, batch_size=B)


def test_a_manifest_without_the_new_fields_reads_as_before(caches, tmp_path):
    d = tmp_path / "old"
    shutil.copytree(caches["float32"], d)
    m = json.loads((d / "manifest.json").read_text())
    for key in ("pairs", "stack", "dtype", "version"):
        m.pop(key)
    (d / "manifest.json").write_text(json.dumps(m))
    batch = next(iter(ActivationStream.from_cache(d, batch_size=B)))
    assert set(batch) == {X, Y} and batch[X].dtype == torch.float32  # every hook, as dicts


def test_a_killed_pair_harvest_resumes_to_the_same_cache(minilm_hf, caches, tmp_path, monkeypatch):
    real = cache._atomic_write

    def dies_at_third_shard(path, data):
        if path.name == "shard_00002.safetensors":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(cache, "_atomic_write", dies_at_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _stream(minilm_hf, tmp_path, target=Y, cache_dtype=torch.bfloat16).harvest()
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(cache, "_atomic_write", real)
    _stream(minilm_hf, tmp_path, target=Y, cache_dtype=torch.bfloat16).harvest()
    assert _files(tmp_path) == _files(caches["bfloat16"])


def test_float16_refuses_activations_beyond_its_range(minilm_hf, tmp_path):
    with minilm_hf.edit(Y, lambda a: a * 1e5):
        with pytest.raises(CacheError, match=r"'blocks.1.mlp.hook_out' has activations up to .* beyond float16's range"):
            _stream(minilm_hf, tmp_path, target=Y, cache_dtype=torch.float16).harvest()
