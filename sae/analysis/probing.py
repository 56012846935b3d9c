"""Sparse probing (SAEBench's method), offline.

Each example (a text) becomes two vectors: the mean over its tokens (special tokens excluded) of the
hook's activations [d] and of the dictionary's codes [n]. For every class, one balanced binary task
(the class against the rest, as SAEBench does for its multi-class datasets): on the training examples
pick the top-m latents by |mean code of the class - mean code of the rest|, fit a logistic regression
on them alone, and report test accuracy for each m; a logistic regression on the full activations is
the baseline. Accuracies are averaged over the classes.

The default task needs no network: docstrings of the embedded corpus labelled by the top-level
standard-library module they come from (the `DEFAULT_CLASSES` largest modules, balanced).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.models import ModelAdapter
from activations.source import TextSource, as_source
from sae.analysis.interventions import check_fit
from sae.model import SparseAutoencoder

__all__ = ["DEFAULT_M", "default_task", "pooled_features", "probe_features", "sparse_probe"]

DEFAULT_M = (1, 2, 5, 10, 20)
DEFAULT_CLASSES = 5


def default_task(n_classes: int = DEFAULT_CLASSES, per_class: int = 100, seed: int = 0):
    """Embedded-corpus docstrings labelled by their top-level standard-library module (`text`, `label`)."""
    from datasets import Dataset

    from activations.text import embedded_corpus

    ds = embedded_corpus("all")
    modules = [i.split("/", 1)[1].split(".")[0] if i.startswith("stdlib/") else None for i in ds["id"]]
    names, counts = np.unique([m for m in modules if m], return_counts=True)
    classes = sorted(names[np.argsort(-counts, kind="stable")[:n_classes]].tolist())
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c in classes:
        rows = [i for i, m in enumerate(modules) if m == c]
        for i in rng.permutation(rows)[:per_class]:
            texts.append(ds[int(i)]["text"])
            labels.append(c)
    return Dataset.from_dict({"text": texts, "label": labels})


@torch.no_grad()
def pooled_features(
    sae: SparseAutoencoder,
    model: ModelAdapter,
    texts: Sequence[str],
    hook: str,
    context_len: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per text: mean activation [N, d] and mean code [N, n] over its first `context_len` tokens.

    Texts are sorted by length and each batch is cut to its shortest member, so no padding enters
    the model (the adapters take no attention mask).
    """
    tok = model.tokenizer
    body = context_len - (model.bos_token_id is not None)
    ids = [tok(t, add_special_tokens=False, verbose=False)["input_ids"][:body] for t in texts]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"texts {empty[:5]} have no tokens")
    head = [model.bos_token_id] if model.bos_token_id is not None else []
    special = torch.tensor(sorted(model.special_token_ids), dtype=torch.long)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    acts = torch.zeros(len(ids), sae.cfg.d_in)
    codes = torch.zeros(len(ids), sae.cfg.latents)
    for start in tqdm(range(0, len(order), batch_size), desc="probe: features", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        n = min(len(ids[i]) for i in rows)
        batch = torch.tensor([head + ids[i][:n] for i in rows])
        keep = ~torch.isin(batch, special)
        a = model.run(batch, [hook])[hook].float().cpu()
        z = sae.encode_dense(a.reshape(-1, a.shape[-1])).reshape(*a.shape[:2], -1).float().cpu()
        w = keep[..., None].float() / keep.sum(1).clamp_min(1)[:, None, None]
        acts[rows] = (a * w).sum(1)
        codes[rows] = (z * w).sum(1)
    return acts, codes


def _check_m(m: Sequence[int], n_latents: int) -> None:
    bad = [k for k in m if not isinstance(k, int) or not 1 <= k <= n_latents]
    if bad:
        raise ValueError(f"m values {bad} must lie in [1, n_latents={n_latents}]")


def _accuracy(x_train, y_train, x_test, y_test, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def probe_features(
    acts: torch.Tensor,
    codes: torch.Tensor,
    labels: Sequence[Any],
    m: Sequence[int] = DEFAULT_M,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Sparse-probe accuracies from pooled activations [N, d] and codes [N, n] with one label per row."""
    label_array = np.asarray(labels)
    _check_m(m, codes.shape[1])
    if len(label_array) != acts.shape[0] or codes.shape[0] != acts.shape[0]:
        raise ValueError(f"{len(label_array)} labels for {acts.shape[0]} activation rows and {codes.shape[0]} code rows")
    classes = np.unique(label_array)
    if len(classes) < 2:
        raise ValueError(f"sparse probing needs at least two classes, got {classes.tolist()}")
    rng = np.random.default_rng(seed)
    a, z = acts.double().numpy(), codes.double().numpy()
    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        pos, neg = np.flatnonzero(label_array == c), np.flatnonzero(label_array != c)
        k = min(len(pos), len(neg))  # balanced task, stratified split
        t = max(1, int(round(k * test_fraction)))
        if k - t < 1:
            raise ValueError(f"class {c!r} has too few examples ({len(pos)}) for a train/test split")
        pos, neg = rng.permutation(pos)[:k], rng.permutation(neg)[:k]
        train_rows, test_rows = np.r_[pos[t:], neg[t:]], np.r_[pos[:t], neg[:t]]
        y_train, y_test = np.r_[np.ones(k - t), np.zeros(k - t)], np.r_[np.ones(t), np.zeros(t)]
        z_train, z_test = z[train_rows], z[test_rows]
        diff = np.abs(z_train[y_train == 1].mean(0) - z_train[y_train == 0].mean(0))
        ranked = np.argsort(-diff, kind="stable")
        res = {"full_activations": _accuracy(a[train_rows], y_train, a[test_rows], y_test, seed)}
        for k_m in m:
            top = ranked[:k_m]
            res[f"sae_top_{k_m}"] = _accuracy(z_train[:, top], y_train, z_test[:, top], y_test, seed)
        per_class[str(c)] = res
    keys = next(iter(per_class.values())).keys()
    mean = {f"probe_{k}": float(np.mean([r[k] for r in per_class.values()])) for k in keys}
    return {**mean, "probe_classes": list(per_class), "probe_per_class": per_class, "probe_examples": len(label_array)}


def sparse_probe(
    sae: SparseAutoencoder,
    model: ModelAdapter,
    source: TextSource | Any = None,
    label_column: str = "label",
    *,
    m: Sequence[int] = DEFAULT_M,
    hook: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """SAEBench-style sparse probing of `sae` on a labelled `datasets` dataset (None: the default task).

    `source` is the dataset, or a `TextSource` holding it with its `text_column` and `context_len` (texts
    are cut to that many tokens; 128 when the dataset is given on its own). Returns mean test accuracies
    `probe_full_activations` and `probe_sae_top_{m}` over the classes' one-vs-rest tasks, plus the
    per-class figures.
    """
    src = as_source(source)
    dataset, text_column, context_len = src.dataset, src.text_column, src.context_len
    if dataset is None:
        dataset = default_task(seed=seed)
        text_column, label_column = "text", "label"
    columns = list(getattr(dataset, "column_names", None) or [])
    for col in (label_column, text_column):
        if col not in columns:
            raise ValueError(f"the dataset has no column {col!r}; it has {columns}")
    _check_m(m, sae.cfg.latents)  # before any forward pass
    hook = check_fit(model, sae, hook)
    was_training = sae.training
    sae.eval()
    try:
        acts, codes = pooled_features(sae, model, dataset[text_column], hook, context_len, batch_size, progress)
    finally:
        sae.train(was_training)
    return probe_features(acts, codes, dataset[label_column], m=m, seed=seed)
