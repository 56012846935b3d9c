"""The CLI end to end on a local JSONL corpus: harvest through a disk cache, train, evaluate, reuse the cache."""

import json

import pytest
import torch

import activations
from sae.cli import main
from sae.model import SparseAutoencoder


@pytest.fixture(scope="module")
def minilm():
    return activations.load_model("minilm")


@pytest.fixture
def model_loads(monkeypatch, minilm):
    """The embedded model, loaded once for this file; records each load the CLI asks for."""
    calls = []

    def load(name, device="cpu", **kw):
        calls.append(name)
        return minilm

    monkeypatch.setattr(activations, "load_model", load)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI loads a model: what it checks must come first."""

    def load(*a, **kw):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(activations, "load_model", load)


def _corpus(path, n_docs=400):
    import pydoc_data.topics as topics

    texts = [t for t in topics.topics.values() if len(t) > 400][:n_docs]
    path.write_text("\n".join(json.dumps({"body": t}) for t in texts) + "\n")
    return path


@pytest.mark.slow
def test_train_from_local_jsonl_through_a_cache(tmp_path, capsys, model_loads):
    corpus = _corpus(tmp_path / "corpus.jsonl")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = [
        "train",
        "--dataset",
        str(corpus),
        "--text-column",
        "body",
        "--cache-dir",
        str(cache),
        "--context-len",
        "64",
        "--tokens",
        "8192",
        "--batch-size",
        "1024",
        "--n-latents",
        "256",
        "--k",
        "8",
        "--eval-tokens",
        "1024",
        "--pca-tokens",
        "2048",
        "--checkpoint-every",
        "4",
        "--out",
        str(out),
    ]
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


def test_hub_dataset_without_a_test_split_fails_before_training(tmp_path, monkeypatch, capsys, model_loads):
    import datasets

    def fake(path, name=None, split=None, streaming=False, **kw):
        if split != "train":
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train'].")
        return datasets.Dataset.from_dict({"text": ["some words of text"] * 200})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "someone/train-only",
            "--tokens",
            "4096",
            "--batch-size",
            "1024",
            "--n-latents",
            "64",
            "--k",
            "4",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "'someone/train-only' has no usable 'test' split" in err and 'Unknown split "test"' in err
    assert not out.exists()  # a failed run leaves no empty folder behind


def test_a_local_corpus_with_no_held_out_text_fails_before_training(tmp_path, capsys, model_loads):
    corpus = tmp_path / "one.txt"
    corpus.write_text("a single long document of plain words " * 400 + "\n")  # line 0: train; no test line
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            str(corpus),
            "--tokens",
            "4096",
            "--batch-size",
            "1024",
            "--n-latents",
            "64",
            "--k",
            "4",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "has no usable 'test' split" in err and "yields no context" in err
    assert not out.exists()


def test_more_tokens_than_a_countable_corpus_holds_fails_before_training(tmp_path, capsys, model_loads):
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "plain words of text " * 30 for i in range(40)) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(corpus), *_SMALL[2:], "--tokens", "1000000", "--k", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    held = int(err.split(" holds ")[1].split(" tokens")[0].replace(",", ""))
    assert 0 < held < 1_000_000 and "--tokens 1,000,000" in err and f"--harvest-tokens {held}" in err
    assert not out.exists()


_SMALL = ["--tokens", "4096", "--batch-size", "1024", "--n-latents", "64"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--k", "0"], "k=0 out of range"),
        (["--family", "topk", "--options", '{"m": 3}'], "unknown options ['m']"),
        (["--family", "topafa", "--k", "8"], "family 'topafa' chooses k per token"),
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--device", "tpu9"], "device 'tpu9'"),
        (["--context-len", "1"], "context_len must be an int >= 2"),
        (["--resume", "--overwrite"], "give one of them"),
        (["--dtype", "float16"], "--dtype float16 on the CPU"),
    ],
)
def test_bad_options_fail_in_one_line_before_the_model_loads(tmp_path, capsys, no_model, args, message):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    assert main(["train", *_SMALL, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_out_that_is_a_file_or_holds_a_finished_run_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("")
    assert main(["train", *_SMALL, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"fvu": 0.1}')
    assert main(["train", *_SMALL, "--out", str(run)]) == 2
    assert "pass --resume to continue the run in it, --overwrite to replace it" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == '{"fvu": 0.1}'


def test_a_non_utf8_corpus_names_the_file_and_byte_offset_before_the_model_loads(tmp_path, capsys, no_model):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\u00e9 ol\u00e9\n".encode("utf-8") * 3 + "na\u00efve\n".encode("latin-1"))
    assert main(["train", *_SMALL, "--dataset", str(corpus), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"dataset file {str(corpus)!r} is not UTF-8 text: byte offset {3 * 11 + 2}" in err


@pytest.mark.slow
def test_resume_refuses_other_data_and_a_multi_hook_run_verifies_its_cache(tmp_path, capsys, model_loads):
    """A resumed run must be the run it continues (data, dictionary, training), checked before the model loads;
    the shards of a several-hook cache are checked against their checksums, as a single hook's are."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    hooks = ["--hook", "blocks.1.hook_resid_pre", "--hook", "blocks.3.hook_resid_pre"]
    small = ["--tokens", "2048", "--batch-size", "1024", "--n-latents", "32", "--k", "4", "--eval-tokens", "512"]
    argv = ["train", *hooks, *small, "--pca-tokens", "1024", "--cache-dir", str(cache), "--context-len", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    identity = json.loads((out / "run.json").read_text())
    assert identity["data"]["hooks"] == ["blocks.1.hook_resid_pre", "blocks.3.hook_resid_pre"]
    assert identity["data"]["context_len"] == 64 and identity["dictionary"]["k"] == 4
    loads = len(model_loads)
    capsys.readouterr()

    changes = {
        ("--context-len", "32"): "data context_len: run 64, this run 32",
        ("--dataset-config", "wikitext-2-raw-v1"): "data dataset_config: run None, this run 'wikitext-2-raw-v1'",
        ("--harvest-tokens", "4096"): "data harvest_tokens: run 0, this run 4096",
        ("--k", "8"): "dictionary k: run 4, this run 8",
        ("--lr", "0.001"): "training lr: run None, this run 0.001",
    }
    for change, message in changes.items():
        swapped = list(argv)
        if change[0] in swapped:
            swapped[swapped.index(change[0]) + 1] = change[1]
        else:
            swapped += list(change)
        assert main([*swapped, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume the run in" in err and message in err, err
    assert len(model_loads) == loads  # every refusal came before the model loaded
    assert main([*argv, "--out", str(out), "--resume"]) == 0  # the same settings resume (a finished run: no steps)
    capsys.readouterr()

    shard = sorted((cache / "train-2048").glob("shard_*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-400:] = bytes(400)  # zeros over the last vectors: the same size, other content
    shard.write_bytes(bytes(data))
    assert main([*argv, "--out", str(out), "--overwrite"]) == 2
    assert "does not match its checksum" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, cause",
    [
        (["--hook", "blocks.3.hook_resid_prex"], "unknown hook point 'blocks.3.hook_resid_prex' for model 'minilm'"),
        (["--context-len", "1000"], "context_len 1000 is longer than the maximum context 512 of model 'minilm'"),
        (["--text-column", "body"], "text column 'body' not in"),
    ],
)
def test_a_bad_hook_context_or_column_is_named_as_itself_not_as_a_missing_test_split(tmp_path, capsys, model_loads, args, cause):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"plain words of a document {i} " * 20}) + "\n" for i in range(60)))
    out = tmp_path / "run"
    assert main(["train", *_SMALL, "--dataset", str(corpus), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert cause in err and "no usable 'test' split" not in err
    assert not out.exists()


def test_a_run_json_written_before_a_setting_existed_still_resumes(tmp_path):
    """Settings added after a run began are not in its run.json: absent there, they are no change."""
    from sae.cli.identity import IDENTITY_FILE, check_resume, run_identity
    from sae.config import RunConfig, TrainConfig

    identity = run_identity(RunConfig(out=str(tmp_path)), {"k": 4}, TrainConfig())
    older = {part: dict(values) for part, values in identity.items()}
    del older["dictionary"]["skip"], older["training"]["skip_init"]  # not yet settings when that run began
    (tmp_path / IDENTITY_FILE).write_text(json.dumps(older))
    check_resume(tmp_path, identity)
    older["dictionary"]["k"] = 8
    (tmp_path / IDENTITY_FILE).write_text(json.dumps(older))
    with pytest.raises(ValueError, match="dictionary k: run 8, this run 4"):
        check_resume(tmp_path, identity)
