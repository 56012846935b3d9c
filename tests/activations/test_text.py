import json

import pytest
import torch
from datasets import Dataset, IterableDataset

from activations import embedded_corpus, load_text
from activations.text import iter_texts, pack_contexts


def test_embedded_corpus_splits_are_disjoint_deterministic_and_sized():
    train, test = embedded_corpus("train"), embedded_corpus("test")
    assert train.column_names == ["id", "text"] and "text" in test.column_names
    assert set(train["id"]).isdisjoint(test["id"])
    n = len(train) + len(test)
    assert abs(len(test) / n - 0.05) < 0.01
    assert 1_000_000 < sum(map(len, train["text"])) + sum(map(len, test["text"])) < 4_000_000
    assert embedded_corpus("test")["id"] == test["id"]  # same rule, same documents
    every = embedded_corpus("all")["id"]
    assert every == sorted(every) and test["id"] == every[19::20]
    with pytest.raises(ValueError, match="'validation'"):
        embedded_corpus("validation")


def test_load_text_default_is_embedded():
    assert load_text()["id"] == embedded_corpus("train")["id"]
    assert load_text("embedded", split="test")["id"] == embedded_corpus("test")["id"]
    assert isinstance(load_text(None, streaming=True), IterableDataset)


def test_pack_contexts_bos_separators_no_padding(minilm):
    tok = minilm.tokenizer
    docs = ["The cat sat on the mat.", "A second document, somewhat longer than the first one.", "Third."] * 5
    ctxs = list(pack_contexts(docs, tok, 16, minilm.bos_token_id, minilm.sep_token_id, doc_batch=4))
    body = []
    for d in docs:
        body += tok(d, add_special_tokens=False)["input_ids"] + [minilm.sep_token_id]
    assert len(ctxs) == len(body) // 15
    for i, c in enumerate(ctxs):
        assert c.dtype == torch.long and c.shape == (16,)
        assert c[0] == minilm.bos_token_id == tok.cls_token_id
        assert c[1:].tolist() == body[i * 15 : (i + 1) * 15]  # documents concatenated in order
        assert tok.pad_token_id not in c.tolist()
    assert sum(c.tolist().count(minilm.sep_token_id) for c in ctxs) >= len(docs) - 2


def test_pack_contexts_without_bos():
    class Tok:
        def __call__(self, texts, add_special_tokens, verbose):
            return {"input_ids": [[len(w) for w in t.split()] for t in texts]}

    ctxs = list(pack_contexts(["a bb ccc", "dddd"], Tok(), 3, None, 9))
    assert [c.tolist() for c in ctxs] == [[1, 2, 3], [9, 4, 9]]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "parquet"])
def test_local_files(tmp_path, kind):
    texts = ["first document here", "second document there", "third one"]
    if kind == "txt":
        path = _write(tmp_path, "c.txt", "\n".join(texts) + "\n")
    elif kind in ("jsonl", "json"):
        path = _write(tmp_path, f"c.{kind}", "\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(texts)))
    else:
        path = tmp_path / "c.parquet"
        Dataset.from_dict({"text": texts}).to_parquet(str(path))
    ds = load_text(str(path))
    assert list(iter_texts(ds)) == texts
    streamed = load_text(path, streaming=True)
    assert isinstance(streamed, IterableDataset) and list(iter_texts(streamed)) == texts


def test_local_folder_and_other_column(tmp_path):
    _write(tmp_path, "a.jsonl", json.dumps({"body": "alpha"}) + "\n")
    _write(tmp_path, "b.jsonl", json.dumps({"body": "beta"}) + "\n")
    assert list(iter_texts(load_text(str(tmp_path), text_column="body"), "body")) == ["alpha", "beta"]


def test_in_memory_dataset():
    ds = Dataset.from_dict({"text": ["x y z"]})
    assert load_text(ds) is ds


def test_missing_local_path_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "corpus.jsonl")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_text(missing)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_text("./nothing_here")


def test_missing_text_column_lists_columns(tmp_path):
    path = _write(tmp_path, "c.jsonl", json.dumps({"body": "alpha"}) + "\n")
    with pytest.raises(ValueError, match=r"'text'.*\['body'\]"):
        load_text(str(path))
    with pytest.raises(ValueError, match="'content'"):
        load_text(Dataset.from_dict({"text": ["a"]}), text_column="content")


def test_empty_local_file(tmp_path):
    path = _write(tmp_path, "empty.txt", "")
    with pytest.raises(ValueError, match="empty.txt"):
        load_text(str(path))


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return Dataset.from_dict({"text": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = load_text("someone/corpus", split="validation", config="en", streaming=True)
    assert calls == [("someone/corpus", "en", "validation", True)] and ds["text"] == ["from the hub"]


@pytest.mark.parametrize("streaming", [False, True])
def test_local_files_hold_out_every_twentieth_document(tmp_path, streaming):
    texts = [f"document number {i}" for i in range(45)]
    path = _write(tmp_path, "c.jsonl", "\n".join(json.dumps({"text": t}) for t in texts))
    train = list(iter_texts(load_text(str(path), split="train", streaming=streaming)))
    test = list(iter_texts(load_text(str(path), split="test", streaming=streaming)))
    assert test == [texts[19], texts[39]]
    assert train == [t for t in texts if t not in test]
    assert list(iter_texts(load_text(str(path), split="all", streaming=streaming))) == texts
    with pytest.raises(ValueError, match="'validation'"):
        load_text(str(path), split="validation")


@pytest.mark.parametrize(
    "data, offset",
    [
        (b"a" * ((1 << 22) - 1) + "\u00e9".encode() + b"\xff\n", (1 << 22) + 1),  # a character across a read block
        (b"fine line\nna\xefve\n", 12),
        (b"ends mid-character \xc3", 19),
    ],
)
def test_a_non_utf8_local_file_is_refused_naming_it_and_the_byte_offset(tmp_path, data, offset):
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"dataset file '.*corpus\.txt' is not UTF-8 text: byte offset {offset} "):
        load_text(str(path), streaming=True)


@pytest.mark.parametrize("streaming", [False, True])
def test_blank_lines_are_no_documents_and_the_held_out_split_counts_real_ones(tmp_path, streaming):
    """Paragraphs separated by blank lines: every 20th paragraph is held out, not every 20th line."""
    corpus = tmp_path / "paragraphs.txt"
    paragraphs = [f"paragraph {i} of plain words" for i in range(100)]
    corpus.write_text("\n\n".join(paragraphs) + "\n")
    test = list(iter_texts(load_text(str(corpus), split="test", streaming=streaming)))
    train = list(iter_texts(load_text(str(corpus), split="train", streaming=streaming)))
    assert test == paragraphs[19::20] and len(train) == 95 and not set(test) & set(train)


def test_a_non_string_text_value_is_named_with_its_line_or_row(tmp_path):
    from activations.text import check_local_text

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": v}) for v in ["one", "two", None, 3, "five"]) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl' line 4: text column 'text' holds a int \(3\); expected a string"):
        check_local_text(str(corpus), "text")  # before the model loads: what TextSource.check_local runs
    check_local_text(str(corpus), "other")  # no such key on the lines: the column check belongs to the reader
    ds = [{"text": "one"}, {"text": 3}]  # rows as a dataset yields them (Arrow would refuse the mixed column)
    with pytest.raises(ValueError, match=r"holds a value of type int in row 1 of the dataset as read \(3\)"):
        list(iter_texts(ds))


@pytest.mark.parametrize(
    "line, message",
    [("{bad json", r"line 3 is not valid JSON \(Expecting property name"), ("[1, 2]", r"line 3 holds a JSON list")],
)
def test_a_bad_json_line_is_named_by_file_and_line_before_any_reading(tmp_path, line, message):
    from activations.text import check_local_text

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a"}) + "\n\n" + line + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(ValueError, match=message):
        check_local_text(str(corpus))
    document = tmp_path / "one.json"  # a single JSON document over several lines is not JSON lines
    document.write_text(json.dumps({"rows": [{"text": "a"}, {"text": "b"}]}, indent=2))
    check_local_text(str(document))


def test_a_long_line_is_tokenized_in_bounded_pieces_with_the_tokens_of_the_whole(minilm, monkeypatch):
    import activations.text as text

    words = " ".join(f"word{i % 97} and more" for i in range(3000))  # one 'line' of about 45k characters
    tok = minilm.tokenizer
    seen: list[int] = []

    class Recording:
        def __call__(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return tok(texts, **kw)

    whole = list(pack_contexts([words, "a short one"], tok, 64, minilm.bos_token_id, minilm.sep_token_id))
    monkeypatch.setattr(text, "PIECE_CHARS", 1000)
    pieces = text.text_pieces(words)
    assert "".join(pieces) == words and max(map(len, pieces)) <= 1000 and len(pieces) > 40
    cut = list(pack_contexts([words, "a short one"], Recording(), 64, minilm.bos_token_id, minilm.sep_token_id))
    assert max(seen) <= 1000
    assert len(cut) == len(whole) and all(torch.equal(a, b) for a, b in zip(cut, whole))
