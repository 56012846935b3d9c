"""Tiny causal LMs with random weights and a word-level tokenizer, built in the test (never downloaded): GPT-2 and
Llama through plain Hugging Face forward hooks, or saved to a folder for the transformer-lens bridge; a skip
transcoder and a skip CLT on their MLP hooks. The vocabulary holds markup as single tokens, so what shows the corpus
is tested on tokens that are markup."""

import functools

import torch

HOSTILE = ["<script>alert(1)</script>", "<img/src=x/onerror=alert(1)>", "a&amp;b"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "red", "blue", "big", "small", "river", "stone", *HOSTILE]
IN, OUT = "blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out"


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<eos>"
    )


def network(kind: str, d_model: int = 32, layers: int = 3):
    """A random GPT-2 or Llama causal LM of `layers` blocks."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 3 + len(WORDS)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=layers, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
        )
        cfg.architectures = ["GPT2LMHeadModel"]
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(cfg).eval()


@functools.cache
def hf_model(kind: str):
    """The network through plain Hugging Face hooks, built once per test process (edits restore it on exit)."""
    from activations import load_model

    return load_model(network(kind), tokenizer=tokenizer())


def saved(kind: str, folder) -> str:
    """The network and its tokenizer saved with save_pretrained, for load_model(folder) (the bridge)."""
    network(kind).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return str(folder)


def texts(n: int = 24, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(torch.randint(8, 30, (1,), generator=g)),), generator=g))
        for _ in range(n)
    ]


def dictionaries(d: int, layer: int = 1):
    """A skip transcoder on one layer's MLP and a skip CLT over layers 0-1, with scales and biases that matter."""
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    hooks = dict(hook_name=IN.format(layer), target_hook=OUT.format(layer))
    tc = SparseAutoencoder(SAEConfig(d_in=d, d_out=d, n_latents=4 * d, k=6, skip=True, **hooks), seed=0)
    clt = SparseAutoencoder(SAEConfig(d_in=d, d_out=d, n_latents=2 * d, k=4, skip=True, layers=2, hook_name=IN, target_hook=OUT))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for sae in (tc, clt):
            sae.W_skip.copy_(0.1 * torch.randn(sae.W_skip.shape, generator=g))
            sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g))
            sae.b_enc.fill_(0.05)
        tc.input_scale.fill_(1.5), tc.target_scale.fill_(0.5)
        clt.input_scale.copy_(torch.tensor([1.2, 0.8])), clt.target_scale.copy_(torch.tensor([0.7, 2.0]))
    return tc.eval(), clt.eval()
