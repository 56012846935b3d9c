"""The OpenAI-compatible client against a real HTTP server on the loopback interface: answers, retries on 503 and
429, timeouts, malformed bodies, an unreachable endpoint, an API key that never leaks, logprobs, unparsed answers."""

import socket
import time

import pytest

from sae.analysis.autointerp import JudgeError, OpenAIJudge, RequestCache, parse_judge, score
from sae.analysis.autointerp.judges import Request
from sae.analysis.autointerp.prompts import detection_messages

KEY = "sk-test-0123456789abcdef"
ASK = Request.chat(detection_messages('the words "cat"', ["the cat sat"]), 8, probs=True)


def judge(server, model="rule", **kw):
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return parse_judge(server.url(model), **kw)


def test_answers_with_usage_and_the_key_as_a_header(fresh, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    j = judge(fresh)
    assert isinstance(j, OpenAIJudge) and j.name == f"openai:http://127.0.0.1:{fresh.port}/v1:rule"
    (reply,) = j.answer([ASK])
    assert reply.text == "yes" and reply.prompt_tokens > 10 and reply.completion_tokens == 2 and reply.p_yes is None
    assert fresh.received[-1]["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(j) and KEY not in j.name and KEY not in str(j.identity)


def test_no_key_no_header_and_estimated_usage(fresh, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (reply,) = judge(fresh, "nousage").answer([ASK])
    assert fresh.received[-1]["authorization"] is None
    assert reply.text == "yes" and reply.prompt_tokens > 10 and reply.completion_tokens >= 1


@pytest.mark.parametrize("model", ["flaky", "ratelimit"])
def test_retries_503_and_429(fresh, model):
    (reply,) = judge(fresh, model).answer([ASK])
    assert reply.text == "yes" and len(fresh.received) == 2


def test_timeout_is_retried_then_names_the_endpoint(fresh):
    fresh.slow_s = 1.0
    t = time.time()
    with pytest.raises(
        JudgeError,
        match=r"the judge at http://127\.0\.0\.1:\d+/v1/chat/completions failed after 2 attempts: no answer within the 0\.2 s",
    ):
        judge(fresh, "slow", timeout=0.2, retries=1).answer([ASK])
    assert time.time() - t < 3 and len(fresh.received) == 2


@pytest.mark.parametrize("model, reason", [("malformed", "not a chat completion"), ("badshape", "not a chat completion")])
def test_malformed_bodies_are_retried_then_refused(fresh, model, reason):
    with pytest.raises(JudgeError, match=reason):
        judge(fresh, model).answer([ASK])
    assert len(fresh.received) == 3


def test_unreachable_endpoint_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(JudgeError, match=rf"the judge at http://127\.0\.0\.1:{port}/v1/chat/completions failed .*cannot connect"):
        OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01).answer([ASK])


def test_a_key_echoed_by_the_server_is_masked(fresh, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    with pytest.raises(JudgeError) as e:
        judge(fresh, "echo", api_key_env="MY_JUDGE_KEY").answer([ASK])
    assert "refused the request: HTTP 401" in str(e.value) and "Bearer ***" in str(e.value)
    assert KEY not in str(e.value) and len(fresh.received) == 1  # a 401 is not retried


def test_logprobs_give_an_auroc_and_the_key_stays_out_of_the_cache(fresh, synthetic, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stats, truth, _ = synthetic
    expl = {i: truth[i].truth for i in (0, 12)}
    got = score(stats, expl, judge(fresh, logprobs=True, concurrency=4), cache=tmp_path / "c.sqlite", progress=False)
    for g in got.values():
        assert g["detection"].auroc is not None and g["detection"].auroc >= 0.9
        assert g["fuzzing"].auroc == g["fuzzing"].balanced_accuracy == 1.0
    assert KEY.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    sent = len(fresh.received)
    again = score(stats, expl, judge(fresh, logprobs=True), cache=RequestCache(tmp_path / "c.sqlite"), progress=False)
    assert again == got and len(fresh.received) == sent  # all from the cache


def test_unparseable_answers_are_counted_not_scored(fresh, synthetic):
    stats, truth, _ = synthetic
    got = score(stats, {3: truth[3].truth}, judge(fresh, "nonsense"), progress=False)[3]
    for s in got.values():
        assert s.balanced_accuracy is None and s.n_positive == s.n_negative == 0 and s.unparsed > 10


def test_judge_spec_errors():
    with pytest.raises(ValueError, match="expected openai:URL:MODEL"):
        parse_judge("openai:localhost:8000")
    with pytest.raises(ValueError, match="hf:PATH or rule"):
        parse_judge("gpt4")
    j = parse_judge("openai:http://localhost:11434/v1:llama3:8b")
    assert (j.base_url, j.model) == ("http://localhost:11434/v1", "llama3:8b")
    j = parse_judge("openai:https://api.example.com/v1:org/model-7b")
    assert (j.url, j.model) == ("https://api.example.com/v1/chat/completions", "org/model-7b")
