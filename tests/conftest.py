"""Suite-wide environment: Triton's CPU interpreter and no network. Set before any kernel module loads."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402 - after the environment is set


@pytest.fixture(scope="session")
def tiny_gpt2_path(tmp_path_factory):
    """A 2-layer GPT-2 with random weights and MiniLM's tokenizer, saved with save_pretrained (offline)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from activations.models import minilm_path

    path = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=30522, bos_token_id=None, eos_token_id=None)
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def minilm():
    """The embedded model through transformer-lens, loaded once per session."""
    from activations import load_model

    return load_model("minilm")


@pytest.fixture(scope="session")
def minilm_hf():
    """The embedded model through plain Hugging Face forward hooks."""
    from activations import load_model

    return load_model("minilm", backend="hf")
