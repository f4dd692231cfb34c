"""The paper's equations written out group by group with Python floats, independent of the package.

Tests compare the package's vectorised code (and verl's) against these.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

#: Documented rule: means within 1e-9 are equal (γ = 1); a mean of equal floats is not always that float.
TIE_TOLERANCE = 1e-9


def reference_rewards(outcome, thinking, index, *, alpha, anneal, threshold, uniform_groups, use_trust_weight=True):
    """Eq. 1-5 written out group by group with Python floats (independent of the package)."""
    members = defaultdict(list)
    for i, uid in enumerate(index):
        members[uid].append(i)
    rewards, gammas = list(map(float, outcome)), [0.0] * len(outcome)
    for rows in members.values():
        scored = [i for i in rows if not math.isnan(thinking[i])]
        correct = [thinking[i] for i in scored if outcome[i] >= threshold]
        wrong = [thinking[i] for i in scored if outcome[i] < threshold]
        if not use_trust_weight:
            gamma = 1.0
        elif correct and wrong:
            mu_c, mu_w = sum(correct) / len(correct), sum(wrong) / len(wrong)
            gamma = 1.0 if mu_c >= mu_w - TIE_TOLERANCE else math.exp(mu_c - mu_w)
        else:
            gamma = 0.0 if uniform_groups == "skip" else 1.0
        for i in rows:
            gammas[i] = gamma
            if not math.isnan(thinking[i]):
                rewards[i] = outcome[i] + gamma * alpha * anneal * thinking[i]
    return rewards, gammas


def reference_advantage(scores, index, *, norm_by_std=True, epsilon=1e-6):
    """Eq. 6 group by group in float64 (unbiased std; a one-response group has mean 0, std 1)."""
    members = defaultdict(list)
    for i, uid in enumerate(index):
        members[uid].append(i)
    out = [0.0] * len(scores)
    for rows in members.values():
        values = [scores[i] for i in rows]
        mean, std = (0.0, 1.0) if len(values) == 1 else (float(np.mean(values)), float(np.std(values, ddof=1)))
        for i in rows:
            out[i] = (scores[i] - mean) / (std + epsilon) if norm_by_std else scores[i] - mean
    return out


def authors_score(text: str) -> float | None:
    """The score the authors' parser reads from a TRM reply; None where it finds none (and falls back to 0).

    Their ``extract_score`` (kxfan2002/SophiaVL-R1 a818494, ``verl/workers/reward/custom.py``), written out: the
    first of ``\\box{x}`` / ``\\boxes{x}``, ``<answer>x</answer>`` (x one of 0, 1, 0.d, 1.d), the first such number
    anywhere in the text, a number right after ``</think>``; clipped to [0, 1]. (Its later extractors read
    "wrong steps" counts, a reply format the TRM is not asked for.)
    """
    for pattern in (r"\\box(?:es)?\{([01](?:\.\d)?)\}", r"<answer>\s*([01](?:\.\d)?)\s*</answer>",
                    r"\b([01](?:\.\d)?)\b", r"</think>\s*([\d.]+)"):
        match = re.search(pattern, text)
        if match:
            return min(1.0, max(0.0, float(match.group(1))))
    return None
