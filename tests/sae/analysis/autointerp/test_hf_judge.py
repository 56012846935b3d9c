"""The local judge: a tiny random causal LM with a tokenizer made here; batched generation equals one prompt at a
time, P(yes) gives an AUROC, and its (random) answers are counted as unparsed, never scored."""

import pytest
import torch

from sae.analysis.autointerp import HFJudge, SampleSettings, parse_judge, score
from sae.analysis.autointerp.judges import Request


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from activations.models import minilm_path

    path = tmp_path_factory.mktemp("tiny-judge")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=1024, vocab_size=30522, bos_token_id=None, eos_token_id=None)
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


def test_batched_generation_equals_one_at_a_time(tiny_causal_lm):
    j = parse_judge(f"hf:{tiny_causal_lm}", batch_size=3)
    assert isinstance(j, HFJudge) and j.name == f"hf:{tiny_causal_lm}"
    reqs = [
        Request.chat(
            [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "word " * k}], 4, probs=True
        )
        for k in (1, 9, 3, 20)
    ]
    seen = []
    batched = j.answer(reqs, lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3] and seen[:3] == [0, 2, 1]  # batched by prompt length
    single = [j.answer([r])[0] for r in reqs]
    for b, s in zip(batched, single):
        assert b.text == s.text and b.prompt_tokens == s.prompt_tokens and b.completion_tokens == 4
        assert 0 < b.p_yes < 1 and b.p_yes == pytest.approx(s.p_yes, abs=1e-5)


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_causal_lm):
    j = HFJudge(tiny_causal_lm)
    r = Request.chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], 2)
    assert j.prompt(r) == "System: S\n\nUser: U\n\nAssistant:"
    j.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert j.prompt(r) == "<system>S<user>U<assistant>"


def test_scores_from_a_local_judge(tiny_causal_lm, synthetic):
    stats, truth, _ = synthetic
    settings = SampleSettings(positives=4)
    got = score(stats, {0: truth[0].truth}, HFJudge(tiny_causal_lm, batch_size=8), settings=settings, progress=False)[0]
    for method, s in got.items():
        n = 8 if method == "detection" else 2 * 4
        assert s.n_positive + s.n_negative + s.unparsed == n
        assert s.auroc is not None  # P(yes) comes with every item, parsed or not
    with pytest.raises(ValueError, match="cannot load a causal LM"):
        HFJudge("/nonexistent/model")
