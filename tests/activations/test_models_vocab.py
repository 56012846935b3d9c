"""Adapter accessors for the vocabulary-space matrices: W_E always, W_U only for causal LMs."""

import torch


def test_minilm_is_an_encoder_without_unembedding(minilm):
    assert minilm.is_encoder()
    assert minilm.unembedding() is None  # its transformer-lens MLM head is untrained: never read
    W_E = minilm.input_embedding()
    assert W_E.shape == (minilm.tokenizer.vocab_size, minilm.d_model)
    params = dict(minilm.model.named_parameters())
    word = params.get("bert.embeddings.word_embeddings._original_component.weight")  # TransformerBridge's name
    if word is not None:
        assert torch.equal(W_E, word)  # the checkpoint's trained word embeddings


def test_hf_causal_lm_unembedding_is_its_head():
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    from activations import load_model

    cfg = GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    cfg.architectures = ["GPT2LMHeadModel"]

    class Tok:  # the adapter reads only these attributes here
        bos_token_id = eos_token_id = pad_token_id = 0
        cls_token_id = None

    lm = load_model(GPT2LMHeadModel(cfg), tokenizer=Tok())
    assert not lm.is_encoder()
    assert torch.equal(lm.unembedding(), lm.model.lm_head.weight.T)
    base = load_model(GPT2Model(cfg), tokenizer=Tok())  # no head: the tied embedding stands in
    assert torch.equal(base.unembedding(), base.model.wte.weight.T)
    assert torch.equal(base.input_embedding(), base.model.wte.weight)
