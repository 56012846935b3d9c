"""One text source: its fields checked where they enter, and every reader reading the same text from it."""

import pytest
from datasets import Dataset

from activations import TextSource
from activations.source import as_source
from activations.text import iter_texts, load_text


def test_empty_strings_are_not_given_and_bad_fields_are_refused():
    src = TextSource(dataset="", dataset_config="")
    assert src.dataset is None and src.dataset_config is None
    assert src.describe() == TextSource().describe() and src.describe().startswith("embedded")
    for bad, message in (
        ({"context_len": 1}, "context_len must be an int >= 2, got 1"),
        ({"context_len": True}, "context_len must be an int >= 2"),
        ({"split": ""}, "split must be a non-empty string"),
        ({"text_column": None}, "text_column must be a non-empty string"),
    ):
        with pytest.raises(ValueError, match=message):
            TextSource(**bad)


def test_as_source_takes_a_source_as_given_and_a_dataset_with_the_readers_defaults():
    given = TextSource("corpus.txt", split="all", context_len=16)
    assert as_source(given) is given
    assert as_source(given, split="test") == TextSource("corpus.txt", split="test", context_len=16)
    default = TextSource(split="test", context_len=64)
    assert as_source("corpus.txt", default) == TextSource("corpus.txt", split="test", context_len=64)
    assert as_source(None, default, context_len=8) == TextSource(split="test", context_len=8)


def test_open_reads_what_load_text_reads(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"body": "document {i}"}}\n' for i in range(40)))
    src = TextSource(str(path), split="test", text_column="body")
    assert src.streamed and not TextSource().streamed
    want = list(iter_texts(load_text(str(path), split="test", text_column="body"), "body"))
    assert list(src.texts()) == want == ["document 19", "document 39"]
    ds = Dataset.from_dict({"text": ["a", "b"]})
    assert TextSource(ds).open() is ds


def test_contexts_are_packed_for_the_model(minilm):
    src = TextSource(Dataset.from_dict({"text": ["one two three four five six seven eight nine ten"] * 4}), context_len=8)
    ctxs = list(src.contexts(minilm))
    assert ctxs and all(c.shape == (8,) and c[0] == minilm.bos_token_id for c in ctxs)
