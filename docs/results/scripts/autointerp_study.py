"""Does the autointerp scorer tell a correct explanation from a wrong one? Latents of known ground truth, judged by rule.

`synthetic_stats` builds feature statistics (the real `feature_stats` pass, default sample counts) of a hand-made
dictionary over a synthetic word corpus: latents that fire exactly on 1-3 words, and latents that fire exactly
on the word after a given word. Each latent is scored (detection, fuzzing) with explanations that are correct,
written by the rule judge from the shown examples, partly correct, shuffled across latents or wrong, by the
rule judge (`sae.analysis.autointerp.judges.rule`) and by noisy versions of it that follow the rule with
probability q. Writes docs/results/autointerp.json and prints the tables of docs/results/autointerp.md.

    python docs/results/scripts/autointerp_study.py            # the committed study (seconds on 2 cores)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from sae.analysis.autointerp import RuleJudge, SampleSettings, explain, score
from sae.analysis.autointerp.judges import Reply
from sae.analysis.autointerp.judges.rule import rule_answer
from sae.analysis.autointerp.sampling import expected_contamination, latent_samples
from sae.analysis.autointerp.synthetic import WORDS, SyntheticLatent, synthetic_stats

OUT = Path(__file__).resolve().parents[1]


class NoisyRule:
    """The rule judge, each verdict kept with probability q and flipped otherwise (seeded by the request)."""

    def __init__(self, q: float) -> None:
        self.q = q
        self.name = f"rule-q{q}"
        self.identity = {"kind": "noisy-rule", "q": q}
        self.parallel = 256

    def answer(self, requests, on_reply=None):
        out = []
        for i, r in enumerate(requests):
            text, verdicts = rule_answer(r.message_dicts())
            if verdicts is not None:
                seed = hashlib.sha256(json.dumps(r.content(), sort_keys=True).encode()).hexdigest()
                rng = random.Random(seed)
                verdicts = [v if rng.random() < self.q else not v for v in verdicts]
                text = "yes" if verdicts[0] else "no"
                if len(verdicts) > 1:
                    text = "\n".join(f"{k}: {'yes' if v else 'no'}" for k, v in enumerate(verdicts, 1))
            reply = Reply(text, 1, 1)
            if on_reply is not None:
                on_reply(i, reply)
            out.append(reply)
        return out


def derangement(truth: list[SyntheticLatent], rng: random.Random) -> list[int]:
    """A permutation giving no latent its own explanation, nor one naming any of its words."""
    n = len(truth)
    perm = list(range(n))
    while any(p == i or set(truth[p].words) & set(truth[i].words) for i, p in enumerate(perm)):
        rng.shuffle(perm)
    return perm


def wrong(t: SyntheticLatent, pool: list[str], rng: random.Random) -> str:
    """Same kind and length as the truth, none of its words."""
    words = rng.sample([w for w in pool if w not in t.words], len(t.words))
    return SyntheticLatent(t.kind, tuple(words)).truth


def summary(scores: dict[int, dict], method: str, ids: list[int], rng: np.random.Generator) -> dict:
    vals = np.array([scores[i][method].balanced_accuracy for i in ids], dtype=float)
    widths = [scores[i][method].ci95[1] - scores[i][method].ci95[0] for i in ids]
    boot = vals[rng.integers(0, len(vals), (2000, len(vals)))].mean(1)
    return {
        "mean": round(float(vals.mean()), 4),
        "ci95_over_latents": [round(float(x), 4) for x in np.quantile(boot, [0.025, 0.975])],
        "min": round(float(vals.min()), 4),
        "max": round(float(vals.max()), 4),
        "at_least_0.9": round(float((vals >= 0.9).mean()), 4),
        "median_latent_ci_width": round(float(statistics.median(widths)), 4),
        "n_positive_median": statistics.median(scores[i][method].n_positive for i in ids),
        "n_negative_median": statistics.median(scores[i][method].n_negative for i in ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-words", type=int, default=48)
    ap.add_argument("--n-after", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT / "autointerp.json")
    args = ap.parse_args()
    t0 = time.time()
    stats, truth, sae, _ = synthetic_stats(n_words=args.n_words, n_after=args.n_after, tokens=args.tokens, seed=args.seed)
    n = len(truth)
    ids = list(range(n))
    rng = random.Random(args.seed)
    pool = list(WORDS[40:200])
    true_expl = {i: t.truth for i, t in enumerate(truth)}
    made = explain(stats, RuleJudge(), progress=False)
    perm = derangement(truth, rng)
    conditions = {
        "correct (ground truth)": true_expl,
        "written by the rule judge": {i: made[i].text for i in ids},
        "partly correct (first word of 2-3)": {
            i: SyntheticLatent(t.kind, t.words[:1]).truth for i, t in enumerate(truth) if len(t.words) > 1
        },
        "shuffled across latents": {i: truth[perm[i]].truth for i in ids},
        "wrong words": {i: wrong(t, pool, rng) for i, t in enumerate(truth)},
    }
    brng = np.random.default_rng(args.seed)
    results: dict = {"setup": {}, "rule": {}, "noisy": {}, "negatives": {}}
    for name, expl in conditions.items():
        got = score(stats, expl, RuleJudge(), progress=False)
        keys = sorted(expl)
        results["rule"][name] = {m: summary(got, m, keys, brng) for m in ("detection", "fuzzing")} | {"latents": len(keys)}
    sim = score(
        stats, true_expl, RuleJudge(), settings=SampleSettings(negative_source="similar"), decoder=sae.W_dec, progress=False
    )
    sim_shuf = score(
        stats, conditions["shuffled across latents"], RuleJudge(), settings=SampleSettings(negative_source="similar"),
        decoder=sae.W_dec, progress=False,
    )  # fmt: skip
    results["rule"]["correct, similar-decoder negatives"] = {"detection": summary(sim, "detection", ids, brng), "latents": n}
    results["rule"]["shuffled, similar-decoder negatives"] = {
        "detection": summary(sim_shuf, "detection", ids, brng),
        "latents": n,
    }
    for q in (0.9, 0.8, 0.7):
        judge = NoisyRule(q)
        right = score(stats, true_expl, judge, progress=False)
        shuf = score(stats, conditions["shuffled across latents"], judge, progress=False)
        row = {}
        for m in ("detection", "fuzzing"):
            row[m] = {
                "correct": summary(right, m, ids, brng),
                "shuffled": summary(shuf, m, ids, brng),
                "correct_above_shuffled": round(
                    sum(right[i][m].balanced_accuracy > shuf[i][m].balanced_accuracy for i in ids) / n, 4
                ),
                "ci_separated": round(sum(right[i][m].ci95[0] > shuf[i][m].ci95[1] for i in ids) / n, 4),
            }
        results["noisy"][f"q={q}"] = row
    # how often a "non-activating" window holds a firing the statistics did not record (the truth says where)
    for source in ("random", "similar"):
        settings = SampleSettings(negative_source=source)
        samples = latent_samples(stats, ids, settings, seed=0, decoder=sae.W_dec)
        hit = total = 0
        for i, t in enumerate(truth):
            for e in samples[i].negatives:
                total += 1
                hit += any(t.fires([w.strip() for w in stats.text(e.ids)]))
        results["negatives"][source] = {"windows": total, "holding_a_firing": hit, "fraction": round(hit / total, 4)}
    results["negatives"]["random"]["expected_from_frequency"] = round(
        float(np.mean([expected_contamination(stats.latent(i)["frequency"], 13) for i in ids])), 4
    )
    results["setup"] = {
        "latents": n,
        "words_latents": args.n_words,
        "after_latents": args.n_after,
        "tokens": int(stats.meta["tokens"]),
        "top_n": stats.meta["top_n"],
        "quantiles": stats.meta["quantiles"],
        "frequency_median": round(statistics.median(stats.latent(i)["frequency"] for i in ids), 5),
        "seed": args.seed,
        "seconds": round(time.time() - t0, 1),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["setup"]))
    print("\n| explanation | latents | detection: mean (95% CI) | min | >= 0.9 | fuzzing: mean (95% CI) | min | >= 0.9 |")
    print("|---|---|---|---|---|---|---|---|")

    def mean_ci(s: dict) -> str:
        return f"{s['mean']:.3f} ({s['ci95_over_latents'][0]:.3f}–{s['ci95_over_latents'][1]:.3f})"

    for name, row in results["rule"].items():
        cells = []
        for m in ("detection", "fuzzing"):
            s = row.get(m)
            cells += [mean_ci(s), f"{s['min']:.3f}", f"{s['at_least_0.9']:.0%}"] if s else ["–", "–", "–"]
        print(f"| {name} | {row['latents']} | " + " | ".join(cells) + " |")
    print(
        "\n| judge | method | correct: mean (95% CI) | shuffled: mean (95% CI) | correct > shuffled | per-latent CIs apart "
        "| median per-latent CI width (correct) |"
    )
    print("|---|---|---|---|---|---|---|")
    for q, row in results["noisy"].items():
        for m, r in row.items():
            c, s = r["correct"], r["shuffled"]
            print(
                f"| {q} | {m} | {mean_ci(c)} | {mean_ci(s)} | "
                f"{r['correct_above_shuffled']:.0%} | {r['ci_separated']:.0%} | {c['median_latent_ci_width']:.2f} |"
            )
    print("\nnegatives:", json.dumps(results["negatives"]))


if __name__ == "__main__":
    main()
