"""Latents whose ground truth is known, for checking the scorer itself: feature statistics of a hand-made
dictionary over a synthetic word corpus, written by the real `feature_stats` pass.

The "model" reads one-hot codes of each token and of the token before it; each latent is one encoder
column over those codes, so a latent fires exactly on a set of words ("words" latents) or exactly on the
word after a given word ("after" latents), and nowhere else. Each latent's `truth` is an explanation in
the grammar `RuleJudge` reads (`the words "a", "b"` / `the word after "a"`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from activations.models import ModelAdapter

__all__ = ["HOOK", "WORDS", "SyntheticLatent", "synthetic_stats", "word_tokenizer"]

HOOK = "words.hook_onehot"
WORDS = tuple(
    """the of and to in is that it was for on are as with his they at be this from have or by one had not but what
    all were when we there can an your which their said if do will each about how up out them then she many some
    so these would other into has more her two like him see time could no make than first been its who now people
    my made over did down only way find use may water long little very after words called just where most know get
    through back much before go good new write our used me man too any day same right look think also around another
    came come work three word must because does part even place well such here take why things help put years different
    away again off went old number great tell men say small every found still between name should home big give air
    line set own under read last never us left end along while might next sound below saw something thought both few
    those always looked show large often together asked house world going want school important until form food keep
    children feet land side without boy once animals life enough took sometimes four head above kind began almost live
    page got earth need far hand high year mother light parts country father let night following picture being study
    second eyes soon times story boys since white days ever paper hard near sentence better best across during today
    others however sure means knew try told young miles sun ways thing whole hear example heard several change answer
    room sea against top turned learn point city play toward five using himself usually""".split()
)


def word_tokenizer(words: tuple[str, ...] = WORDS):
    """A word-level fast tokenizer: documents are words joined by '|', each token ' word' (space included)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>"] + [" " + w for w in words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("|", behavior="removed")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", pad_token="<unk>")


class _WordCodes(ModelAdapter):
    """A 'model' whose only hook gives [one-hot(token), one-hot(previous token)] per position."""

    backend = "synthetic"

    def __init__(self, tokenizer, context_len: int) -> None:
        self.name = "synthetic-words"
        self.model = None
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer)
        self.d_model = 2 * self.vocab
        self.n_layers = 1
        self.max_context = context_len
        self.device = torch.device("cpu")
        self.is_causal = False
        self._init_tokens(encoder_style=False, prepend_bos=True)
        self.sep_token_id = None  # documents run on: every position is a word

    def hook_names(self) -> list[str]:
        return [HOOK]

    def _forward(self, tokens, hooks, stop):
        one = torch.nn.functional.one_hot(tokens, self.vocab).float()
        prev = torch.cat([torch.zeros_like(one[:, :1]), one[:, :-1]], 1)
        return {HOOK: torch.cat([one, prev], -1)}

    def unembedding(self):
        return None

    def input_embedding(self) -> torch.Tensor:
        return torch.eye(self.vocab, self.d_model)


@dataclass(frozen=True)
class SyntheticLatent:
    """Ground truth of one latent: it fires exactly on `words` ("words") or on the word after one of them ("after")."""

    kind: str
    words: tuple[str, ...]

    @property
    def truth(self) -> str:
        quoted = ", ".join(f'"{w}"' for w in self.words)
        return f"the word after {quoted}" if self.kind == "after" else f"the words {quoted}"

    def fires(self, words: list[str]) -> list[bool]:
        """Where this latent fires in a sequence of words."""
        if self.kind == "words":
            return [w in self.words for w in words]
        return [i > 0 and words[i - 1] in self.words for i in range(len(words))]


def _zipf(n: int, s: float) -> list[float]:
    w = [1.0 / (r + 2) ** s for r in range(n)]
    total = sum(w)
    return [x / total for x in w]


def synthetic_stats(
    n_words: int = 24,
    n_after: int = 8,
    tokens: int = 32_768,
    context_len: int = 64,
    seed: int = 0,
    rare_ranks: tuple[int, int] = (40, 200),
    **stats_kwargs,
):
    """(FeatureStats, [SyntheticLatent per latent], the dictionary, the model): `n_words` latents that fire on 1-3
    words each, then `n_after` that fire on the word after one word, all drawn from the Zipf ranks `rare_ranks`
    (so a 13-token window holds an unrecorded firing rarely). `stats_kwargs` go to `feature_stats`."""
    from datasets import Dataset

    from sae import SAEConfig, SparseAutoencoder
    from sae.analysis.features import feature_stats

    rng = random.Random(seed)
    tokenizer = word_tokenizer()
    model = _WordCodes(tokenizer, context_len)
    V = model.vocab
    lo, hi = rare_ranks
    pool = list(WORDS[lo:hi])
    truth: list[SyntheticLatent] = []
    for _ in range(n_words):
        truth.append(SyntheticLatent("words", tuple(rng.sample(pool, rng.randint(1, 3)))))
    for _ in range(n_after):
        truth.append(SyntheticLatent("after", (rng.choice(pool),)))
    n = len(truth)
    sae = SparseAutoencoder(SAEConfig(d_in=2 * V, n_latents=n, family="standard", hook_name=HOOK, normalize="none"), seed=seed)
    W = torch.zeros(2 * V, n)
    b = torch.zeros(n)
    for j, lat in enumerate(truth):
        ids = [tokenizer.convert_tokens_to_ids(" " + w) for w in lat.words]
        if lat.kind == "words":
            for i in ids:
                W[i, j] = rng.uniform(0.5, 2.0)
        else:
            for i in ids:
                W[V + i, j] = 1.0
            for i in rng.sample(range(2, V), V // 2):
                W[i, j] = 0.5  # the size, not the place, of a firing depends on the word itself
            b[j] = -0.9
    with torch.no_grad():
        sae.W_enc.copy_(W)
        sae.b_enc.copy_(b)
        sae.b_dec.zero_()
        sae.W_dec.copy_(W.T / W.T.norm(dim=1, keepdim=True))
    probs = _zipf(len(WORDS), 1.0)
    n_docs = tokens // 256 + 2
    docs = ["|".join(" " + w for w in rng.choices(WORDS, probs, k=256)) for _ in range(n_docs)]
    kw = {"context_len": context_len, "split": "all", "progress": False, **stats_kwargs}
    stats = feature_stats(sae, model, Dataset.from_dict({"text": docs}), tokens=tokens, **kw)
    return stats, truth, sae, model
