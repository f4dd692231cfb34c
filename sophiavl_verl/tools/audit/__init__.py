"""``sophiavl-verl audit``: what Trust-GRPO would make of your rollouts, before you spend GPU hours.

For every group of responses to one prompt the audit computes, with the functions and the options the
verl plugin trains with, the outcome rewards R^o, the thinking rewards R^t of a thinking reward model (TRM)
behind an OpenAI-compatible API, γ, the Eq. 5 rewards and the Eq. 6 advantages, next to plain GRPO's.
:func:`run_audit` reads top to bottom as the stages, one module each:

    settings.py  what is applied: training's TrustGRPOConfig and reward options, and the audit's own
    inputs.py    a groups JSONL or verl's rollout dumps -> Group s
    scoring.py   the TRM endpoint (given, or the embedded tiny TRM served here), R^o, R^t, Trust-GRPO
    report.py    report.json (every number) and report.md, in a locked --out folder
    plots.py     the report's PNG plots
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sophiavl_verl.errors import AuditError
from sophiavl_verl.tools.audit.inputs import EMBEDDED_SAMPLE, Group, load_input, question_from_prompt
from sophiavl_verl.tools.audit.scoring import (
    CHECKPOINT_NAME,
    GroupResult,
    ScoreCheckpoint,
    apply_trust_grpo,
    default_cache_dir,
    outcome_rewards,
    score_groups,
    thinking_reward_endpoint,
    trm_client,
)
from sophiavl_verl.tools.audit.settings import AuditSettings, check_run_options
from sophiavl_verl.tools.output import check_plotting

__all__ = [
    "AuditError",
    "AuditSettings",
    "Group",
    "GroupResult",
    "EMBEDDED_SAMPLE",
    "default_cache_dir",
    "load_input",
    "question_from_prompt",
    "run_audit",
    "score_groups",
    "thinking_reward_endpoint",
]


def run_audit(
    input_path: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike = "audit_report",
    settings: AuditSettings | None = None,
    fmt: str = "auto",
    problem_type: str | None = None,
    image_root: str | os.PathLike | None = None,
    allow_outside_image_root: bool = False,
    dataset: str | os.PathLike | None = None,
    raw_prompt: bool = False,
    cache_dir: str | os.PathLike | None = None,
    max_concurrency: int | None = None,
    limit: int | None = None,
    text_limit: int | None = 2000,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the whole audit and write the report folder.

    Each thinking reward is saved in ``<out_dir>/trm_scores.jsonl`` as it arrives
    (:class:`~sophiavl_verl.tools.audit.scoring.ScoreCheckpoint`): after an interrupt the same call on the same
    ``out_dir`` asks the TRM only for the responses it has no score for.

    Args:
        input_path: A groups JSONL, a verl rollout dump (file or folder), or None for the embedded sample.
        out_dir: The report folder (created; locked while the audit writes it).
        settings: What is applied (default: training's defaults, the audit's query policy).
        fmt, problem_type, image_root, allow_outside_image_root, dataset, raw_prompt: How to read the input
            (:func:`~sophiavl_verl.tools.audit.inputs.load_input`).
        cache_dir: Where the embedded TRM is built (default :func:`default_cache_dir`).
        max_concurrency: TRM requests in flight (default: ``scoring.EMBEDDED_CONCURRENCY`` for the embedded
            TRM, else ``scoring.REMOTE_CONCURRENCY``).
        limit: Audit only the first ``limit`` groups.
        text_limit: Characters of each question / response kept in ``report.json`` (None: whole texts).
        progress: Show a progress bar.
        log: ``print``-like function for progress lines.

    Returns:
        The report (the content of ``report.json``), with ``paths`` naming the files written.

    Raises:
        AuditError: On bad input or settings, an unreachable TRM, or when every TRM request failed (the
            report is still written in that case).
        PlotError: If matplotlib (the ``plot`` extra) is missing, before any work.
    """
    from sophiavl_verl.tools.audit import plots
    from sophiavl_verl.tools.audit import report as reporting

    settings = settings or AuditSettings()
    check_run_options(max_concurrency=max_concurrency, limit=limit, text_limit=text_limit)
    check_plotting()  # before any input is read or scored
    started = time.monotonic()
    with reporting.report_folder(Path(out_dir)) as out:  # checked and locked before any input is read or scored
        # 1. Inputs.
        groups, input_info = load_input(input_path, fmt=fmt, problem_type=problem_type, image_root=image_root,
                                        dataset=dataset, raw_prompt=raw_prompt,
                                        allow_outside_image_root=allow_outside_image_root)
        groups = groups[:limit]
        checkpoint = ScoreCheckpoint(out / CHECKPOINT_NAME)  # an interrupted audit's scores, checked
        if checkpoint.loaded:
            log(f"[audit] resuming: {checkpoint.loaded} thinking rewards saved in {checkpoint.path} are not asked "
                "again", file=sys.stderr)
        # 2. Scoring: R^o here, R^t from the TRM for the responses the query policy sends.
        outcomes = outcome_rewards(groups, settings)
        api_key = os.environ.get(settings.reward.trm_api_key_env) or None
        with thinking_reward_endpoint(settings.reward.trm_base_url, settings.reward.trm_model, cache_dir=cache_dir,
                                      log=log) as endpoint:
            client = trm_client(endpoint, settings, api_key=api_key, max_concurrency=max_concurrency, log=log)
            log(f"[audit] scoring {sum(len(g.responses) for g in groups)} responses of {len(groups)} groups with "
                f"{endpoint['model']} at {endpoint['base_url']}", file=sys.stderr)
            scoring_started = time.monotonic()
            try:
                thinking = asyncio.run(score_groups(groups, [o for o, _ in outcomes], client, settings,
                                                    checkpoint=checkpoint, progress=progress))
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: what was scored stays in the checkpoint
                if checkpoint.scores:
                    log(f"[audit] interrupted: {len(checkpoint.scores)} thinking rewards are saved in "
                        f"{checkpoint.path}; the same command with the same --out continues from them",
                        file=sys.stderr)
                raise
            scoring_s = time.monotonic() - scoring_started
        trm_info = {"base_url": endpoint["base_url"], "model": endpoint["model"], "embedded": endpoint["embedded"],
                    "stats": client.stats, "max_concurrency": client.options.max_concurrency,
                    "scoring_wall_s": scoring_s, "resumed": checkpoint.reused}
        # 3. Trust-GRPO and the report; report.json (every score) is written first.
        try:
            results = apply_trust_grpo(groups, outcomes, thinking, settings)
            report = reporting.build_report(results, settings=settings, input_info=input_info, trm_info=trm_info,
                                            text_limit=text_limit)
            report["wall_s"] = time.monotonic() - started
            paths = reporting.write_report(report, out)
            checkpoint.remove()  # report.json holds every score now
        except Exception as exc:  # never lose the TRM's work to a failure after it
            raise AuditError(f"the report could not be written ({type(exc).__name__}: {exc}); "
                             f"{reporting.save_scores(out, groups, outcomes, thinking)}") from None
        # 4. Plots, then the report again with them.
        try:
            report["plots"] = {name: str(p.name) for name, p in plots.plot_audit(report, out).items()}
            report["wall_s"] = time.monotonic() - started
            paths = reporting.write_report(report, out)
        except Exception as exc:
            raise AuditError(f"drawing the plots failed ({type(exc).__name__}: {exc}); every score is in "
                             f"{paths['json']} and the summary in {paths['markdown']}") from None
    report["paths"] = {k: str(v) for k, v in paths.items()}
    requested = report["trm"]["requested"]
    if requested and report["trm"]["failed"] == requested:
        kinds = ", ".join(f"{k}: {n}" for k, n in report["trm"]["failures"].items())
        raise AuditError(
            f"all {requested} thinking reward requests to {endpoint['base_url']} failed ({kinds}); "
            f"the report in {out} has no thinking rewards. Check --trm-model and the server's log."
        )
    return report
