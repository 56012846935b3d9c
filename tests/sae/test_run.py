"""The CLI end to end on a local JSONL corpus: harvest through a disk cache, train, evaluate, reuse the cache."""

import json

from sae.cli import main
from sae.model import SparseAutoencoder


def _corpus(path, n_docs=400):
    import pydoc_data.topics as topics

    texts = [t for t in topics.topics.values() if len(t) > 400][:n_docs]
    path.write_text("\n".join(json.dumps({"body": t}) for t in texts) + "\n")
    return path


def test_train_from_local_jsonl_through_a_cache(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "--dataset", str(corpus), "--text-column", "body", "--cache-dir", str(cache),
            "--context-len", "64", "--tokens", "8192", "--batch-size", "1024", "--n-latents", "256", "--k", "8",
            "--eval-tokens", "1024", "--pca-tokens", "2048", "--checkpoint-every", "4", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"fvu", "l0", "dead_fraction", "pca_fvu"} <= set(metrics) and 0 < metrics["l0"] <= 8
    assert metrics["train_tokens"] == 8192
    sae = SparseAutoencoder.load(out)
    assert sae.cfg.d_in == 384 and sae.cfg.hook_name == "blocks.3.hook_resid_pre"
    assert len((out / "log.jsonl").read_text().splitlines()) >= 1

    manifests = {p.parent.name: json.loads(p.read_text()) for p in cache.glob("*/manifest.json")}
    assert set(manifests) == {"train-8192", "train-2048"}  # held-out metrics run the model (spliced evaluation)
    train_m = manifests["train-8192"]
    assert train_m["dataset"].endswith(":train")
    assert train_m["text_column"] == "body"

    shards = sorted(cache.rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert main(argv[:-1] + [str(tmp_path / "again")]) == 0  # the same settings: read back, not harvested again
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["fvu"] == metrics["fvu"]
    capsys.readouterr()


def test_hub_dataset_without_a_test_split_fails_before_training(tmp_path, monkeypatch, capsys):
    import datasets

    def fake(path, name=None, split=None, streaming=False, **kw):
        if split != "train":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'train\'].')
        return datasets.Dataset.from_dict({"text": ["some words of text"] * 200})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "someone/train-only", "--tokens", "4096", "--batch-size", "1024",
                 "--n-latents", "64", "--k", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "'someone/train-only' has no usable 'test' split" in err and 'Unknown split "test"' in err
    assert not (out / "sae_weights.safetensors").exists() and not (out / "checkpoints").exists()
