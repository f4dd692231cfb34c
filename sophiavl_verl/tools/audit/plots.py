"""PNG plots of an audit report (:func:`plot_audit`).

``gamma_hist.png`` (γ of the mixed groups), ``thinking_by_correctness.png`` (thinking reward distributions
of correct vs wrong responses, failures counted aside) and ``by_problem_type.png`` (mean thinking reward of
correct vs wrong responses and the share of untrusted groups, per problem type).
"""

from __future__ import annotations

import os
from pathlib import Path

from sophiavl_verl.tools.output import pyplot, save_png

__all__ = ["plot_audit"]

CORRECT_COLOUR = "#2e8b57"
WRONG_COLOUR = "#c0392b"


def plot_audit(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the audit's PNG plots into ``out_dir``; returns ``{name: path}``."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = report["groups"]
    o = report["overall"]
    paths = {}

    # γ histogram over mixed groups.
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    gammas = [g["gamma"] for g in groups if g["mixed"] and g["gamma"] is not None]
    bins = [i / 20 for i in range(21)]
    if gammas:
        ax.hist([min(1.0, g) for g in gammas], bins=bins, color="#4a78b5", edgecolor="white")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("γ (trust weight of the group's thinking rewards)")
    ax.set_ylabel("mixed groups")
    not_mixed = len(groups) - len(gammas)
    uniform = "no thinking term" if report["settings"]["uniform_groups"] == "skip" else "γ = 1"
    ax.set_title(
        f"γ over {len(gammas)} mixed groups: {o['untrusted_groups']} untrusted (γ < 1)\n"
        f"(not shown: {not_mixed} groups not mixed, {uniform})",
        fontsize=10,
    )
    if not gammas:
        ax.text(0.5, 0.5, "no mixed group", transform=ax.transAxes, ha="center", va="center")
    paths["gamma_hist"] = save_png(fig, out / "gamma_hist.png")

    # Thinking reward distributions: correct vs wrong.
    responses = [r for g in groups for r in g["responses"]]
    scored = [r for r in responses if r["trm_status"] == "scored"]
    correct = [r["thinking_reward"] for r in scored if r["correct"]]
    wrong = [r["thinking_reward"] for r in scored if not r["correct"]]
    failed = o["trm_failed"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    edges = [-0.05 + i / 10 for i in range(12)]
    ax.hist([correct, wrong], bins=edges, color=[CORRECT_COLOUR, WRONG_COLOUR],
            label=[f"correct (n={len(correct)}, mean {_fmt(o['thinking_reward_correct_mean'])})",
                   f"wrong (n={len(wrong)}, mean {_fmt(o['thinking_reward_wrong_mean'])})"])
    ax.set_xlabel("thinking reward R^t")
    ax.set_ylabel("responses")
    ax.set_xticks([i / 10 for i in range(11)])
    ax.legend(fontsize=9)
    ax.set_title(f"Thinking reward by outcome ({failed} TRM failures not shown, never counted as 0)", fontsize=10)
    paths["thinking_by_correctness"] = save_png(fig, out / "thinking_by_correctness.png")

    # Per problem type.
    by_type = report["by_problem_type"]
    types = list(by_type)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    x = range(len(types))
    width = 0.38
    c_means = [by_type[t]["thinking_reward_correct_mean"] for t in types]
    w_means = [by_type[t]["thinking_reward_wrong_mean"] for t in types]
    ax1.bar([i - width / 2 for i in x], [v if v is not None else 0 for v in c_means], width,
            color=CORRECT_COLOUR, label="correct")
    ax1.bar([i + width / 2 for i in x], [v if v is not None else 0 for v in w_means], width,
            color=WRONG_COLOUR, label="wrong")
    for i, (c, w) in enumerate(zip(c_means, w_means, strict=True)):
        for dx, v in ((-width / 2, c), (width / 2, w)):
            ax1.text(i + dx, (v or 0) + 0.01, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=8)
    ax1.set_xticks(list(x), types, rotation=15)
    ax1.set_ylim(0, 1.25)
    ax1.set_ylabel("mean thinking reward")
    ax1.legend(fontsize=9, loc="upper center", ncol=2)
    ax1.set_title("Thinking reward by problem type", fontsize=10)
    fracs = [by_type[t]["untrusted_group_frac"] for t in types]
    ax2.bar(list(x), [f if f is not None else 0 for f in fracs], color="#8e6bbf")
    for i, t in enumerate(types):
        a = by_type[t]
        ax2.text(i, (fracs[i] or 0) + 0.02, f"{a['untrusted_groups']}/{a['mixed_groups']}", ha="center", fontsize=8)
    ax2.set_xticks(list(x), types, rotation=15)
    ax2.set_ylim(0, 1.25)
    ax2.set_ylabel("untrusted / mixed groups")
    ax2.set_title("Share of mixed groups with γ < 1", fontsize=10)
    paths["by_problem_type"] = save_png(fig, out / "by_problem_type.png")
    return paths


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
