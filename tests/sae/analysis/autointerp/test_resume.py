"""explain_and_score: lines appended per chunk; a run killed mid-way resumes from the cache without repeating a
request and ends as an uninterrupted run does; a token budget stops cleanly; a torn last line is ignored."""

import json

import pytest

from sae.analysis.autointerp import Budget, RuleJudge, explain_and_score, load_explanations
from sae.analysis.autointerp.cache import request_key
from sae.analysis.autointerp.results import append_lines
from sae.analysis.features import STATS_FILE


class Recording(RuleJudge):
    """The rule judge, recording each request's key; killed (an exception) after `kill_after` replies."""

    name = "recording"

    def __init__(self, kill_after=None):
        self.keys, self.kill_after = [], kill_after

    def answer(self, requests, on_reply=None):
        out = []
        for r in requests:
            if self.kill_after is not None and len(self.keys) >= self.kill_after:
                raise KeyboardInterrupt("killed")
            (reply,) = super().answer([r])
            self.keys.append(request_key(self.identity, r))
            if on_reply is not None:
                on_reply(len(out), reply)
            out.append(reply)
        return out


@pytest.fixture
def run(synthetic, tmp_path):
    stats, _, _ = synthetic
    stats.save(tmp_path / "run" / STATS_FILE)
    return tmp_path / "run"


def _strip(recs):
    return {i: {k: v for k, v in r.items() if k != "tokens"} for i, r in recs.items()}


def test_killed_run_resumes_without_repeating_a_request(run, tmp_path, synthetic):
    first = Recording(kill_after=150)
    with pytest.raises(KeyboardInterrupt):
        explain_and_score(run, first, "0-7", chunk=2, progress=False)
    partial = load_explanations(run)
    assert 0 < len(partial) < 8 and sorted(partial) == list(range(len(partial)))
    second = Recording()
    summary = explain_and_score(run, second, "0-7", chunk=2, progress=False)
    assert not set(first.keys) & set(second.keys)
    assert summary.done == 8 - len(partial) and summary.already_done == len(partial)
    assert summary.from_cache > 0 and summary.requests_sent == len(second.keys)
    # the same as a run never interrupted
    synthetic[0].save(tmp_path / "clean" / STATS_FILE)
    explain_and_score(tmp_path / "clean", Recording(), "0-7", progress=False)
    assert load_explanations(run) == load_explanations(tmp_path / "clean")
    lines = (run / "explanations.jsonl").read_text().splitlines()
    assert [json.loads(x)["latent"] for x in lines] == list(range(8))  # compacted: one sorted line per latent
    third = Recording()
    again = explain_and_score(run, third, "0-7", progress=False)
    assert again.done == 0 and third.keys == []


def test_a_line_records_what_the_issue_asks(run):
    explain_and_score(run, RuleJudge(), "12", progress=False, cache=run / "c.sqlite")
    rec = load_explanations(run)[12]
    assert rec["explanation"].startswith("the word after")
    assert rec["judge"] == rec["scorer"] == "rule" and rec["prompt_version"] == "saekit-autointerp-1"
    assert rec["samples"]["explain"] == {"top": 10, "quantile": 10}
    assert rec["samples"]["detection"]["positive"] == rec["scores"]["detection"]["n_positive"]
    assert set(rec["scores"]) == {"detection", "fuzzing"} and rec["unparsed"] == {"explanation": 0, "detection": 0, "fuzzing": 0}
    assert rec["tokens"]["prompt"] > 0 and rec["sae_digest"]


def test_budget_stops_cleanly_and_a_rerun_finishes(run):
    judge = Recording()
    budget = Budget(max_tokens=6000)
    s = explain_and_score(run, judge, "0-7", chunk=1, budget=budget, progress=False)
    assert s.stopped and "6000 tokens" in s.stopped and 0 < s.done < 8
    assert budget.tokens >= 6000 and budget.tokens < 6000 + 4 * judge.parallel * 200
    assert len(load_explanations(run)) == s.done
    rest = explain_and_score(run, Recording(), "0-7", progress=False)
    assert rest.stopped is None and rest.already_done == s.done and len(load_explanations(run)) == 8
    with pytest.raises(ValueError, match="max_cost needs price_in"):
        Budget(max_cost=1.0)
    assert Budget(max_cost=0.001, price_in=1.0).describe() == "$0.0000 of $0.001"


def test_torn_last_line_is_ignored_then_cut(run):
    explain_and_score(run, RuleJudge(), "0-1", progress=False)
    path = run / "explanations.jsonl"
    with open(path, "a") as f:
        f.write('{"latent": 1, "explan')
    assert sorted(load_explanations(run)) == [0, 1]
    append_lines(path, [{"latent": 5, "explanation": "x"}])
    assert path.read_text().count("\n") == 3 and load_explanations(run)[5]["explanation"] == "x"
    with open(path, "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match="not a JSON line"):
        load_explanations(run)


def test_other_settings_replace_lines_with_a_warning(run):
    explain_and_score(run, RuleJudge(), "0-1", progress=False)
    with pytest.warns(UserWarning, match="2 latents .* other settings"):
        explain_and_score(run, RuleJudge(), "0-1", seed=1, methods=("detection",), progress=False)
    recs = load_explanations(run)
    assert all(r["seed"] == 1 and set(r["scores"]) == {"detection"} for r in recs.values())
