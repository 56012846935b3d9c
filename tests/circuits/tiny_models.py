"""Tiny causal LMs (Llama-style and GPT-2-style) saved with save_pretrained, with a word-level tokenizer trained
by the test, and per-layer transcoders / a CLT made of random tensors, written both as our dictionaries and in
the files circuit-tracer loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

WORDS = "the cat sat on a mat dog ran far red blue big small river stone tree moon sun".split()
SPECIALS = ["<unk>", "<bos>", "<eos>"]


def tokenizer():
    """A word-level tokenizer over WORDS, trained with `tokenizers` on a few sentences (BOS id 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
    tok.train_from_iterator([" ".join(WORDS), "the cat sat on the mat", "a dog ran far"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<eos>"
    )


def save_tokenizer(tok, path: Path) -> None:
    """Save the tokenizer so that both our transformers and circuit-tracer's older one read it."""
    tok.save_pretrained(path)
    config = path / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.write_text(json.dumps(data))


def llama_config(vocab: int, n_layers: int, d_model: int, **extra):
    """The tiny Llama's config: 4 heads over 2 key-value heads, an MLP twice as wide, BOS 1 and EOS 2, weights at
    range 0.2."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
        **extra,
    )


def causal_lm(kind: str, n_layers: int, d_model: int):
    """A tiny Llama-style (`kind` "llama") or GPT-2-style causal LM in memory, loaded as a plain Hugging Face model
    (activations.load_model), initialised at range 0.2 from seed 0."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from activations import load_model

    tok = tokenizer()
    torch.manual_seed(0)
    if kind == "llama":
        cfg = llama_config(len(tok), n_layers, d_model, max_position_embeddings=16)
        cfg.architectures = ["LlamaForCausalLM"]
        return load_model(LlamaForCausalLM(cfg).eval(), tokenizer=tok)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=16, bos_token_id=1, eos_token_id=2
    )
    cfg.initializer_range = 0.2
    cfg.architectures = ["GPT2LMHeadModel"]
    return load_model(GPT2LMHeadModel(cfg).eval(), tokenizer=tok)


def save_llama(path: Path, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = llama_config(len(tok), n_layers, d_model, max_position_embeddings=32, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return path


def save_gpt2(path: Path, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        n_positions=32,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return path


def random_transcoder(d_model: int, n: int, *, skip: bool, jumprelu: bool, seed: int) -> dict[str, torch.Tensor]:
    """circuit-tracer's per-layer tensors: W_enc [n, d], W_dec [n, d], b_enc [n], b_dec [d], W_skip [d, d]
    (skip = x W_skip^T), activation_function.threshold [n] (JumpReLU)."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(n, d_model, generator=g) / d_model**0.5,
        "W_dec": torch.randn(n, d_model, generator=g) / n**0.5,
        "b_enc": 0.1 * torch.randn(n, generator=g),
        "b_dec": 0.1 * torch.randn(d_model, generator=g),
    }
    if skip:
        t["W_skip"] = 0.1 * torch.randn(d_model, d_model, generator=g)
    if jumprelu:
        t["activation_function.threshold"] = 0.3 * torch.rand(n, generator=g)
    return t


def save_circuit_tracer_plt(folder: Path, layers: list[dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for layer, tensors in enumerate(layers):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"layer_{layer}.safetensors"))
    return folder


def our_transcoder(t: dict[str, torch.Tensor], layer: int, hook: str, target: str, topk: int | None = None):
    """Our SparseAutoencoder from circuit-tracer's per-layer tensors (W_enc transposed; the rest as they are):
    JumpReLU where they hold a threshold, else ReLU ('standard'), or TopK with `topk`."""
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    n, d = t["W_enc"].shape
    jump = "activation_function.threshold" in t
    cfg = SAEConfig(
        d_in=d,
        n_latents=n,
        d_out=d,
        family="topk" if topk else "jumprelu" if jump else "standard",
        k=topk,
        options={} if topk else {"apply_b_dec_to_input": False},
        normalize="none",
        hook_name=hook.format(layer),
        target_hook=target.format(layer),
        skip="W_skip" in t,
    )
    tensors = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
    if "W_skip" in t:
        tensors["W_skip"] = t["W_skip"]
    if jump:
        tensors["threshold"] = t["activation_function.threshold"]
    return SparseAutoencoder.from_tensors(cfg, tensors, f"test layer {layer}")


def random_clt(n_layers: int, d_model: int, n: int, *, jumprelu: bool, seed: int, skip: bool = False) -> dict[str, torch.Tensor]:
    """A CLT in our layout: W_enc [L, d, n], b_enc [L, n], W_dec_{l} [n, L - l, d], b_dec [L, d], threshold [L, n],
    W_skip [L, d_out, d_in]."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(n_layers, d_model, n, generator=g) / d_model**0.5,
        "b_enc": 0.1 * torch.randn(n_layers, n, generator=g),
        "b_dec": 0.1 * torch.randn(n_layers, d_model, generator=g),
    }
    for layer in range(n_layers):
        t[f"W_dec_{layer}"] = torch.randn(n, n_layers - layer, d_model, generator=g) / n**0.5
    if jumprelu:
        t["threshold"] = 0.3 * torch.rand(n_layers, n, generator=g)
    if skip:
        t["W_skip"] = 0.1 * torch.randn(n_layers, d_model, d_model, generator=g)
    return t


def save_circuit_tracer_clt(folder: Path, t: dict[str, torch.Tensor]) -> Path:
    """circuit-tracer's CLT files: W_enc_{l}.safetensors (W_enc_l [n, d], b_enc_l, b_dec_l, threshold_l) and
    W_dec_{l}.safetensors (W_dec_l [n, L - l, d]). circuit-tracer's loader reads no skip term: a skip CLT's
    W_skip goes into W_skip.safetensors as its CrossLayerTranscoder holds it ([L, d_in, d_out]: x @ W_skip[l])."""
    folder.mkdir(parents=True, exist_ok=True)
    n_layers = t["W_enc"].shape[0]
    for layer in range(n_layers):
        enc = {
            f"W_enc_{layer}": t["W_enc"][layer].T.contiguous(),
            f"b_enc_{layer}": t["b_enc"][layer].contiguous(),
            f"b_dec_{layer}": t["b_dec"][layer].contiguous(),
        }
        if "threshold" in t:
            enc[f"threshold_{layer}"] = t["threshold"][layer].contiguous()
        save_file(enc, str(folder / f"W_enc_{layer}.safetensors"))
        save_file({f"W_dec_{layer}": t[f"W_dec_{layer}"].contiguous()}, str(folder / f"W_dec_{layer}.safetensors"))
    if "W_skip" in t:
        save_file({"W_skip": t["W_skip"].transpose(1, 2).contiguous()}, str(folder / "W_skip.safetensors"))
    return folder


def our_clt(t: dict[str, torch.Tensor], hook: str, target: str, first_layer: int = 0):
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    n_layers, d, n = t["W_enc"].shape
    tensors = {"threshold": torch.zeros(n_layers, n), **t}  # a ReLU CLT: JumpReLU at threshold 0 (x > 0)
    cfg = SAEConfig(
        d_in=d,
        n_latents=n,
        d_out=d,
        family="jumprelu",
        options={"apply_b_dec_to_input": False},
        normalize="none",
        hook_name=hook,
        target_hook=target,
        layers=n_layers,
        first_layer=first_layer,
        skip="W_skip" in t,
    )
    return SparseAutoencoder.from_tensors(cfg, tensors, "test CLT")


def save_trace_inputs(root: Path, n_layers: int = 2, d_model: int = 32, n_latents: int = 16) -> tuple[Path, Path]:
    """A saved tiny Llama and one random skip JumpReLU transcoder per layer in our layout (each in
    `transcoders/blocks.{layer}.mlp.hook_in`): what `python -m sae trace --model ... --transcoders ...` reads."""
    model = save_llama(root / "llama", n_layers=n_layers, d_model=d_model)
    folder = root / "transcoders"
    for layer in range(n_layers):
        t = random_transcoder(d_model, n_latents, skip=True, jumprelu=True, seed=layer)
        our_transcoder(t, layer, "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out").save(folder / f"blocks.{layer}.mlp.hook_in")
    return model, folder


def encoder(n_layers: int = 2, d_model: int = 32, seed: int = 0):
    """A tiny BERT-style encoder (BertModel without its pooler, 4 heads, post-LayerNorm) in memory, loaded as a
    plain Hugging Face model, with a word-level tokenizer over WORDS that adds [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from activations import load_model

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(fast),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=2 * d_model,
        max_position_embeddings=16,
        initializer_range=0.2,
    )
    return load_model(BertModel(cfg, add_pooling_layer=False).eval(), tokenizer=fast)
