"""Text in, fixed-length token contexts out.

`load_text` returns a `datasets` dataset (hub name, local files, an in-memory `Dataset`, or the
embedded default corpus); `pack_contexts` tokenizes a stream of documents and packs it into
fixed-length contexts: BOS/CLS first where the model expects one, documents joined by a
separator token (SEP/EOS), no padding.
"""

from __future__ import annotations

import ast
import codecs
import glob
import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "embedded_corpus",
    "load_text",
    "pack_contexts",
    "iter_texts",
    "describe_source",
    "check_local_text",
    "content_fingerprint",
]

# Document i of the sorted embedded corpus belongs to "test" when i % TEST_EVERY == TEST_EVERY - 1.
TEST_EVERY = 20
_CORPUS_VERSION = 1
_MIN_DOCSTRING = 120
_SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "__phello__",
    "__pycache__",
}
_LOCAL_SUFFIXES = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


# --- the embedded corpus ----------------------------------------------------------------------
def _collect_documents() -> list[dict[str, str]]:
    """pydoc topics plus standard-library docstrings (module, class, function), sorted by id."""
    import pydoc_data.topics as topics

    docs = {f"pydoc/{k}": v for k, v in topics.topics.items() if v.strip()}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts)
        stack: list[tuple[ast.AST, str]] = [(tree, module)]
        while stack:
            node, qual = stack.pop()
            doc = (
                ast.get_docstring(node)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if doc and len(doc) >= _MIN_DOCSTRING:
                docs.setdefault(f"stdlib/{qual}", doc)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    stack.append((child, f"{qual}.{child.name}"))
    return [{"id": k, "text": docs[k]} for k in sorted(docs)]


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saekit"
    return base / f"embedded-corpus-v{_CORPUS_VERSION}-py{platform.python_version()}.jsonl"


@lru_cache(maxsize=1)
def _embedded_documents() -> tuple[dict[str, str], ...]:
    path = _cache_file()
    if path.exists():
        try:
            with open(path, encoding="utf-8") as f:
                return tuple(json.loads(line) for line in f)
        except (OSError, json.JSONDecodeError):
            pass  # unreadable cache: rebuild below
    docs = _collect_documents()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return tuple(docs)


def _in_split(index: int, split: str) -> bool:
    """Document `index` belongs to `split` ("train" or "test"): every TEST_EVERY-th document is "test"."""
    return (index % TEST_EVERY == TEST_EVERY - 1) == (split == "test")


def embedded_corpus(split: str = "train"):
    """The embedded default corpus as a `datasets.Dataset` with `id` and `text` columns.

    English prose shipped with Python itself: the `pydoc_data.topics` help texts plus the
    docstrings (at least 120 characters) of standard-library modules, classes and functions,
    about 1.6 MB. Documents are sorted by id; every 20th (index % 20 == 19) is in `"test"`, the
    rest in `"train"` (`"all"` gives both). Deterministic for a given Python version; built once
    (a few seconds) and cached under ~/.cache/saekit.
    """
    from datasets import Dataset

    docs = _embedded_documents()
    if split in ("train", "test"):
        rows = [d for i, d in enumerate(docs) if _in_split(i, split)]
    elif split == "all":
        rows = list(docs)
    else:
        raise ValueError(f"embedded corpus split must be 'train', 'test' or 'all', got {split!r}")
    return Dataset.from_dict({"id": [d["id"] for d in rows], "text": [d["text"] for d in rows]})


# --- loading any source -----------------------------------------------------------------------
def _looks_local(source: str) -> bool:
    return (
        Path(source).suffix.lower() in _LOCAL_SUFFIXES
        or source.startswith((".", "/", "~"))
        or os.sep in source.rstrip(os.sep)
        and Path(source).exists()
    )


def _is_local(source: str) -> bool:
    return _looks_local(source) or Path(os.path.expanduser(source)).exists()


def is_local_source(source: Any) -> bool:
    """Whether `source` names local files (a path or a path-like string; not the embedded corpus, a hub name or an
    in-memory dataset)."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return isinstance(source, str) and source != "embedded" and _is_local(source)


def load_text(
    source: Any = None,
    split: str = "train",
    config: str | None = None,
    text_column: str = "text",
    streaming: bool = False,
    **load_kwargs: Any,
):
    """A `datasets` dataset with a text column, from any source.

    - `None` or `"embedded"`: the embedded default corpus (`split` "train" or "test").
    - a `datasets.Dataset` / `IterableDataset` / `DatasetDict`: used as given (`split` picks from a dict).
    - a path to a `.txt` (one document per line), `.json`/`.jsonl` or `.parquet` file, a glob of
      them, or a folder of them: local files. They have no splits of their own: as in the embedded
      corpus, every 20th document (index % 20 == 19) is `"test"`, the rest `"train"`; `"all"` is both.
    - anything else: a hub dataset name, loaded with `load_dataset(source, config, split=split)`.

    `streaming=True` gives an `IterableDataset` so the corpus never has to fit in memory. The
    dataset must have `text_column`; a missing column, or a local path that does not exist,
    raises a ValueError / FileNotFoundError naming it.
    """
    import datasets

    if source is None or (isinstance(source, str) and source == "embedded"):
        ds = embedded_corpus(split)
        return ds.to_iterable_dataset() if streaming else ds
    if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not in the dataset; it has {sorted(source)}")
        source = source[split]
    if isinstance(source, datasets.Dataset | datasets.IterableDataset):
        _check_column(source, text_column, "the dataset given")
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"dataset must be None, a name, a path or a datasets.Dataset, got {type(source).__name__}")
    if _is_local(source):
        ds = _load_local(os.path.expanduser(source), streaming, **load_kwargs)
        _check_column(ds, text_column, source)
        # blank rows (a .txt file's paragraph breaks) are no documents: the held-out split counts real ones
        ds = ds.filter(lambda row: not _is_blank(row[text_column]))
        return _local_split(ds, split, source)
    ds = datasets.load_dataset(source, config, split=split, streaming=streaming, **load_kwargs)
    _check_column(ds, text_column, source)
    return ds


def _local_files(source: str) -> list[Path]:
    """The files a local source names (a file, a glob, or a folder), of one kind, none empty."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _LOCAL_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no .txt/.json/.jsonl/.parquet files in dataset folder {source!r}")
    elif any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(source))
        if not files:
            raise FileNotFoundError(f"dataset pattern {source!r} matches no file")
    else:
        if not path.exists():
            raise FileNotFoundError(f"dataset file {source!r} does not exist")
        files = [path]
    kinds = {_LOCAL_SUFFIXES.get(p.suffix.lower()) for p in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(
            f"local dataset {source!r}: expected files of one kind among "
            f"{sorted(_LOCAL_SUFFIXES)}, got {sorted({p.suffix for p in files})}"
        )
    for p in files:
        if p.stat().st_size == 0:
            raise ValueError(f"dataset file {str(p)!r} is empty")
    return files


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file read once per process
_COLUMNS_CHECKED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, text column) of JSON lines checked


def _file_digest(path: Path, text_column: str | None = None) -> str:
    """SHA-256 of a corpus file; a text kind (.txt, .json, .jsonl) must also be UTF-8, else a ValueError
    names the file and the byte offset of the first bad byte (not a traceback from deep inside datasets); JSON lines
    must parse, one object a line, with a string (or null) at `text_column` when given, else the line is named."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    json_kind = path.suffix.lower() in (".json", ".jsonl")
    if key in _DIGESTS and (text_column is None or not json_kind or (*key, text_column) in _COLUMNS_CHECKED):
        return _DIGESTS[key]
    text = _LOCAL_SUFFIXES.get(path.suffix.lower()) != "parquet"
    lines = _JsonLines(path, text_column) if json_kind else None
    decoder = codecs.getincrementaldecoder("utf-8")()
    h, offset = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            if text:
                decoded = _decode(decoder, block, offset, path)
                if lines is not None:
                    lines.feed(decoded)
            offset += len(block)
    if text:
        decoded = _decode(decoder, b"", offset, path, final=True)
        if lines is not None:
            lines.feed(decoded, final=True)
    _DIGESTS[key] = h.hexdigest()
    if text_column is not None and json_kind:
        _COLUMNS_CHECKED.add((*key, text_column))
    return _DIGESTS[key]


class _JsonLines:
    """Each line of a JSON-lines file parses as a JSON object, else a ValueError names the file and the line (not a
    parser's row count from deep inside datasets, after minutes of work). A .json file whose first line is not a
    whole object is one JSON document, left to its reader."""

    def __init__(self, path: Path, text_column: str | None = None) -> None:
        self.path, self.rest, self.number, self.json_lines = path, "", 0, path.suffix.lower() == ".jsonl"
        self.text_column = text_column
        self.one_document = False

    def feed(self, text: str, final: bool = False) -> None:
        if self.one_document:
            return
        lines = (self.rest + text).split("\n")
        self.rest = "" if final else lines.pop()
        for line in lines:
            self.number += 1
            if line.strip() and not self.one_document:
                self._check(line)

    def _check(self, line: str) -> None:
        try:
            value = json.loads(line)
        except ValueError as e:
            if not self.json_lines and self.number == 1:
                self.one_document = True
                return
            raise ValueError(f"dataset file {str(self.path)!r} line {self.number} is not valid JSON ({e})") from None
        self.json_lines = True
        if not isinstance(value, dict):
            raise ValueError(
                f"dataset file {str(self.path)!r} line {self.number} holds a JSON {type(value).__name__}; "
                "expected one object per line"
            )
        text = value.get(self.text_column) if self.text_column is not None else None
        if text is not None and not isinstance(text, str):
            shown = repr(text)
            raise ValueError(
                f"dataset file {str(self.path)!r} line {self.number}: text column {self.text_column!r} holds a "
                f"{type(text).__name__} ({shown[:60] + '...' if len(shown) > 60 else shown}); expected a string"
            )


def _decode(decoder: codecs.IncrementalDecoder, block: bytes, offset: int, path: Path, final: bool = False) -> str:
    pending = len(decoder.getstate()[0])  # bytes of an unfinished character carried from the previous block
    try:
        return decoder.decode(block, final=final)
    except UnicodeDecodeError as e:
        at = offset - pending + e.start
        raise ValueError(
            f"dataset file {str(path)!r} is not UTF-8 text: byte offset {at} ({e.reason}); "
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def check_local_text(source: Any, text_column: str | None = None) -> None:
    """For a local source: its files exist, are of one kind, (text kinds) decode as UTF-8 and (JSON lines) parse, with
    strings at `text_column` when given. Others: nothing."""
    if is_local_source(source):
        for p in _local_files(os.path.expanduser(os.fspath(source))):
            _file_digest(p, text_column)


def content_fingerprint(source: Any) -> str | None:
    """A hash of a local source's files (names and contents), so a cache of an edited corpus is not reused;
    None for hub, embedded and in-memory sources (their descriptions already pin them)."""
    if not is_local_source(source):
        return None
    h = hashlib.sha256()
    for p in _local_files(os.path.expanduser(os.fspath(source))):
        h.update(f"{p.name}\0{_file_digest(p)}\0".encode())
    return h.hexdigest()[:16]


def _load_local(source: str, streaming: bool, **kwargs: Any):
    import datasets

    files = _local_files(source)
    for p in files:
        _file_digest(p)  # refuse a non-UTF-8 text file here, naming it and the byte offset
    builder = _LOCAL_SUFFIXES[files[0].suffix.lower()]
    return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=streaming, **kwargs)


def _local_split(ds, split: str, source: str):
    """Local files have no splits: hold out every 20th document as "test", as the embedded corpus does.

    Without this a run's held-out metrics would be scored on its own training text.
    """
    import datasets

    if split == "all":
        return ds
    if split not in ("train", "test"):
        raise ValueError(f"local dataset {source!r}: split must be 'train', 'test' or 'all', got {split!r}")
    if isinstance(ds, datasets.Dataset):
        return ds.select([i for i in range(len(ds)) if _in_split(i, split)])
    return ds.filter(lambda _row, i: _in_split(i, split), with_indices=True)


def _check_column(ds, column: str, what: str) -> None:
    names = ds.column_names
    if names is None:  # some streaming datasets only know their columns after the first row
        first = next(iter(ds), None)
        names = list(first) if first is not None else []
    if column not in names:
        raise ValueError(f"text column {column!r} not in {what}; its columns are {list(names)}")


def describe_source(source: Any, split: str, config: str | None = None) -> str:
    """A stable string naming a dataset source, for cache manifests."""
    if source is None or source == "embedded":
        return f"embedded-v{_CORPUS_VERSION}-py{platform.python_version()}:{split}"
    if isinstance(source, str | os.PathLike):
        p = Path(os.fspath(source))
        if p.exists():
            return f"file:{p.resolve()}:{split}"
        return f"hub:{source}:{config}:{split}"
    fp = getattr(source, "_fingerprint", None)
    return f"{type(source).__name__}:{fp or id(source)}"


def _is_blank(text: Any) -> bool:
    """None, or a string of white space only (a non-string is no blank: `iter_texts` refuses it by name)."""
    return text is None or (isinstance(text, str) and not text.strip())


def iter_texts(ds, text_column: str = "text") -> Iterator[str]:
    """The non-empty texts of a dataset, in order; a value that is not a string is refused, naming its row."""
    for i, row in enumerate(ds):
        text = row[text_column]
        if _is_blank(text):
            continue
        if not isinstance(text, str):
            shown = repr(text)
            raise ValueError(
                f"text column {text_column!r} holds a value of type {type(text).__name__} in row {i} of the dataset "
                f"as read ({shown[:60] + '...' if len(shown) > 60 else shown}); expected strings"
            )
        yield text


# --- packing ----------------------------------------------------------------------------------
def pack_contexts(
    texts: Iterable[str],
    tokenizer,
    context_len: int,
    bos_token_id: int | None,
    sep_token_id: int | None,
    doc_batch: int = 64,
) -> Iterator[torch.Tensor]:
    """Pack documents into `[context_len]` int64 contexts.

    Each context starts with `bos_token_id` (when not None) and is filled with the tokens of
    consecutive documents, each document followed by `sep_token_id` (when not None). A document
    longer than a context continues in the next one. The final partial context is dropped, so no
    position is padding. Documents are cut into pieces of at most `PIECE_CHARS` characters (`text_pieces`), and
    `doc_batch` pieces are tokenized per call, so memory does not grow with a line's length.
    """
    body = context_len - (1 if bos_token_id is not None else 0)
    if body < 1:
        raise ValueError(f"context_len {context_len} leaves no room for text after the BOS token")
    head = [bos_token_id] if bos_token_id is not None else []
    tail = [sep_token_id] if sep_token_id is not None else []
    buf: list[int] = []
    started = False  # the current document has tokens (its separator is then due)

    def flush(pieces: list[str], ends: list[bool]) -> Iterator[torch.Tensor]:
        nonlocal buf, started
        ids = tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]
        for doc, last in zip(ids, ends):
            buf.extend(doc)
            started = started or bool(doc)
            if last:  # a document's separator follows its last piece (none for a document without tokens)
                if started:
                    buf.extend(tail)
                started = False
        n_full = len(buf) // body
        for i in range(n_full):
            yield torch.tensor(head + buf[i * body : (i + 1) * body], dtype=torch.long)
        buf = buf[n_full * body :]

    pieces: list[str] = []
    ends: list[bool] = []
    for text in texts:
        cut = text_pieces(text)
        for i, piece in enumerate(cut):
            pieces.append(piece)
            ends.append(i == len(cut) - 1)
            if len(pieces) == doc_batch:
                yield from flush(pieces, ends)
                pieces, ends = [], []
    if pieces:
        yield from flush(pieces, ends)


PIECE_CHARS = 1 << 16  # characters of a document tokenized at once: a 60 MB line must not need gigabytes


def text_pieces(text: str, limit: int | None = None) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, each cut just before a white-space character, so a
    word and the space before it stay together: tokenizers that split at white space first (BERT's WordPiece,
    GPT-2's byte-level BPE) give the pieces the tokens of the whole; others may differ by a token at a cut, one
    in `limit` characters. A run of `limit` characters without white space is cut where the limit falls.
    `limit`: `PIECE_CHARS` unless given."""
    limit = limit or PIECE_CHARS
    if len(text) <= limit:
        return [text]
    pieces, start = [], 0
    while len(text) - start > limit:
        window = text[start + 1 : start + limit + 1]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        end = start + 1 + cut if cut >= 0 else start + limit
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def corpus_digest(texts: Iterable[str]) -> str:
    """A short hash of a text sequence (for tests and manifests)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
