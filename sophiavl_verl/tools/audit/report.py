"""The audit report: ``report.json`` (every number) and ``report.md`` (the readable summary).

``report.json`` layout (missing values are ``null``; a failed thinking reward is ``null`` with
``trm_status: "failed"``, never 0)::

    {"version": 1, "input": {...}, "settings": {...}, "trm": {...}, "overall": {...},
     "by_problem_type": {"numerical": {...}, ...}, "groups": [...], "plots": {...}, "wall_s": ...}

``settings`` holds every option applied, by its field name (:meth:`AuditSettings.as_dict`; ``anneal_steps`` is
the T applied). Each group: ``id``, ``source`` (file:line), ``problem_type``, ``question``, ``ground_truth``,
``images``, ``step``, ``anneal``, ``n_correct``, ``n_wrong``, ``mixed`` (has a scored correct and a scored
wrong response), ``mu_correct``, ``mu_wrong``, ``gamma`` (the multiplier Trust-GRPO applied: γ for a mixed
group, 0 or 1 for the others under ``uniform_groups`` skip / trust), ``untrusted`` (mixed and γ < 1), ``meta``
and ``responses``: each with ``outcome_reward``, ``format_ok``, ``correct``, ``thinking_reward``,
``trm_status`` (``skipped``: not sent under the query policy; its R^t is ``null``, or 0 where ``official``
gives 0), ``thinking_term`` (γ·α·anneal·R^t), ``reward`` (Eq. 5), ``advantage`` (Eq. 6) and ``advantage_grpo``
(plain GRPO).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sophiavl_verl.errors import AuditError
from sophiavl_verl.tools.output import write_atomically

__all__ = ["REPORT_VERSION", "build_report", "render_markdown", "report_folder", "save_scores", "write_report"]

REPORT_VERSION = 1
PROBLEM_TYPE_ORDER = ("numerical", "multiple choice", "OCR", "free-form", "text")


def _f(x: Any) -> float | None:
    """A JSON number, or None for NaN / missing."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _clip(text: str, limit: int | None) -> str:
    if not limit or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def _group_entry(res, text_limit: int | None) -> dict:
    g = res.group
    correct = res.correct
    responses = []
    for i, text in enumerate(g.responses):
        entry = {
            "index": i,
            "response": _clip(text, text_limit),
            "outcome_reward": _f(res.outcome[i]),
            "format_ok": bool(res.format_ok[i]),
            "correct": bool(correct[i]),
            "thinking_reward": _f(res.thinking[i]),
            "trm_status": res.status[i],
            "thinking_term": _f(res.thinking_term[i]),
            "reward": _f(res.reward[i]),
            "advantage": _f(res.advantage[i]),
            "advantage_grpo": _f(res.advantage_grpo[i]),
        }
        if g.dump_scores is not None:
            entry["dump_score"] = _f(g.dump_scores[i]) if isinstance(g.dump_scores[i], (int, float)) else None
        responses.append(entry)
    return {
        "id": g.id,
        "source": g.source,
        "problem_type": g.problem_type,
        "question": _clip(g.question, text_limit),
        "ground_truth": _clip(g.ground_truth, text_limit),
        "images": list(g.image_refs),
        "step": res.step,
        "anneal": res.anneal,
        "n_correct": sum(correct),
        "n_wrong": len(correct) - sum(correct),
        "mixed": res.mixed,
        "mu_correct": _f(res.mu_correct),
        "mu_wrong": _f(res.mu_wrong),
        "gamma": _f(res.gamma),
        "untrusted": res.untrusted,
        "meta": g.meta,
        "responses": responses,
    }


def _aggregate(groups: list[dict]) -> dict:
    """Shares and means over a list of group entries (all groups, or one problem type's)."""
    responses = [r for g in groups for r in g["responses"]]
    mixed = [g for g in groups if g["mixed"]]
    untrusted = [g for g in mixed if g["untrusted"]]
    scored = [r for r in responses if r["trm_status"] == "scored"]
    correct_rt = [r["thinking_reward"] for r in scored if r["correct"]]
    wrong_rt = [r["thinking_reward"] for r in scored if not r["correct"]]
    sign_changes = sum(
        1 for r in responses
        if r["advantage"] is not None and r["advantage_grpo"] is not None
        and np.sign(round(r["advantage"], 9)) != np.sign(round(r["advantage_grpo"], 9))
    )
    return {
        "groups": len(groups),
        "responses": len(responses),
        "accuracy": _mean([1.0 if r["correct"] else 0.0 for r in responses]),
        "outcome_reward_mean": _mean([r["outcome_reward"] for r in responses]),
        "format_failures": sum(not r["format_ok"] for r in responses),
        "all_correct_groups": sum(g["n_wrong"] == 0 for g in groups),
        "all_wrong_groups": sum(g["n_correct"] == 0 for g in groups),
        "outcome_mixed_groups": sum(g["n_correct"] > 0 and g["n_wrong"] > 0 for g in groups),
        "mixed_groups": len(mixed),
        "mixed_group_frac": len(mixed) / len(groups) if groups else None,
        "untrusted_groups": len(untrusted),
        "untrusted_group_frac": len(untrusted) / len(mixed) if mixed else None,
        "untrusted_frac_of_all_groups": len(untrusted) / len(groups) if groups else None,
        "gamma_mean": _mean([g["gamma"] for g in mixed]),
        "gamma_min": min((g["gamma"] for g in mixed), default=None),
        "mu_correct_mean": _mean([g["mu_correct"] for g in mixed]),
        "mu_wrong_mean": _mean([g["mu_wrong"] for g in mixed]),
        "thinking_reward_mean": _mean([r["thinking_reward"] for r in scored]),
        "thinking_reward_correct_mean": _mean(correct_rt),
        "thinking_reward_wrong_mean": _mean(wrong_rt),
        "thinking_reward_correct_n": len(correct_rt),
        "thinking_reward_wrong_n": len(wrong_rt),
        "thinking_term_mean": _mean([r["thinking_term"] for r in responses]),
        "reward_mean": _mean([r["reward"] for r in responses]),
        "trm_scored": len(scored),
        "trm_failed": sum(r["trm_status"] == "failed" for r in responses),
        "trm_skipped": sum(r["trm_status"] == "skipped" for r in responses),
        "advantage_sign_changes": sign_changes,
        "advantage_abs_change_mean": _mean(
            [abs(r["advantage"] - r["advantage_grpo"]) for r in responses
             if r["advantage"] is not None and r["advantage_grpo"] is not None]
        ),
    }


def build_report(results, *, settings, input_info: dict, trm_info: dict, text_limit: int | None = 2000) -> dict:
    """Assemble the report from the audit's per-group results.

    Args:
        results: :class:`~sophiavl_verl.tools.audit.scoring.GroupResult` of every group.
        settings: The :class:`~sophiavl_verl.tools.audit.settings.AuditSettings` applied.
        input_info: What :func:`~sophiavl_verl.tools.audit.inputs.load_input` says about the input.
        trm_info: ``base_url``, ``model``, ``embedded``, the client's ``stats`` (``TRMStats``),
            ``max_concurrency``, ``scoring_wall_s``, ``resumed`` (scores read back from an interrupted run's
            checkpoint, not asked again; the request counts are this run's).
        text_limit: Characters of each text kept (None: whole texts).
    """
    groups = [_group_entry(res, text_limit) for res in results]
    types = sorted({g["problem_type"] for g in groups},
                   key=lambda t: PROBLEM_TYPE_ORDER.index(t) if t in PROBLEM_TYPE_ORDER else 99)
    stats = trm_info["stats"]
    latency = stats.summary()  # the client's own p50 / p95 / max
    overall = _aggregate(groups)
    requested = overall["trm_scored"] + overall["trm_failed"]
    trm = {
        "base_url": trm_info["base_url"],
        "model": trm_info["model"],
        "embedded": trm_info["embedded"],
        "requested": requested,
        "scored": overall["trm_scored"],
        "failed": overall["trm_failed"],
        "skipped": overall["trm_skipped"],
        "failed_frac": overall["trm_failed"] / requested if requested else None,
        "failures": dict(sorted(Counter(stats.failures).items())),
        "http_requests": stats.requests,
        "retries": stats.retries,
        "clipped": stats.clipped,
        "connections": stats.connections,
        "image_encodes": stats.image_encodes,
        "bytes_sent": stats.bytes_sent,
        "latency_p50_s": _f(latency["trm/latency_p50_s"]),
        "latency_p95_s": _f(latency["trm/latency_p95_s"]),
        "latency_max_s": _f(latency["trm/latency_max_s"]),
        "resumed": trm_info["resumed"],
        "max_concurrency": trm_info.get("max_concurrency"),
        "scoring_wall_s": trm_info.get("scoring_wall_s"),
    }
    steps = sorted({g["step"] for g in groups})
    return {
        "version": REPORT_VERSION,
        "input": input_info,
        "settings": {**settings.as_dict(), "steps_used": steps,
                     "anneal_factors": {str(g["step"]): g["anneal"] for g in groups}},
        "trm": trm,
        "overall": overall,
        "by_problem_type": {t: _aggregate([g for g in groups if g["problem_type"] == t]) for t in types},
        "groups": groups,
    }


# ---------------------------------------------------------------------------------------------- writing


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, then ``report.md``, into ``out_dir``, each atomically (``output.write_atomically``).

    ``report.json`` holds every score, so it is written before the markdown is rendered.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in report.items() if k != "paths"}
    text = json.dumps(_json_safe(payload), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    paths = {"json": write_atomically(out / "report.json", text)}
    paths["markdown"] = write_atomically(out / "report.md", render_markdown(report))
    return paths


@contextmanager
def report_folder(out: Path) -> Iterator[Path]:
    """``--out``, created if needed, checked writable and locked against a second audit, before any work.

    A folder this call created is removed again if the audit writes nothing into it.

    Raises:
        AuditError: If ``out`` is a file, cannot be created or written, or another audit is writing it.
    """
    import fcntl
    import tempfile

    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file; give a folder for the report")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_check_"):
            pass
        folder = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise AuditError(f"--out {out}: cannot write the report there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditError(f"--out {out} is being written by another sophiavl-verl audit; wait for it to finish "
                             "or choose another folder") from None
        try:
            yield out
        finally:
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty: nothing was written
    finally:
        os.close(folder)


def save_scores(out: Path, groups: Sequence, outcomes: Sequence[tuple], thinking: Sequence[tuple]) -> str:
    """Every response's R^o, R^t and TRM status as ``scores.json`` (ASCII JSON: any text can be written).

    The last resort when the report cannot be built: the TRM's work is never lost.

    Returns:
        A sentence saying where the scores are, or why they could not be saved.
    """
    rows = [
        {"id": g.id, "source": g.source, "responses": [
            {"outcome_reward": ro, "thinking_reward": rt if math.isfinite(rt) else None, "trm_status": status}
            for ro, rt, status in zip(outcome[0], scores[0], scores[1], strict=True)
        ]}
        for g, outcome, scores in zip(groups, outcomes, thinking, strict=True)
    ]
    try:
        return f"the scores are saved in {write_atomically(out / 'scores.json', json.dumps(rows, indent=1))}"
    except OSError as exc:
        return f"saving the scores in {out} failed too ({exc.strerror or exc})"


# --------------------------------------------------------------------------------------------- markdown


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _cell(text: str, n: int = 70) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _excerpt(response: dict, n: int = 240) -> str:
    return _cell(response["response"], n)


def render_markdown(report: dict) -> str:
    """The readable summary of a report (what ``report.md`` holds)."""
    o, trm, s, inp = report["overall"], report["trm"], report["settings"], report["input"]
    source = "the embedded sample" if inp.get("embedded_sample") else f"`{inp['path']}`"
    fmt = {"groups": "groups JSONL", "verl_dump": "verl rollout dump"}.get(inp["format"], inp["format"])
    trm_name = (f"the embedded tiny TRM (`{trm['model']}`, served at {trm['base_url']})" if trm["embedded"]
                else f"`{trm['model']}` at {trm['base_url']}")
    lines = [
        "# Trust-GRPO audit",
        "",
        f"Input: {source} ({fmt}): **{o['groups']} groups, {o['responses']} responses**. "
        f"Thinking reward model: {trm_name}. Wall time {report.get('wall_s', 0):.0f} s.",
        "",
    ]
    if trm["embedded"]:
        lines += [
            "> The embedded TRM is a tiny Qwen2.5-VL fine-tuned by verl's SFT trainer on the embedded sample's "
            "responses labelled by their kind of reasoning, so that it runs on a CPU: it exercises the real serving "
            "and scoring path, and has memorised those labels rather than learned to judge. Audit with your own "
            "thinking reward model (`--trm-url`, `--trm-model`) for numbers that mean something.",
            "",
        ]
    failures = ", ".join(f"{k}: {n}" for k, n in trm["failures"].items()) or "none"
    resumed = f"; {trm['resumed']} scores resumed from an interrupted run" if trm["resumed"] else ""
    lines += [
        "## Headline",
        "",
        "| | |",
        "|---|---|",
        f"| untrusted groups (mixed groups with γ < 1) | **{o['untrusted_groups']} of {o['mixed_groups']} mixed "
        f"groups ({_pct(o['untrusted_group_frac'])})**; {_pct(o['untrusted_frac_of_all_groups'])} of all groups |",
        f"| γ over mixed groups | mean {_num(o['gamma_mean'])}, min {_num(o['gamma_min'])} |",
        f"| μ_c vs μ_w (mean over mixed groups) | {_num(o['mu_correct_mean'])} vs {_num(o['mu_wrong_mean'])} |",
        f"| thinking reward of correct vs wrong responses | {_num(o['thinking_reward_correct_mean'])} "
        f"(n={o['thinking_reward_correct_n']}) vs {_num(o['thinking_reward_wrong_mean'])} "
        f"(n={o['thinking_reward_wrong_n']}) |",
        f"| groups: mixed / all correct / all wrong | {o['mixed_groups']} / {o['all_correct_groups']} / "
        f"{o['all_wrong_groups']}"
        + (f" (+{o['outcome_mixed_groups'] - o['mixed_groups']} with correct and wrong answers but, after TRM "
           "failures, no thinking reward on one side)" if o["outcome_mixed_groups"] > o["mixed_groups"] else "")
        + " |",
        f"| accuracy (R^o ≥ {s['correct_threshold']}) · mean R^o | {_pct(o['accuracy'])} · "
        f"{_num(o['outcome_reward_mean'])} |",
        f"| responses failing the `<think>`/`<answer>` format | {o['format_failures']} |",
        f"| mean thinking term γ·α·anneal·R^t added per response | {_num(o['thinking_term_mean'], 4)} |",
        f"| advantages: sign changes vs plain GRPO · mean abs change | {o['advantage_sign_changes']} · "
        f"{_num(o['advantage_abs_change_mean'])} |",
        f"| TRM failures (R^t = null, no thinking term; never counted as 0) | **{trm['failed']} of "
        f"{trm['requested']}** ({failures}); {trm['skipped']} not sent |",
        f"| TRM latency p50 / p95 | {_num(trm['latency_p50_s'])} s / {_num(trm['latency_p95_s'])} s "
        f"({trm['http_requests']} HTTP requests, {trm['retries']} retries, {trm['max_concurrency']} in flight"
        f"{resumed}) |",
        "",
        "## Settings",
        "",
        f"α = {s['alpha']}, schedule `{s['schedule']}`, T (anneal steps) = {s['anneal_steps']}, "
        f"step(s) {', '.join(map(str, s['steps_used']))} → anneal factor "
        f"{', '.join(f'{v:.4f}' for v in sorted(set(s['anneal_factors'].values()), reverse=True))}; "
        f"correct threshold {s['correct_threshold']}; uniform groups `{s['uniform_groups']}`; "
        f"trust weight {'on' if s['use_trust_weight'] else 'off (γ = 1)'}; "
        f"advantage {'(R − mean) / (std + ε)' if s['norm_by_std'] else 'R − mean'} with ε = {s['epsilon']}; "
        f"format required: {s['require_format']}; TRM query policy `{s['query_policy']}`.",
        "",
        "## By problem type",
        "",
        "| problem type | groups | accuracy | R^t correct | R^t wrong | mixed | untrusted | γ mean | TRM failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ptype, a in report["by_problem_type"].items():
        lines.append(
            f"| {ptype} | {a['groups']} | {_pct(a['accuracy'])} | {_num(a['thinking_reward_correct_mean'])} | "
            f"{_num(a['thinking_reward_wrong_mean'])} | {a['mixed_groups']} | {a['untrusted_groups']} "
            f"({_pct(a['untrusted_group_frac'])}) | {_num(a['gamma_mean'])} | {a['trm_failed']} |"
        )
    plots = report.get("plots") or {}
    captions = {
        "gamma_hist": "γ of the mixed groups",
        "thinking_by_correctness": "thinking reward of correct vs wrong responses",
        "by_problem_type": "per problem type",
    }
    if plots:
        lines += ["", "## Plots", ""]
        for name, file in plots.items():
            lines += [f"![{captions.get(name, name)}]({file})", ""]
    untrusted = sorted((g for g in report["groups"] if g["untrusted"]), key=lambda g: g["gamma"])
    lines += ["", "## Least trusted groups", ""]
    if not untrusted:
        lines.append("No mixed group has γ < 1: on these rollouts the thinking rewards never favour wrong answers.")
    else:
        lines += [
            "Groups where wrong answers got the higher mean thinking reward (γ = e^(μ_c − μ_w) < 1):",
            "",
            "| group | type | correct / wrong | μ_c | μ_w | γ | input |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in untrusted[:10]:
            lines.append(f"| {_cell(g['id'], 30)} | {g['problem_type']} | {g['n_correct']} / {g['n_wrong']} | "
                         f"{_num(g['mu_correct'])} | {_num(g['mu_wrong'])} | {_num(g['gamma'])} | "
                         f"`{_cell(g['source'], 60)}` |")
        worst = untrusted[0]
        scored = [r for r in worst["responses"] if r["thinking_reward"] is not None]
        wrong = max((r for r in scored if not r["correct"]), key=lambda r: r["thinking_reward"], default=None)
        right = min((r for r in scored if r["correct"]), key=lambda r: r["thinking_reward"], default=None)
        lines += ["", f"The least trusted group, `{worst['id']}` ({worst['problem_type']}): "
                  f"{_cell(worst['question'], 200)} — ground truth `{_cell(worst['ground_truth'], 80)}`", ""]
        for label, r in (("Wrong answer with the highest thinking reward", wrong),
                         ("Correct answer with the lowest thinking reward", right)):
            if r is not None:
                lines.append(f"- {label} (R^o {_num(r['outcome_reward'], 2)}, R^t {_num(r['thinking_reward'], 2)}, "
                             f"reward {_num(r['reward'])}, advantage {_num(r['advantage'], 2)} vs GRPO "
                             f"{_num(r['advantage_grpo'], 2)}): “{_excerpt(r)}”")
    lines += ["", "## What this audit sees", ""]
    if inp["format"] == "verl_dump":
        matched = inp.get("dataset_matched_groups", 0)
        lines += [
            f"- A verl rollout dump ({inp['rows']} rows in {len(inp['files'])} file(s); prompts grouped by "
            f"{inp.get('uid_format') or 'identical input text'}). Rows hold the decoded prompt, the response, the "
            "ground truth, verl's score and the step — not the images, the problem type or the reward extra info.",
            f"- Problem types come from the rows or `--dataset`, else `--problem-type`; "
            f"{inp.get('groups_without_images', 0)} of {o['groups']} groups were scored **without their images** "
            "(a TRM that cannot see the image judges the reasoning about it blind)"
            + (f"; {matched} groups matched a row of `--dataset` {inp.get('dataset')}." if inp.get("dataset")
               else "; pass `--dataset <the RL parquet>` to recover them."),
            "- The question sent to the TRM is "
            + ("the whole decoded prompt (`--raw-prompt`)." if inp.get("raw_prompt") else
               ("the dataset row's `extra_info.question` where a row matched, else " if matched else "")
               + "the user turn of the decoded prompt (verl's decode dropped the special tokens), without this "
               "package's reasoning instructions."),
            "- R^o is recomputed with this package's outcome rewards; `dump_score` in report.json is what the run "
            "itself computed (they differ if the run used another reward function or KL in reward).",
        ]
    else:
        lines.append("- A groups JSONL: questions, images, ground truths and problem types as given in the file.")
    lines += [
        "- Thinking rewards are asked of the TRM now; during training they would come from the TRM the run serves.",
        "",
        "Every number above is in `report.json` (per group and per response, with `null` for a missing thinking "
        "reward).",
        "",
    ]
    return "\n".join(lines)
