import pytest
import torch
from transformers import AutoModel

from activations import load_model
from activations.models import HFAdapter, minilm_path


@pytest.fixture(scope="module")
def tokens(minilm):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1000, 20000, (2, 24), generator=g)
    t[:, 0] = minilm.bos_token_id
    return t


@pytest.fixture(scope="module")
def hf_hidden(tokens):
    model = AutoModel.from_pretrained(minilm_path()).eval()
    with torch.inference_mode():
        return model(tokens, output_hidden_states=True).hidden_states


def test_minilm_adapter_facts(minilm):
    assert minilm.name == "minilm" and minilm.backend == "transformer_lens"
    assert (minilm.d_model, minilm.n_layers, minilm.max_context) == (384, 6, 512)
    assert minilm.bos_token_id == minilm.tokenizer.cls_token_id
    assert minilm.sep_token_id == minilm.tokenizer.sep_token_id
    assert {minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id, minilm.tokenizer.pad_token_id} <= set(
        minilm.special_token_ids
    )
    names = minilm.hook_names()
    assert "blocks.3.hook_resid_pre" in names and "blocks.5.hook_resid_post" in names


def test_hooks_equal_hf_hidden_states_in_one_pass(minilm, minilm_hf, tokens, hf_hidden):
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_pre"]
    for adapter in (minilm, minilm_hf):
        out = adapter.run(tokens, hooks)
        assert list(out) == hooks
        torch.testing.assert_close(out["blocks.0.hook_resid_post"], hf_hidden[1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["blocks.2.hook_resid_post"], hf_hidden[3], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["blocks.3.hook_resid_pre"], hf_hidden[3], atol=1e-4, rtol=1e-4)
        assert out["blocks.3.hook_resid_pre"].is_inference()  # ran under torch.inference_mode()


def test_hf_named_module_hook(minilm_hf, tokens, hf_hidden):
    assert isinstance(minilm_hf, HFAdapter)
    out = minilm_hf.run(tokens, ["encoder.layer.1"])
    torch.testing.assert_close(out["encoder.layer.1"], hf_hidden[2], atol=1e-5, rtol=1e-5)


def test_forward_stops_after_last_needed_layer(minilm, minilm_hf, tokens):
    assert minilm.stop_layer(["blocks.3.hook_resid_pre"]) == 4
    assert minilm.stop_layer(["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"]) == 3
    assert minilm.stop_layer(["blocks.5.hook_resid_post"]) is None
    # count which blocks actually run, on both backends
    for adapter, layers in ((minilm, minilm.model.blocks), (minilm_hf, minilm_hf._layers)):
        ran = []
        handles = [m.register_forward_hook(lambda mod, a, o, i=i, ran=ran: ran.append(i)) for i, m in enumerate(layers)]
        try:
            adapter.run(tokens, ["blocks.1.hook_resid_post"])
        finally:
            for h in handles:
                h.remove()
        assert max(ran) <= 2, f"{adapter.backend} ran blocks {ran}"


def test_unknown_hook_lists_close_matches(minilm):
    with pytest.raises(ValueError, match=r"'blocks\.3\.hook_resid_pr'.*blocks\.3\.hook_resid_pre"):
        minilm.check_hooks("blocks.3.hook_resid_pr")
    with pytest.raises(ValueError, match="blocks.99"):
        load_model(minilm).hook_dims("blocks.99.hook_resid_pre")


def test_hook_without_batch_pos_d_shape_is_refused(minilm, tokens):
    with pytest.raises(ValueError, match=r"hook_pattern.*\[batch, pos, d\]"):
        minilm.run(tokens, "blocks.0.attn.hook_pattern")


def test_context_longer_than_model_maximum(minilm):
    with pytest.raises(ValueError, match="513.*512"):
        minilm.run(torch.zeros(1, 513, dtype=torch.long), "blocks.0.hook_resid_post")


def test_load_model_passes_adapters_and_rejects_junk(minilm):
    assert load_model(minilm) is minilm
    with pytest.raises(TypeError, match="int"):
        load_model(3)
    with pytest.raises(ValueError, match="backend"):
        load_model("minilm", backend="tf")


def test_activations_never_imports_sae():
    import subprocess
    import sys

    code = "import sys, activations; sys.exit(any(m == 'sae' or m.startswith('sae.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_causal_model_from_a_local_folder(tmp_path, minilm):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=30522, bos_token_id=None, eos_token_id=None)
    ).eval()
    hf.save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    ids = torch.randint(1000, 2000, (2, 10))
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    for backend in ("auto", "hf"):
        adapter = load_model(str(tmp_path), backend=backend)
        assert (adapter.d_model, adapter.n_layers, adapter.max_context) == (64, 2, 64)
        out = adapter.run(ids, ["blocks.1.hook_resid_pre"])
        torch.testing.assert_close(out["blocks.1.hook_resid_pre"], hs[1], atol=1e-5, rtol=1e-5)
    assert adapter.backend == "hf" and adapter.bos_token_id != minilm.tokenizer.cls_token_id


def _hf_cache_with(tmp_path, monkeypatch, repo: str, folder) -> None:
    """A Hugging Face hub cache holding `repo` (the files of `folder`), laid out as huggingface_hub writes it."""
    import shutil

    import huggingface_hub

    cache, commit = tmp_path / "hub", "0" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_a_hub_model_missing_offline_fails_at_once_naming_the_repo(tmp_path, monkeypatch):
    import time

    import activations.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=0: False)  # no network, whatever HF_HUB_OFFLINE says
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    _hf_cache_with(tmp_path, monkeypatch, "someone/other", other)  # a cache, without the model asked for
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"model 'someone/absent' is not a local folder and not in the Hugging"):
        load_model("someone/absent", backend="hf")
    assert time.perf_counter() - start < 5


def test_a_hub_model_in_the_cache_loads_without_the_network(tmp_path, monkeypatch, tiny_gpt2_path):
    import activations.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=0: False)
    _hf_cache_with(tmp_path, monkeypatch, "someone/tiny-gpt2", tiny_gpt2_path)
    cached, local = load_model("someone/tiny-gpt2", backend="hf"), load_model(tiny_gpt2_path, backend="hf")
    assert cached.name == "someone/tiny-gpt2"  # named as the hub model, as an online load would be
    tokens = torch.tensor([[5, 17, 42, 7]])
    hook = "blocks.1.hook_resid_pre"
    assert torch.equal(cached.run(tokens, [hook])[hook], local.run(tokens, [hook])[hook])
