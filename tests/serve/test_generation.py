"""generate() under steer / ablate on each backend: the edit changes the continuation, leaving the block restores
the model bit for bit; the encoder's sentence embedding and its nearest references."""

import pytest
import torch

from activations import load_model
from sae import SAEConfig, SparseAutoencoder
from sae.analysis.generation import _loop, generate, nearest, prompt_ids, sentence_embedding
from sae.analysis.interventions import ablate, steer

HOOK = "blocks.1.hook_resid_pre"


def _sae(d: int, model_name: str = "") -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=d, n_latents=64, k=4, hook_name=HOOK, model_name=model_name), seed=0)


@pytest.fixture(scope="module")
def gpt2_hf(tiny_gpt2_path):
    return load_model(tiny_gpt2_path, backend="hf")


def _runs(model):
    greedy = generate(model, "the cat sat on the", max_new_tokens=8)
    sampled = generate(model, "the cat sat on the", max_new_tokens=8, sample=True, seed=3, top_k=20)
    logits = model.forward(torch.tensor([prompt_ids(model, "the cat sat")]))
    return greedy, sampled, logits


@pytest.mark.slow  # boots the bridge; HF generate of a 30k-vocabulary model, eight times
@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_steer_changes_generation_and_leaves_the_model_as_it_was(tiny_gpt2_path, gpt2_hf, backend):
    model = gpt2_hf if backend == "hf" else load_model(tiny_gpt2_path, backend="transformer_lens")
    assert model.backend == ("hf" if backend == "hf" else "transformer_lens")
    sae = _sae(model.d_model)
    before = _runs(model)
    assert len(before[0].new_ids) == 8 and before[0].prompt_len == len(prompt_ids(model, "the cat sat on the"))
    state = torch.get_rng_state()
    again = generate(model, "the cat sat on the", max_new_tokens=8, sample=True, seed=3, top_k=20)
    assert again.ids == before[1].ids  # a seed gives the same sample
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    with steer(model, sae, 5, alpha=8.0):
        steered = _runs(model)
    with ablate(model, sae, list(range(64))):
        ablated = _runs(model)
    after = _runs(model)
    assert steered[0].ids != before[0].ids and not torch.equal(steered[2], before[2])
    assert not torch.equal(ablated[2], before[2])
    assert after[0].ids == before[0].ids and after[1].ids == before[1].ids
    assert torch.equal(after[2], before[2])  # bit-equal logits after the block


def test_hf_generate_agrees_with_the_forward_loop(gpt2_hf):
    sae = _sae(gpt2_hf.d_model)
    ids = prompt_ids(gpt2_hf, "the dog ran far")
    with steer(gpt2_hf, sae, 9, alpha=6.0):
        fast = generate(gpt2_hf, ids, max_new_tokens=6)
        slow, _ = _loop(gpt2_hf, ids, 6, False, 1.0, 0, 0, None, None)
    assert fast.ids == slow  # the key-value cache sees the same edited positions as full forwards


def test_generate_refuses_bad_arguments_and_stops_at_the_context(gpt2_hf):
    with pytest.raises(ValueError, match="is an encoder"):
        generate(_Stub(False), "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(gpt2_hf, "text", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(gpt2_hf, "text", sample=True, temperature=0)
    long = [5] * (gpt2_hf.max_context - 2)
    assert len(generate(gpt2_hf, long, max_new_tokens=10).new_ids) == 2
    with pytest.raises(ValueError, match="leaves no room"):
        generate(gpt2_hf, [5] * gpt2_hf.max_context)
    timed = generate(gpt2_hf, "the", max_new_tokens=50, timeout_s=1e-6)
    assert timed.timed_out and len(timed.new_ids) < 50


@pytest.mark.slow  # loads the embedded model
def test_sentence_embedding_under_steer(minilm):
    sae = _sae(minilm.d_model)
    texts = ["Return the length of a list.", "Open a file and return a stream.", "Open a file."]
    refs = sentence_embedding(minilm, texts)
    assert refs.shape == (3, minilm.d_model)
    assert torch.allclose(sentence_embedding(minilm, texts[2]), refs[2:], atol=1e-5)  # grouping by length is exact
    top = nearest(refs[1], refs, k=2)
    assert top[0][0] == 1 and top[0][1] == pytest.approx(1.0, abs=1e-5) and top[1][0] == 2
    with steer(minilm, sae, 3, alpha=4.0):
        moved = sentence_embedding(minilm, texts[0])
    cos = torch.nn.functional.cosine_similarity(moved, refs[:1]).item()
    assert cos < 0.999
    assert torch.equal(sentence_embedding(minilm, texts), refs)
    with pytest.raises(ValueError, match="causal LM"):
        sentence_embedding(_Stub(True), "x")  # type: ignore[arg-type]


class _Stub:
    def __init__(self, causal: bool) -> None:
        self.is_causal, self.name = causal, "a stub model"
