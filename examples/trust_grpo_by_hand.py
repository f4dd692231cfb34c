"""Trust-GRPO by hand: the rewards and advantages of two groups, with the plugin's public API.

    python examples/trust_grpo_by_hand.py

Runs on CPU in a second. Each group is one prompt with 8 sampled responses (the paper's group size):
an outcome reward R^o from the rule-based checker and a thinking reward R^t from the thinking reward
model (NaN = the model failed for that response). In group "honest" the correct responses also got the
better thinking rewards, so the thinking reward is trusted (gamma = 1). In group "misled" the wrong
responses got the better thinking rewards, so gamma = e^(mu_correct - mu_wrong) < 1 shrinks it (Eq. 3).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sophiavl_verl.annealing import get_schedule
from sophiavl_verl.trust_grpo import group_normalized_advantage, trust_weighted_rewards

ALPHA = 0.3  # paper, Eq. 5
STEP, TOTAL_STEPS = 100, 1500  # anneal factor e^(-step/T) with T = the run's total steps

#               R^o (1 = correct)          R^t from the thinking reward model
GROUPS = {
    "honest": ([1, 1, 1, 0, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, math.nan, 0.4, 0.1]),
    "misled": ([1, 1, 0, 0, 0, 0, 0, 0], [0.2, 0.3, 0.9, 0.8, 0.9, 0.7, 0.8, 0.6]),
}


def main() -> None:
    index = np.array([name for name, (outcome, _) in GROUPS.items() for _ in outcome], dtype=object)
    outcome = torch.tensor([x for r_o, _ in GROUPS.values() for x in r_o], dtype=torch.float32)
    thinking = torch.tensor([x for _, r_t in GROUPS.values() for x in r_t], dtype=torch.float32)

    anneal = get_schedule("exp")(STEP, TOTAL_STEPS)
    rewards, gamma = trust_weighted_rewards(outcome, thinking, index, alpha=ALPHA, anneal=anneal)
    # verl works with token-level tensors: one row per response, here 4 response tokens each.
    response_mask = torch.ones(len(outcome), 4)
    advantages, _ = group_normalized_advantage(rewards, response_mask, index)
    plain, _ = group_normalized_advantage(outcome, response_mask, index)  # GRPO on R^o alone

    print(f"alpha={ALPHA}  anneal=e^(-{STEP}/{TOTAL_STEPS})={anneal:.4f}")
    print(f"{'group':8} {'R^o':>4} {'R^t':>5} {'gamma':>6} {'R':>7} {'A':>7} {'A (GRPO)':>9}")
    for i, group in enumerate(index):
        print(
            f"{group:8} {outcome[i].item():4.0f} {thinking[i].item():5.2f} {gamma[i].item():6.3f} "
            f"{rewards[i].item():7.4f} {advantages[i, 0].item():7.3f} {plain[i, 0].item():9.3f}"
        )

    # Eq. 1-3 for group "misled", by hand: mean R^t of the correct and of the wrong responses.
    r_o, r_t = (np.array(v, dtype=float) for v in GROUPS["misled"])
    mu_c, mu_w = np.nanmean(r_t[r_o >= 0.5]), np.nanmean(r_t[r_o < 0.5])
    expected = 1.0 if mu_c >= mu_w else math.exp(mu_c - mu_w)
    assert math.isclose(gamma[list(index).index("misled")].item(), expected, rel_tol=1e-5)
    print(f"misled: mu_correct={mu_c:.3f} mu_wrong={mu_w:.3f} -> gamma={expected:.3f} (Eq. 3)")


if __name__ == "__main__":
    main()
