"""One text source: which text a reader reads and how it is cut into contexts.

The command line builds one `TextSource`; the activation stream, the held-out evaluation, the feature
statistics and the sparse probe read it, so a setting given once (a hub dataset's config, a text column)
reaches every reader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from activations.text import (
    check_local_text,
    content_fingerprint,
    describe_source,
    is_local_source,
    iter_texts,
    load_text,
    pack_contexts,
)

__all__ = ["TextSource", "as_source"]


@dataclass(frozen=True)
class TextSource:
    """Where text comes from and how it is packed into contexts."""

    dataset: Any = None
    """Text: a hub dataset name or local .txt/.json/.jsonl/.parquet files; empty = the embedded corpus."""
    dataset_config: str | None = None
    """Configuration of a hub dataset (the second argument of datasets.load_dataset), e.g. 'wikitext-103-raw-v1'."""
    split: str = "train"
    """Dataset split read (local files and the embedded corpus hold out every 20th document as 'test')."""
    text_column: str = "text"
    """Column holding the text, for hub datasets and .json/.jsonl/.parquet files."""
    context_len: int = 128
    """Tokens per context."""

    def __post_init__(self) -> None:
        for name in ("dataset", "dataset_config"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)  # the command line's empty string: not given
        if isinstance(self.context_len, bool) or not isinstance(self.context_len, int) or self.context_len < 2:
            raise ValueError(f"context_len must be an int >= 2, got {self.context_len!r}")
        for name in ("split", "text_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.dataset_config is not None and not isinstance(self.dataset_config, str):
            raise ValueError(f"dataset_config must be a string, got {self.dataset_config!r}")

    def replace(self, **changes: Any) -> TextSource:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def streamed(self) -> bool:
        """Hub names and local files are read streaming; the embedded corpus and in-memory datasets are not."""
        return isinstance(self.dataset, str | os.PathLike) and self.dataset != "embedded"

    def open(self, streaming: bool | None = None):
        """The dataset's split (a `datasets` dataset holding `text_column`), streamed where `streamed` says."""
        return load_text(
            self.dataset,
            split=self.split,
            config=self.dataset_config,
            text_column=self.text_column,
            streaming=self.streamed if streaming is None else streaming,
        )

    def texts(self, opened=None) -> Iterator[str]:
        """The non-empty texts of the split, in order; `opened`: what `open()` returned, to read it again."""
        return iter_texts(self.open() if opened is None else opened, self.text_column)

    def contexts(self, model: Any, opened=None) -> Iterator[torch.Tensor]:
        """`[context_len]` token contexts packed for `model` (a `ModelAdapter`): BOS first where it has one."""
        return pack_contexts(self.texts(opened), model.tokenizer, self.context_len, model.bos_token_id, model.sep_token_id)

    @property
    def countable(self) -> bool:
        """Whether the split's size can be counted before a run: the embedded corpus, local files, in-memory data
        (a hub dataset is streamed, and its size is not known until it ends)."""
        return not isinstance(self.dataset, str | os.PathLike) or self.dataset == "embedded" or is_local_source(self.dataset)

    def count_tokens(self, model: Any, limit: int) -> int:
        """The non-special tokens of the split's contexts for `model` (what a harvest can yield), counted only up
        to `limit`: the text is tokenised no further than that."""
        special = torch.tensor(sorted(model.special_token_ids), dtype=torch.long)
        count = 0
        for ctx in self.contexts(model):
            count += int((~torch.isin(ctx, special)).sum())
            if count >= limit:
                break
        return count

    def describe(self) -> str:
        """A stable name of the dataset and split, for cache manifests and messages."""
        return describe_source(self.dataset, self.split, self.dataset_config)

    def fingerprint(self) -> str | None:
        """A hash of a local source's files (None for hub, embedded and in-memory sources)."""
        return content_fingerprint(self.dataset)

    def check_local(self) -> None:
        """For local files: they exist, are of one kind, (text kinds) decode as UTF-8 and (JSON lines) parse, with a
        string in the text column of every line."""
        check_local_text(self.dataset, self.text_column)


def as_source(
    source: TextSource | Any, default: TextSource | None = None, *, split: str | None = None, context_len: int | None = None
) -> TextSource:
    """`source` as a `TextSource`: one is taken as given; anything else (None, a hub name, a path, a `datasets`
    dataset) becomes the dataset of `default`. `split` and `context_len`, when given, replace the source's."""
    src = source if isinstance(source, TextSource) else (default or TextSource()).replace(dataset=source)
    changes = {k: v for k, v in (("split", split), ("context_len", context_len)) if v is not None}
    return src.replace(**changes) if changes else src
