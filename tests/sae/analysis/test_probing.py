import datasets
import pytest
import torch

from activations import load_model
from sae.analysis.probing import default_task, probe_features, sparse_probe
from sae.config import SAEConfig
from sae.model import SparseAutoencoder


def test_one_latent_carrying_the_label_is_found_with_m_1():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    codes = torch.rand(400, 64, generator=g) * (torch.rand(400, 64, generator=g) < 0.1)
    codes[:, 23] = labels * 2.0 + torch.rand(400, generator=g) * 0.5  # latent 23 carries the label
    acts = torch.randn(400, 16, generator=g)  # the raw activations carry nothing
    r = probe_features(acts, codes, labels.tolist(), m=(1, 2))
    assert r["probe_sae_top_1"] >= 0.95
    assert r["probe_full_activations"] < 0.75
    assert r["probe_classes"] == ["0", "1"]


def test_three_classes_are_one_vs_rest_tasks():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (600,), generator=g)
    codes = torch.rand(600, 32, generator=g) * 0.1
    codes[torch.arange(600), labels * 5] += 1.0  # latents 0, 5, 10 mark the classes
    r = probe_features(codes[:, :8], codes, labels.tolist(), m=(1,))
    assert set(r["probe_per_class"]) == {"0", "1", "2"}
    assert min(v["sae_top_1"] for v in r["probe_per_class"].values()) >= 0.95


def test_default_task_labels_are_the_docstrings_modules():
    ds = default_task(n_classes=3, per_class=10)
    assert len(set(ds["label"])) == 3 and len(ds) == 30
    from activations.text import embedded_corpus

    corpus = embedded_corpus("all")
    source = dict(zip(corpus["text"], corpus["id"]))
    for text, label in zip(ds["text"], ds["label"]):
        assert source[text].startswith(f"stdlib/{label}.") or source[text] == f"stdlib/{label}"


def test_bad_probing_inputs_name_the_values(tiny_gpt2_path):
    model = load_model(tiny_gpt2_path, backend="hf")
    sae = SparseAutoencoder(SAEConfig(d_in=64, n_latents=32, k=4, hook_name="blocks.1.hook_resid_pre"))
    ds = datasets.Dataset.from_dict({"text": ["some text here", "more words there"] * 4, "topic": [0, 1] * 4})
    with pytest.raises(ValueError, match=r"no column 'label'; it has \['text', 'topic'\]"):
        sparse_probe(sae, model, ds, "label")
    with pytest.raises(ValueError, match=r"m values \[64\] must lie in \[1, n_latents=32\]"):
        sparse_probe(sae, model, ds, "topic", m=(1, 64))
    r = sparse_probe(sae, model, ds, "topic", m=(1, 2), batch_size=1, progress=False)
    # the reference: each text run alone, activations and codes averaged over its tokens
    tok = model.tokenizer
    pooled_a, pooled_z = [], []
    for text in ds["text"]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        a = model.run(ids, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"][0].float()
        pooled_a.append(a.mean(0))
        pooled_z.append(sae.encode_dense(a).mean(0))
    ref = probe_features(torch.stack(pooled_a), torch.stack(pooled_z).detach(), ds["topic"], m=(1, 2))
    for key in ("probe_full_activations", "probe_sae_top_1", "probe_sae_top_2"):
        assert r[key] == ref[key]
    # two distinct texts, one per label: every probe separates them
    assert r["probe_full_activations"] == r["probe_sae_top_2"] == 1.0 and r["probe_examples"] == 8
