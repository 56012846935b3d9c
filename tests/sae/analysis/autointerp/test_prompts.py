"""Prompts mark the right tokens; answers that are not a clear yes/no or explanation parse to None."""

import pytest

from sae.analysis.autointerp.prompts import (
    detection_messages,
    explain_messages,
    fuzzing_messages,
    parse_explanation,
    parse_verdicts,
    passage,
)
from sae.analysis.autointerp.sampling import Example


def test_passage_marks_after_the_leading_space_and_keeps_one_line():
    ex = Example((1, 2, 3), (0.0, 2.0, 0.0), 2.0, 1, "top")
    assert passage(ex, [" the", " cat", " sat"]) == "the cat sat"
    assert passage(ex, [" the", " cat", " sat"], [False, True, False]) == "the <<cat>> sat"
    assert passage(ex, ["a", "\nb", "c"], [True, False, True]) == "<<a>>\u21b5b<<c>>"


def test_explain_prompt_lists_marked_tokens_with_a_1_to_9_scale():
    exs = [Example((1, 2), (0.0, 4.0), 4.0, 1, "top"), Example((1, 2), (0.5, 0.0), 0.5, 0, "quantile")]
    msgs = explain_messages(exs, [[" a", " b"], [" c", " d"]], max_act=4.0)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Passage 1: a <<b>>\nActive: b (9)" in user
    assert "Passage 2: <<c>> d\nActive: c (1)" in user


def test_scoring_prompts_one_passage_or_numbered():
    one = detection_messages('the words "x"', ["p q"])
    assert one[1]["content"] == 'Explanation: the words "x"\n\nPassage: p q'
    assert "Answer with one word: yes or no." in one[0]["content"]
    many = fuzzing_messages("e", ["a <<b>>", "c"])
    assert many[1]["content"].endswith("Passages:\n1. a <<b>>\n2. c")
    assert '"1: no"' in many[0]["content"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('Explanation: the word "cat"', 'the word "cat"'),
        ("Sure!\nExplanation: **numbers in a list**\n", "numbers in a list"),
        ("explanation:\n  dates", "dates"),
        ('"a quoted phrase"', "a quoted phrase"),
        ("A lone line", "A lone line"),
        ("Let me think.\nIt is hard to say.", None),
        ("", None),
        ("Explanation:", None),
    ],
)
def test_parse_explanation(answer, expected):
    assert parse_explanation(answer) == expected


@pytest.mark.parametrize(
    "answer, n, expected",
    [
        ("yes", 1, [True]),
        ("No.", 1, [False]),
        ("**Yes**, it fires", 1, [True]),
        ("yes or no? no", 1, [None]),
        ("It is hard to say.", 1, [None]),
        ("1: yes\n2: no\n3) YES", 3, [True, False, True]),
        ("1: yes\n3: no", 3, [True, None, False]),
        ("1: yes\n1: no\n2: no", 2, [None, False]),
        ("yes, no", 2, [None, None]),
    ],
)
def test_parse_verdicts_never_guesses(answer, n, expected):
    assert parse_verdicts(answer, n) == expected
