"""A tiny causal LM with a word-level tokenizer, built in the test (never downloaded).

The vocabulary holds hostile strings as single tokens, so the browser's escaping is tested on
tokens that are markup, not on harmless pieces of it.
"""

import torch

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"quoted'", "a&amp;b"]
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "far",
    "red",
    "blue",
    "big",
    "small",
    "river",
    "stone",
    "tree",
    "moon",
    "sun",
    "code",
    "data",
    "line",
]


def corpus(n_docs: int = 120, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    vocab = WORDS + HOSTILE
    docs = []
    for _ in range(n_docs):
        idx = torch.randint(len(vocab), (int(torch.randint(8, 40, (1,), generator=g)),), generator=g)
        docs.append("|".join(vocab[i] for i in idx.tolist()))
    return docs


def tiny_lm(d_model: int = 32):
    """A 2-block GPT-2 with random weights and a word-level tokenizer (words joined by |) over WORDS + HOSTILE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from activations import load_model

    specials = ["<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + HOSTILE)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("|", behavior="removed")  # words may hold spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<eos>"
    )
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=d_model, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["GPT2LMHeadModel"]
    return load_model(GPT2LMHeadModel(cfg).eval(), tokenizer=tokenizer)
