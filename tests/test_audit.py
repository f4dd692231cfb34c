"""`sophiavl-verl audit`: the embedded sample end to end, verl's own rollout dumps, bad input, TRM failures.

The report's numbers are checked against Eq. 1-6 recomputed here, group by group with Python floats, from the
per-response scores the report itself lists (not through the package's functions).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from PIL import Image

from sophiavl_verl.errors import AuditError
from sophiavl_verl.tools.audit import EMBEDDED_SAMPLE
from sophiavl_verl.tools.cli import main

from support.fault_injection import FaultInjectionServer
from support.images import assert_png
from support.net import free_port, port_open
from support.paper_reference import TIE_TOLERANCE

SAMPLE_ROWS = [json.loads(line) for line in EMBEDDED_SAMPLE.read_text(encoding="utf-8").splitlines()]
PLOTS = ("gamma_hist.png", "thinking_by_correctness.png", "by_problem_type.png")


# --------------------------------------------------------------------------------------------- helpers


def keyword_trm(*, fail_400=(), fail_503=(), fail_all=False) -> FaultInjectionServer:
    """A fault-injecting stand-in TRM that scores by a keyword rule, failing chosen requests on purpose.

    It scores with ``because`` -> 0.9, ``guess`` -> 0.1, else 0.5, and answers ``400`` (not retried by the
    client) to requests whose text contains one of ``fail_400``, ``503`` (retried, then failed) to those
    containing one of ``fail_503``, and ``500`` to every request when ``fail_all``.
    """

    def script(n, body):
        text = _sent_text(body)
        if fail_all:
            return web.Response(status=500, text="injected fault: everything fails")
        if any(marker in text for marker in fail_400):
            return web.Response(status=400, text="injected fault (400)")
        if any(marker in text for marker in fail_503):
            return web.Response(status=503, text="injected fault (503)")
        reasoning = text.split("Reasoning process:", 1)[1].lower()
        return f"<answer>{0.9 if 'because' in reasoning else 0.1 if 'guess' in reasoning else 0.5}</answer>"

    return FaultInjectionServer(script)


def _sent_text(body: dict) -> str:
    return "".join(p.get("text", "") for p in body["messages"][-1]["content"] if p.get("type") == "text")


def _sent(server: FaultInjectionServer) -> list[dict]:
    """What each request carried: its prompt text and its number of images."""
    return [
        {"text": _sent_text(body), "images": sum(p.get("type") == "image_url" for p in body["messages"][-1]["content"])}
        for body in server.bodies
    ]


def _mean(values):
    return sum(values) / len(values) if values else None


def _approx(x, y, tol=1e-9):
    if x is None or y is None:
        return x is None and y is None
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def _report(out: Path) -> dict:
    """The ``report.json`` an audit wrote to ``out``."""
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _checked_report(rc: int, out: Path, capsys) -> dict:
    """The ``report.json`` of an audit that exited 0 (else its stderr fails the test), its numbers recomputed."""
    assert rc == 0, capsys.readouterr().err
    report = _report(out)
    check_report_numbers(report)
    return report


def check_report_numbers(report: dict) -> None:
    """Every group's γ, rewards and advantages (Eq. 1-6) and the overall numbers, recomputed independently."""
    s = report["settings"]
    assert s["schedule"] == "exp"
    alpha, thr, eps = s["alpha"], s["correct_threshold"], s["epsilon"]
    for g in report["groups"]:
        rs = g["responses"]
        ro = [r["outcome_reward"] for r in rs]
        rt = [r["thinking_reward"] for r in rs]
        assert all(r["correct"] == (o >= thr) for r, o in zip(rs, ro, strict=True))
        # A missing thinking reward is null with status failed/skipped, never 0 in disguise; only the
        # official policy's rule gives R^t = 0, without a request, to a response with R^o < 0.2.
        assert all((t is None) == (r["trm_status"] != "scored")
                   or (s["query_policy"] == "official" and r["trm_status"] == "skipped" and t == 0 and o < 0.2)
                   for r, t, o in zip(rs, rt, ro, strict=True))
        mu_c = _mean([t for o, t in zip(ro, rt, strict=True) if t is not None and o >= thr])
        mu_w = _mean([t for o, t in zip(ro, rt, strict=True) if t is not None and o < thr])
        mixed = mu_c is not None and mu_w is not None
        if not s["use_trust_weight"]:
            gamma = 1.0  # the w/o-trust-weight ablation
        elif mixed:
            gamma = 1.0 if mu_c >= mu_w - TIE_TOLERANCE else math.exp(mu_c - mu_w)  # Eq. 3, ties are γ = 1
        else:
            gamma = 0.0 if s["uniform_groups"] == "skip" else 1.0
        anneal = math.exp(-g["step"] / s["anneal_steps"])  # Eq. 5's e^(-step/T)
        assert _approx(g["anneal"], anneal)
        assert g["mixed"] == mixed and g["untrusted"] == (mixed and gamma < 1), g["id"]
        assert _approx(g["mu_correct"], mu_c) and _approx(g["mu_wrong"], mu_w), g["id"]
        assert _approx(g["gamma"], gamma), (g["id"], g["gamma"], gamma)
        rewards = [o + (gamma * alpha * anneal * t if t is not None else 0.0)  # Eq. 5
                   for o, t in zip(ro, rt, strict=True)]
        for r, want in zip(rs, rewards, strict=True):
            assert _approx(r["reward"], want), (g["id"], r["index"])
            assert _approx(r["thinking_term"], want - r["outcome_reward"], 1e-7)

        def advantages(values):  # Eq. 6 with verl's unbiased std and epsilon
            m = sum(values) / len(values)
            if not s["norm_by_std"]:
                return [v - m for v in values]
            std = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
            return [(v - m) / (std + eps) for v in values]

        # The package computes advantages in float32, as verl does; the recomputation is float64.
        for r, a, a0 in zip(rs, advantages(rewards), advantages(ro), strict=True):
            assert math.isclose(r["advantage"], a, rel_tol=1e-5, abs_tol=1e-5), (g["id"], r["index"])
            assert math.isclose(r["advantage_grpo"], a0, rel_tol=1e-5, abs_tol=1e-5), (g["id"], r["index"])

    def aggregate(groups):
        responses = [r for g in groups for r in g["responses"]]
        mixed = [g for g in groups if g["mixed"]]
        untrusted = [g for g in mixed if g["gamma"] < 1]
        scored = [r for r in responses if r["trm_status"] == "scored"]  # the TRM's judgements
        return {
            "groups": len(groups),
            "responses": len(responses),
            "mixed_groups": len(mixed),
            "untrusted_groups": len(untrusted),
            "untrusted_group_frac": len(untrusted) / len(mixed) if mixed else None,
            "gamma_mean": _mean([g["gamma"] for g in mixed]),
            "mu_correct_mean": _mean([g["mu_correct"] for g in mixed]),
            "mu_wrong_mean": _mean([g["mu_wrong"] for g in mixed]),
            "thinking_reward_correct_mean": _mean([r["thinking_reward"] for r in scored if r["correct"]]),
            "thinking_reward_wrong_mean": _mean([r["thinking_reward"] for r in scored if not r["correct"]]),
            "accuracy": _mean([float(r["correct"]) for r in responses]),
            "trm_failed": sum(r["trm_status"] == "failed" for r in responses),
        }

    for scope, groups in [("overall", report["groups"])] + [
        (t, [g for g in report["groups"] if g["problem_type"] == t]) for t in report["by_problem_type"]
    ]:
        got = report["overall"] if scope == "overall" else report["by_problem_type"][scope]
        for key, want in aggregate(groups).items():
            assert _approx(got[key], want), (scope, key, got[key], want)
    failed = report["overall"]["trm_failed"]
    assert report["trm"]["failed"] == failed
    assert report["trm"]["requested"] == report["trm"]["scored"] + failed


# ------------------------------------------------------------------------------- the embedded default


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """`sophiavl-verl audit` with no input: the embedded sample, the embedded TRM served by the command."""
    out = tmp_path_factory.mktemp("embedded") / "audit_report"
    script = Path(sys.executable).with_name("sophiavl-verl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sophiavl_verl.tools.cli"]
    started = time.monotonic()
    result = subprocess.run([*command, "audit", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = _report(out)
    return SimpleNamespace(out=out, report=report, stdout=result.stdout, stderr=result.stderr,
                           wall_s=time.monotonic() - started)


def test_embedded_audit_numbers_match_eq_1_to_6(embedded_run):
    report = embedded_run.report
    assert report["input"]["embedded_sample"] and report["trm"]["embedded"]
    assert report["overall"]["groups"] == len(SAMPLE_ROWS) == 32
    assert report["overall"]["responses"] == 256
    assert {g["problem_type"] for g in report["groups"]} == {"numerical", "multiple choice", "OCR", "free-form"}
    check_report_numbers(report)
    # The real client scored through the real server: latencies measured, most responses scored. (The tiny
    # TRM may now and then answer something unparseable: that is counted as a failure, checked above.)
    trm = report["trm"]
    assert trm["requested"] == 256 and trm["skipped"] == 0
    assert trm["scored"] >= 128, trm["failures"]
    assert sum(trm["failures"].values()) == trm["failed"]
    assert 0 < trm["latency_p50_s"] <= trm["latency_p95_s"]
    assert all(r["thinking_reward"] is None or 0 <= r["thinking_reward"] <= 1
               for g in report["groups"] for r in g["responses"])


def test_embedded_audit_outcome_rewards_and_settings(embedded_run):
    from sophiavl_verl.rewards import outcome_reward

    report = embedded_run.report
    s = report["settings"]
    assert (s["alpha"], s["schedule"], s["anneal_steps"], s["steps_used"]) == (0.3, "exp", 1500, [1])
    for g, row in zip(report["groups"], SAMPLE_ROWS, strict=True):
        assert g["id"] == row["id"] and g["meta"]["scenario"] == row["scenario"]
        for r, text, kind in zip(g["responses"], row["responses"], row["response_kinds"], strict=True):
            assert r["outcome_reward"] == pytest.approx(outcome_reward(row["problem_type"], text, row["ground_truth"]))
            if kind == "malformed":
                assert r["outcome_reward"] == 0 and not r["format_ok"]
    o = report["overall"]
    assert o["all_correct_groups"] >= 2 and o["all_wrong_groups"] >= 2 and o["mixed_groups"] >= 20
    assert o["format_failures"] == sum(k == "malformed" for row in SAMPLE_ROWS for k in row["response_kinds"])


def test_embedded_audit_writes_plots_markdown_and_stops_its_server(embedded_run):
    out, report = embedded_run.out, embedded_run.report
    for name in PLOTS:
        assert_png(out / name, min_bytes=2000)
        assert f"]({name})" in (out / "report.md").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    o = report["overall"]
    assert f"{o['untrusted_groups']} of {o['mixed_groups']} mixed" in md
    assert f"**{report['trm']['failed']} of {report['trm']['requested']}**" in md
    # Prints where the report is.
    assert f"Report: {(out / 'report.md').resolve()}" in embedded_run.stdout
    assert "thinking rewards" in embedded_run.stderr  # the progress bar
    port = int(re.search(r":(\d+)/", report["trm"]["base_url"]).group(1))
    assert not port_open(port), "the embedded TRM server is still running after the command"


# ------------------------------------------------------------------- partial and total TRM failure


def test_partial_trm_failure_is_reported_as_failures_not_zeros(tmp_path, capsys):
    markers_400, markers_503 = ("Line one:",), ("Hmm.",)
    expected_failed = sum(any(m in text for m in markers_400 + markers_503)
                          for row in SAMPLE_ROWS for text in row["responses"])
    assert expected_failed >= 5
    with keyword_trm(fail_400=markers_400, fail_503=markers_503) as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--max-retries", "1", "--no-progress"])
    report = _checked_report(rc, tmp_path, capsys)
    assert report["trm"]["failed"] == expected_failed
    assert report["trm"]["failures"] == {"http_4xx": sum("Line one:" in t for r in SAMPLE_ROWS for t in r["responses"]),
                                         "http_5xx": sum("Hmm." in t for r in SAMPLE_ROWS for t in r["responses"])}
    for g, row in zip(report["groups"], SAMPLE_ROWS, strict=True):
        for r, text in zip(g["responses"], row["responses"], strict=True):
            if any(m in text for m in markers_400 + markers_503):
                assert r["trm_status"] == "failed" and r["thinking_reward"] is None
                assert r["thinking_term"] == 0 and r["reward"] == r["outcome_reward"]
            else:
                assert r["trm_status"] == "scored" and r["thinking_reward"] in (0.1, 0.5, 0.9)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"**{expected_failed} of 256**" in md
    # The keyword rule rewards the fluent wrong reasoning, so the fluent_wrong groups are distrusted.
    fluent = [g for g in report["groups"] if g["meta"]["scenario"] == "fluent_wrong"]
    assert fluent and all(g["untrusted"] and g["gamma"] < 0.7 for g in fluent)
    careful = [g for g in report["groups"] if g["meta"]["scenario"] == "careful_right" and g["mixed"]]
    assert careful and all(g["gamma"] == 1.0 for g in careful)


def test_out_of_range_trm_replies_are_failures_in_the_console_and_every_report(tmp_path, capsys):
    """A reply outside [0, 1] is no judgement of the reasoning: missing (never clipped to 0 or 1), counted."""

    def script(n, body):
        reasoning = _sent_text(body).split("Reasoning process:", 1)[1].lower()
        return "1.7" if "because" in reasoning else "<answer>-1</answer>" if "guess" in reasoning else "0.5"

    expected = sum(("because" in t.lower()) or ("guess" in t.lower()) for row in SAMPLE_ROWS for t in row["responses"])
    assert 0 < expected < 256
    with FaultInjectionServer(script) as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"TRM failures: {expected} of 256" in out
    report = _report(tmp_path)
    assert report["trm"]["failed"] == expected and report["trm"]["failures"] == {"out_of_range": expected}
    assert report["trm"]["clipped"] == 0 and report["trm"]["bytes_sent"] == server.bytes_received
    # Every connection that carried a scoring request is the client's (the GET /v1/models check is counted apart).
    assert report["trm"]["connections"] == server.connections <= report["trm"]["max_concurrency"]
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"**{expected} of 256** (out_of_range: {expected})" in md


@pytest.mark.parametrize("score", ["0.7", "0.1"])
def test_a_constant_trm_leaves_no_group_untrusted(tmp_path, capsys, score):
    """Equal thinking rewards are a tie (γ = 1), never distrust from float rounding (it reported 35-52 %)."""
    with FaultInjectionServer(lambda n, body: f"<answer>{score}</answer>") as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "untrusted groups (mixed, γ < 1): 0 of " in capsys.readouterr().out
    report = _report(tmp_path)
    check_report_numbers(report)
    o = report["overall"]
    assert o["mixed_groups"] >= 20 and o["untrusted_groups"] == 0 and o["untrusted_group_frac"] == 0
    assert all(g["gamma"] == 1.0 and not g["untrusted"] for g in report["groups"] if g["mixed"])
    assert "No mixed group has γ < 1" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_other_trust_grpo_settings_reach_the_math(tmp_path, capsys):
    with keyword_trm() as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress", "--alpha", "0.5", "--step", "300", "--anneal-steps", "600",
                   "--uniform-groups", "trust", "--no-norm-by-std", "--correct-threshold", "0.6"])
    assert rc == 0, capsys.readouterr().err
    report = _report(tmp_path)
    s = report["settings"]
    assert (s["alpha"], s["step"], s["anneal_steps"], s["uniform_groups"], s["norm_by_std"], s["correct_threshold"]) \
        == (0.5, 300, 600, "trust", False, 0.6)
    assert report["groups"][0]["anneal"] == pytest.approx(math.exp(-0.5))
    check_report_numbers(report)
    # uniform_groups=trust: an all-correct group gets its thinking term with γ = 1.
    uniform = [g for g in report["groups"] if not g["mixed"]]
    assert uniform and all(g["gamma"] == 1.0 for g in uniform)


def test_no_trust_weight_and_skip_uniform_query_policy(tmp_path, capsys):
    with keyword_trm() as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress", "--no-trust-weight", "--query-policy", "skip_uniform"])
        sent = server.requests
    report = _checked_report(rc, tmp_path, capsys)
    uniform = [g for g in report["groups"] if g["n_correct"] == 0 or g["n_wrong"] == 0]
    assert report["trm"]["skipped"] == sum(len(g["responses"]) for g in uniform) == 256 - sent
    assert all(r["trm_status"] == "skipped" and r["thinking_reward"] is None for g in uniform for r in g["responses"])
    assert report["overall"]["untrusted_groups"] == 0 and report["overall"]["gamma_mean"] == 1.0


def test_the_official_query_policy_is_the_reward_managers_rule(tmp_path, capsys):
    """``official`` (the reference code): no request for a group with every R^o >= 0.9 or every R^o <= 0.1,
    and R^t = 0 without a request for a response with R^o < 0.2 — as training's reward manager does."""
    with keyword_trm() as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress", "--query-policy", "official"])
        sent = [r["text"] for r in _sent(server)]
    assert rc == 0, capsys.readouterr().err
    report = _report(tmp_path)
    assert report["settings"]["query_policy"] == "official"
    check_report_numbers(report)
    expected_sent = 0
    for g in report["groups"]:
        ro = [r["outcome_reward"] for r in g["responses"]]
        uniform = all(o >= 0.9 for o in ro) or all(o <= 0.1 for o in ro)
        for r in g["responses"]:
            if uniform:
                assert r["trm_status"] == "skipped" and r["thinking_reward"] is None, g["id"]
            elif r["outcome_reward"] < 0.2:
                assert r["trm_status"] == "skipped" and r["thinking_reward"] == 0.0, g["id"]
            else:
                assert r["trm_status"] == "scored", g["id"]
                expected_sent += 1
    assert 0 < expected_sent == len(sent) == report["trm"]["requested"] < 256
    assert report["trm"]["skipped"] == 256 - expected_sent


def test_the_audit_flags_are_the_declared_options(tmp_path, capsys):
    """Every Trust-GRPO option and the reward options the audit uses are flags with the declared defaults; only
    the query policy has the audit's own default; a value goes to the declared option and its validation."""
    from dataclasses import fields

    from sophiavl_verl.config import SophiaVLRewardConfig, TrustGRPOConfig
    from sophiavl_verl.tools.audit import AuditSettings
    from sophiavl_verl.tools.audit.settings import REWARD_OPTIONS
    from sophiavl_verl.tools.cli import build_parser

    args = vars(build_parser().parse_args(["audit"]))
    trust = {f.name: f.default for f in fields(TrustGRPOConfig) if not f.name.startswith("_")}
    reward = {f.name: f.default for f in fields(SophiaVLRewardConfig) if f.name in REWARD_OPTIONS}
    assert set(trust) == {"alpha", "schedule", "anneal_steps", "correct_threshold", "uniform_groups",
                          "use_trust_weight", "epsilon"}
    assert {k: args[k] for k in trust} == trust
    assert {k: args[k] for k in reward} == reward | {"query_policy": "all"}
    assert args["max_retries"] == SophiaVLRewardConfig().max_retries == 5  # was 3 in the audit
    settings = AuditSettings.from_options(args)
    assert settings.trust_grpo == TrustGRPOConfig() and settings == AuditSettings()
    argv = ["audit", "--alpha", "0.7", "--no-trust-weight", "--uniform-groups", "trust", "--anneal-steps", "40",
            "--max-retries", "2", "--timeout", "9", "--no-require-format", "--query-policy", "skip_uniform"]
    settings = AuditSettings.from_options(vars(build_parser().parse_args(argv)))
    assert settings.trust_grpo == TrustGRPOConfig(alpha=0.7, use_trust_weight=False, uniform_groups="trust",
                                                  anneal_steps=40)
    r = settings.reward
    assert (r.max_retries, r.timeout_s, r.require_format, r.query_policy) == (2, 9.0, False, "skip_uniform")
    # The declared validation, named by flag: the allowed values come from config.py.
    assert "--uniform-groups must be one of ('skip', 'trust')" in _error(["audit", "--uniform-groups", "x"], capsys)
    assert "--query-policy must be one of ('all', 'skip_uniform', 'official')" in _error(
        ["audit", "--query-policy", "x"], capsys)
    assert "--trm-url must be an http(s) URL" in _error(["audit", "--trm-url", "ftp://x", "--trm-model", "m"], capsys)


def test_without_anneal_steps_t_is_the_runs_total_steps(tmp_path, capsys):
    """As in training, a null ``anneal_steps`` makes T the run's total steps (the paper's 1500 by default)."""
    with keyword_trm() as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--no-progress", "--limit", "2", "--step", "150", "--total-training-steps", "300"])
    assert rc == 0, capsys.readouterr().err
    report = _report(tmp_path)
    assert (report["settings"]["anneal_steps"], report["settings"]["total_training_steps"]) == (300, 300)
    assert all(g["anneal"] == pytest.approx(math.exp(-0.5)) for g in report["groups"])
    check_report_numbers(report)


def test_every_trm_request_failing_is_an_error_but_the_report_is_written(tmp_path, capsys):
    with keyword_trm(fail_all=True) as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--max-retries", "0", "--no-progress", "--limit", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "all 16 thinking reward requests" in err and "http_5xx: 16" in err
    report = _report(tmp_path)
    assert report["trm"]["failed"] == 16 and report["overall"]["thinking_reward_correct_mean"] is None
    assert all(r["thinking_reward"] is None for g in report["groups"] for r in g["responses"])


# ------------------------------------------------------------------------- verl's own rollout dumps


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    return AutoTokenizer.from_pretrained(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tok")))


def _decoded_prompt(tokenizer, prompt: str) -> str:
    """What verl's _log_rollout_data writes as `input`: the chat prompt's ids decoded without special tokens."""
    parts = prompt.split("<image>")
    content = [{"type": "image"} for _ in parts[1:]] + [{"type": "text", "text": "".join(parts)}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)


DUMP_GROUPS = SAMPLE_ROWS[:2] + SAMPLE_ROWS[8:9] + SAMPLE_ROWS[16:17]  # numerical x2, multiple choice, OCR
STEP = 40


@pytest.fixture(scope="module")
def verl_dumps(tmp_path_factory, tokenizer):
    """Rollout dumps written by verl's own writers (v1 trainer and legacy trainer), and the RL dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from sophiavl_verl.rewards import outcome_reward
    from sophiavl_verl.tools.data import build_rl_prompt

    root = tmp_path_factory.mktemp("dumps")
    dataset, inputs, outputs, gts, scores, keys = [], [], [], [], [], []
    for row in DUMP_GROUPS:
        prompt = build_rl_prompt(row["question"], row["problem_type"], num_images=1)
        image = (EMBEDDED_SAMPLE.parent / row["images"][0]).read_bytes()
        dataset.append({"data_source": "sophiavl", "prompt": [{"role": "user", "content": prompt}],
                        "images": [{"bytes": image}], "ability": row["problem_type"],
                        "reward_model": {"style": "rule", "ground_truth": row["ground_truth"]},
                        "extra_info": {"problem_type": row["problem_type"], "question": row["question"]}})
        uid = str(uuid.UUID(int=len(dataset)))
        decoded = _decoded_prompt(tokenizer, prompt)
        for session, text in enumerate(row["responses"]):
            if session == 0:  # a multi-turn session: an earlier output (index 0) before the final one (index 1)
                inputs.append(decoded)
                outputs.append("<think>first turn, superseded</think><answer>0</answer>")
                gts.append(row["ground_truth"])
                scores.append(0.0)
                keys.append(f"{uid}_{session}_0")
            inputs.append(decoded)
            outputs.append(text)
            gts.append(row["ground_truth"])
            scores.append(outcome_reward(row["problem_type"], text, row["ground_truth"]))
            keys.append(f"{uid}_{session}_{1 if session == 0 else 0}")
    pq.write_table(pa.Table.from_pylist(dataset), root / "train.parquet")

    # v1 trainer: the real _dump_generations on the minimal object it needs (no Ray, no TransferQueue).
    trainer = SimpleNamespace(global_steps=STEP, _write_generations=PPOTrainer._write_generations)
    PPOTrainer._init_dump_executor(trainer)
    PPOTrainer._dump_generations(trainer, inputs=inputs, outputs=outputs, gts=gts, scores=scores,
                                 reward_extra_infos_dict={"uid": keys}, dump_path=str(root / "v1"))
    PPOTrainer._shutdown_dump_executor(trainer)

    # Legacy RayPPOTrainer: its static writer; rows have no uid, only the prompt text ties a group together.
    numerical = [i for i, k in enumerate(keys) if not k.endswith("_0_0") and i < 2 * 9]
    RayPPOTrainer._write_generations(
        [inputs[i] for i in numerical], [outputs[i] for i in numerical], [gts[i] for i in numerical],
        [scores[i] for i in numerical], {"acc": [scores[i] for i in numerical]}, str(root / "legacy"), STEP,
    )
    return SimpleNamespace(root=root, v1=root / "v1" / f"{STEP}.jsonl", legacy=root / "legacy" / f"{STEP}.jsonl",
                           dataset=root / "train.parquet")


def test_verl_dump_file_is_verls_format(verl_dumps):
    rows = [json.loads(line) for line in verl_dumps.v1.read_text().splitlines()]
    assert set(rows[0]) == {"input", "output", "gts", "score", "step", "uid"} and rows[0]["step"] == STEP
    assert rows[0]["input"].startswith("system\nYou are a helpful assistant.\nuser\n")


def test_audit_of_a_v1_dump_with_the_dataset(verl_dumps, tmp_path, capsys):
    with keyword_trm() as server:
        rc = main(["audit", str(verl_dumps.v1.parent), "--dataset", str(verl_dumps.dataset),
                   "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path), "--no-progress"])
        requests = _sent(server)
    report = _checked_report(rc, tmp_path, capsys)
    inp = report["input"]
    assert inp["format"] == "verl_dump" and inp["rows"] == len(DUMP_GROUPS) * 9
    assert inp["dataset_matched_groups"] == len(DUMP_GROUPS) and inp["groups_without_images"] == 0
    assert len(report["groups"]) == len(DUMP_GROUPS)
    for g, row in zip(report["groups"], DUMP_GROUPS, strict=True):
        assert g["problem_type"] == row["problem_type"] and g["question"] == row["question"]
        assert g["step"] == STEP and g["anneal"] == pytest.approx(math.exp(-STEP / 1500))
        # Only the final output of the multi-turn session counts, as in verl's GRPO.
        assert [r["response"] for r in g["responses"]] == row["responses"]
        assert all(r["dump_score"] == pytest.approx(r["outcome_reward"]) for r in g["responses"])
    assert len(requests) == len(DUMP_GROUPS) * 8 and all(r["images"] == 1 for r in requests)
    # The TRM gets the clean question, not the decoded chat prompt with the reasoning instructions.
    questions = [f"Question: {row['question'].strip()}\nReasoning process:" for row in DUMP_GROUPS]
    assert all(sum(q in r["text"] for q in questions) == 1 for r in requests)
    assert not any("pondering deeply" in r["text"] for r in requests)


def test_audit_of_a_legacy_dump_without_images(verl_dumps, tmp_path, capsys):
    with keyword_trm() as server:
        rc = main(["audit", str(verl_dumps.legacy), "--problem-type", "numerical", "--trm-url", server.base_url,
                   "--trm-model", server.model, "--out", str(tmp_path), "--no-progress", "--step", "0"])
        requests = _sent(server)
    report = _checked_report(rc, tmp_path, capsys)
    assert [g["problem_type"] for g in report["groups"]] == ["numerical", "numerical"]
    assert [g["question"] for g in report["groups"]] == [row["question"] for row in DUMP_GROUPS[:2]]
    assert report["input"]["groups_without_images"] == 2 and all(r["images"] == 0 for r in requests)
    assert report["settings"]["steps_used"] == [0] and report["groups"][0]["anneal"] == 1.0
    assert "without their images" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_groups_file_with_base64_images(tmp_path, capsys):
    import base64

    png = (EMBEDDED_SAMPLE.parent / SAMPLE_ROWS[0]["images"][0]).read_bytes()
    rows = [SAMPLE_ROWS[0] | {"images": ["data:image/png;base64," + base64.b64encode(png).decode()]},
            SAMPLE_ROWS[1] | {"images": [base64.b64encode(png).decode()]}]
    groups = tmp_path / "groups.jsonl"
    groups.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with keyword_trm() as server:
        rc = main(["audit", str(groups), "--trm-url", server.base_url, "--trm-model", server.model,
                   "--out", str(tmp_path / "o"), "--no-progress"])
        requests = _sent(server)
    assert rc == 0, capsys.readouterr().err
    assert len(requests) == 16 and all(r["images"] == 1 for r in requests)
    report = _report(tmp_path / "o")
    assert [g["images"] for g in report["groups"]] == [["<base64 image>"], ["<base64 image>"]]
    check_report_numbers(report)


# ------------------------------------------------------------------------------------------ bad input


def _audited(groups: Path, out: Path, capsys) -> dict:
    """``sophiavl-verl audit`` of a groups file against :func:`keyword_trm`; its ``report.json``."""
    with keyword_trm() as server:
        rc = main(["audit", str(groups), "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(out),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    return _report(out)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_dump_with_a_missing_field_names_file_and_line(verl_dumps, tmp_path, capsys):
    lines = verl_dumps.v1.read_text().splitlines()
    row = json.loads(lines[4])
    del row["gts"]
    lines[4] = json.dumps(row)
    bad = tmp_path / "7.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    err = _error(["audit", str(bad), "--problem-type", "numerical", "--trm-url", "http://127.0.0.1:9/v1",
                  "--trm-model", "m", "--out", str(tmp_path / "o")], capsys)
    assert f"{bad}:5: missing field 'gts'" in err


def test_dump_with_a_group_of_one_names_file_and_line(verl_dumps, tmp_path, capsys):
    lines = verl_dumps.v1.read_text().splitlines()
    row = json.loads(lines[-1])
    row["uid"] = f"{uuid.uuid4()}_0_0"  # its own prompt uid: a group of one response
    bad = tmp_path / "8.jsonl"
    bad.write_text("\n".join(lines[:-1] + [json.dumps(row)]) + "\n")
    err = _error(["audit", str(bad), "--problem-type", "numerical", "--out", str(tmp_path / "o")], capsys)
    assert f"{bad}:{len(lines)}: a group of 1 response" in err


def test_unreadable_image_names_file_line_and_image(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    row = dict(SAMPLE_ROWS[0], images=["broken.png"])
    groups = tmp_path / "groups.jsonl"
    groups.write_text(json.dumps(SAMPLE_ROWS[1] | {"images": []}) + "\n" + json.dumps(row) + "\n")
    err = _error(["audit", str(groups), "--out", str(tmp_path / "o")], capsys)
    assert f"{groups}:2: image 'broken.png' cannot be read" in err


def test_the_audit_refuses_the_images_data_preparation_refuses(tmp_path, capsys):
    """One image guard (sophiavl_verl.tools.data.ImageGuard) for both: a decompression bomb and paths out of the
    root."""
    from sophiavl_verl.tools.data import prepare_rl

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("1", (10000, 10000)).save(folder / "bomb.png")  # 10^8 pixels: Pillow only warns, below 2x its limit
    (tmp_path / "secret.png").write_bytes((EMBEDDED_SAMPLE.parent / SAMPLE_ROWS[0]["images"][0]).read_bytes())
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    data = folder / "rows.json"
    data.write_text(json.dumps([{"problem": "Q", "solution": "1", "problem_type": "numerical", "path": "bomb.png"}]))
    reason = prepare_rl([data], tmp_path / "out.parquet").rejected[0].reason
    capsys.readouterr()
    assert reason.startswith(f"image too large: {folder / 'bomb.png'}: Image size (100000000 pixels) exceeds limit")
    groups = folder / "groups.jsonl"
    for image, message in [
        ("bomb.png", f"{groups}:1: image 'bomb.png' cannot be read: {reason}"),
        ("../secret.png", f"{groups}:1: image '../secret.png' cannot be read: image path '../secret.png' resolves to "
                          f"{(tmp_path / 'secret.png').resolve()}, outside the image root"),
        (str(tmp_path / "secret.png"), "outside the image root"),
        ("link.png", "(pass --allow-outside-image-root to read it)"),
    ]:
        groups.write_text(json.dumps(SAMPLE_ROWS[0] | {"images": [image]}) + "\n")
        err = _error(["audit", str(groups), "--out", str(tmp_path / "o")], capsys)
        assert message in err and err.count("\n") == 1, err
    # Opting out reads the symlinked image (the audit then stops at the unreachable TRM, after loading).
    err = _error(["audit", str(groups), "--allow-outside-image-root", "--trm-url", f"http://127.0.0.1:{free_port()}/v1",
                  "--trm-model", "m", "--out", str(tmp_path / "o")], capsys)
    assert "cannot reach the thinking reward model" in err


def test_unknown_problem_type_and_malformed_json_name_file_and_line(tmp_path, capsys):
    groups = tmp_path / "groups.jsonl"
    groups.write_text(json.dumps(SAMPLE_ROWS[0] | {"images": [], "problem_type": "essay"}) + "\n")
    assert f"{groups}:1: unknown problem_type 'essay'" in _error(["audit", str(groups)], capsys)
    groups.write_text(json.dumps(SAMPLE_ROWS[0] | {"images": []}) + "\n{not json\n")
    assert f"{groups}:2: not valid JSON" in _error(["audit", str(groups)], capsys)


def test_a_non_finite_number_names_file_line_and_field_and_a_byte_order_mark_is_accepted(tmp_path, capsys):
    groups = tmp_path / "groups.jsonl"
    row = SAMPLE_ROWS[0] | {"images": []}
    groups.write_text(json.dumps(row) + "\n"
                      + json.dumps(row).replace('"ground_truth": ', '"ground_truth": Infinity, "x": ') + "\n")
    err = _error(["audit", str(groups), "--out", str(tmp_path / "never")], capsys)
    assert err == f"sophiavl-verl audit: error: {groups}:2: ground_truth is Infinity; JSON numbers must be finite\n"
    groups.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode("utf-8"))  # as some editors save
    assert len(_audited(groups, tmp_path / "o", capsys)["groups"]) == 1


@pytest.mark.parametrize("url", ["http://user:s3cr3t@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api-version=1",
                                 "http://127.0.0.1:9/v1 ", "http:///v1"])
def test_a_trm_url_that_would_leak_or_misroute_is_refused_before_any_request(tmp_path, capsys, url):
    err = _error(["audit", "--trm-url", url, "--trm-model", "m", "--out", str(tmp_path / "never")], capsys)
    assert err.startswith("sophiavl-verl audit: error: --trm-url ") and err.count("\n") == 1, err
    assert "s3cr3t" not in err and not (tmp_path / "never").exists()
    if "@" in url:
        assert "put the API key in the environment variable named by --trm-api-key-env (default " in err


def test_unreachable_trm_url_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    err = _error(["audit", "--trm-url", url, "--trm-model", "m", "--out", str(tmp_path)], capsys)
    assert f"cannot reach the thinking reward model at {url}" in err


def test_bad_settings_name_the_flag(capsys):
    assert "--anneal-steps" in _error(["audit", "--anneal-steps", "0"], capsys)
    assert "--schedule" in _error(["audit", "--schedule", "sawtooth"], capsys)


# ---------------------------------------------------------------------------------- Ctrl-C cleanup


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_stops_the_embedded_server(tmp_path, signum):
    """Interrupted while scoring (Ctrl-C, or a closed terminal), the command exits 130 and its TRM server is gone."""
    script = Path(sys.executable).with_name("sophiavl-verl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sophiavl_verl.tools.cli"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*command, "audit", "--out", str(tmp_path / "r"), "--max-concurrency", "1"],
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    port = None
    deadline = time.monotonic() + 600
    try:
        while port is None:  # "[audit] scoring N responses ... at http://127.0.0.1:PORT/v1"
            match = re.search(r"at http://127\.0\.0\.1:(\d+)/", log.read_text())
            if match:
                port = int(match.group(1))
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert port_open(port)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert not port_open(port), "the embedded TRM server survived Ctrl-C"


# ------------------------------------------------------------------ the report folder and the scores


def test_lone_surrogates_in_the_input_are_written_as_replacement_characters(tmp_path, capsys):
    groups = tmp_path / "groups.jsonl"
    row = SAMPLE_ROWS[0] | {"images": [], "question": SAMPLE_ROWS[0]["question"] + " \ud800?"}
    row["responses"] = [row["responses"][0] + " \udfff"] + row["responses"][1:]
    groups.write_text(json.dumps(row) + "\n", encoding="utf-8")  # json.dumps escapes them: valid JSON, valid UTF-8
    assert "\\ud800" in groups.read_text(encoding="utf-8")
    report = _audited(groups, tmp_path / "o", capsys)
    assert report["groups"][0]["question"].endswith(" \ufffd?")
    assert report["groups"][0]["responses"][0]["response"].endswith(" \ufffd")
    assert "\ufffd" in (tmp_path / "o" / "report.md").read_text(encoding="utf-8")


def test_a_second_audit_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    import fcntl
    import os

    out = tmp_path / "report"
    out.mkdir()
    with keyword_trm() as server:
        folder = os.open(out, os.O_RDONLY)  # what a running audit holds
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(out),
                       "--no-progress", "--limit", "2"])
            err = capsys.readouterr().err
            assert rc == 2 and f"--out {out} is being written by another sophiavl-verl audit" in err
            assert server.requests == 0 and list(out.iterdir()) == []
        finally:
            os.close(folder)
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(out),
                   "--no-progress", "--limit", "2"])
    assert rc == 0 and (out / "report.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["by_problem_type.png", "gamma_hist.png", "report.json",
                                                     "report.md", "thinking_by_correctness.png"]  # no temp files


def test_the_scores_survive_a_failure_to_draw_or_build_the_report(tmp_path, capsys, monkeypatch):
    import sophiavl_verl.tools.audit.plots
    import sophiavl_verl.tools.audit.report

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(sophiavl_verl.tools.audit.plots, "plot_audit", broken)
    with keyword_trm() as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path / "a"),
                   "--no-progress", "--limit", "2"])
        err = capsys.readouterr().err
        assert rc == 2 and "drawing the plots failed (RuntimeError: injected fault); every score is in" in err
        report = _report(tmp_path / "a")
        assert report["trm"]["scored"] == 16 and (tmp_path / "a" / "report.md").is_file()

        monkeypatch.setattr(sophiavl_verl.tools.audit.report, "build_report", broken)
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path / "b"),
                   "--no-progress", "--limit", "2"])
        err = capsys.readouterr().err
    assert rc == 2 and sum("error:" in line for line in err.splitlines()) == 1
    assert f"the scores are saved in {tmp_path / 'b' / 'scores.json'}" in err
    scores = json.loads((tmp_path / "b" / "scores.json").read_text(encoding="utf-8"))
    assert [g["id"] for g in scores] == [SAMPLE_ROWS[0]["id"], SAMPLE_ROWS[1]["id"]]
    assert all(r["trm_status"] == "scored" and r["thinking_reward"] in (0.1, 0.5, 0.9)
               for g in scores for r in g["responses"])


def test_an_audit_that_fails_before_writing_leaves_no_out_folder(tmp_path, capsys):
    groups = tmp_path / "groups.jsonl"
    groups.write_text("{not json\n")
    assert "not valid JSON" in _error(["audit", str(groups), "--out", str(tmp_path / "never")], capsys)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------ an interrupted audit resumes


def _keyword_score(body: dict) -> str:
    reasoning = _sent_text(body).split("Reasoning process:", 1)[1].lower()
    return f"<answer>{0.9 if 'because' in reasoning else 0.1 if 'guess' in reasoning else 0.5}</answer>"


def _same_numbers(report: dict) -> dict:
    """What an interrupted-then-resumed audit must report exactly as an uninterrupted one."""
    trm = {k: report["trm"][k] for k in ("requested", "scored", "failed", "skipped", "failures", "model")}
    return {"input": report["input"], "groups": report["groups"], "overall": report["overall"],
            "by_problem_type": report["by_problem_type"], "settings": report["settings"], "trm": trm}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_audit_keeps_its_scores_and_the_same_command_continues(tmp_path, capsys, signum):
    """Issue 18: Ctrl-C dropped every score. Now the scores stay in --out, and the rerun asks only for the rest."""
    saved_groups, group_size = 2, len(SAMPLE_ROWS[0]["responses"])
    hang = {"on": True}

    async def script(n, body):
        if hang["on"] and n >= saved_groups * group_size:  # the third group's first request never answers
            await asyncio.sleep(3600)
        return _keyword_score(body)

    out = tmp_path / "report"
    with FaultInjectionServer(script) as server:
        argv = ["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(out), "--limit", "4",
                "--max-concurrency", "1", "--no-progress"]
        log = tmp_path / "stderr.txt"
        with open(log, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "sophiavl_verl.tools.cli", *argv], stdout=subprocess.DEVNULL,
                                    stderr=stderr)
        try:
            deadline = time.monotonic() + 300
            while server.requests <= saved_groups * group_size:  # two groups answered, the third one's asked
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        checkpoint = out / "trm_scores.jsonl"
        assert len(checkpoint.read_text().splitlines()) == 1 + saved_groups * group_size
        assert f"interrupted: {saved_groups * group_size} thinking rewards are saved in {checkpoint}" in log.read_text()
        assert not (out / "report.json").exists()
        first_run = [_sent_text(body) for body in server.bodies]

        hang["on"] = False
        assert main(argv) == 0, capsys.readouterr().err
        resumed_run = [_sent_text(body) for body in server.bodies[len(first_run):]]
    assert "resuming: 16 thinking rewards saved in" in capsys.readouterr().err
    resumed = _report(out)
    assert not checkpoint.exists()  # the report holds every score

    with FaultInjectionServer(lambda n, body: _keyword_score(body)) as server:
        argv[argv.index("--trm-url") + 1] = server.base_url
        argv[argv.index("--out") + 1] = str(tmp_path / "uninterrupted")
        assert main(argv) == 0, capsys.readouterr().err
        every_request = [_sent_text(body) for body in server.bodies]
    uninterrupted = _report(tmp_path / "uninterrupted")

    # The server saw only what was not saved: the hung request and the groups after it, each once.
    assert len(set(every_request)) == len(every_request) == 4 * group_size
    assert resumed_run == every_request[saved_groups * group_size:]
    assert not set(resumed_run) & set(first_run[: saved_groups * group_size])
    assert resumed["trm"]["resumed"] == saved_groups * group_size and uninterrupted["trm"]["resumed"] == 0
    assert resumed["trm"]["http_requests"] == len(resumed_run)
    assert _same_numbers(resumed) == _same_numbers(uninterrupted)


def test_saved_scores_are_checked_and_keyed_by_what_the_request_carries(tmp_path, capsys):
    from sophiavl_verl.thinking_reward import ThinkingRewardItem
    from sophiavl_verl.tools.audit.scoring import ScoreCheckpoint, request_key

    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4), "red").save(image)
    options = SimpleNamespace(trm_prompt="paper", max_image_pixels=None)
    client = SimpleNamespace(model="m", max_tokens=32, options=options)
    reference = SimpleNamespace(**{**vars(options), "trm_prompt": "reference"})
    item = ThinkingRewardItem(question="Q", response="R", images=(image,))
    key = request_key(item, client)
    assert request_key(ThinkingRewardItem("Q", "R", (image.read_bytes(),)), client) == key  # the bytes, not the name
    for other_client, other_item in [
        (SimpleNamespace(**{**vars(client), "model": "m2"}), item),
        (SimpleNamespace(**{**vars(client), "options": reference}), item),
        (SimpleNamespace(**{**vars(client), "max_tokens": 16}), item),
        (client, ThinkingRewardItem("Q", "R2", (image,))),
        (client, ThinkingRewardItem("Q2", "R", (image,))),
        (client, ThinkingRewardItem("Q", "R", ())),
        (client, ThinkingRewardItem("Q", "R", (image.read_bytes() + b"\0",))),
    ]:
        assert request_key(other_item, other_client) != key

    path = tmp_path / "trm_scores.jsonl"
    path.write_text('{"format": "sophiavl-verl au')  # even the header's write was cut off
    saved = ScoreCheckpoint(path)
    assert saved.scores == {} and path.read_text() == ""
    saved.add([(key, 0.7), ("f" * 64, math.nan)])  # a failed request is asked again, never saved
    assert ScoreCheckpoint(path).scores == {key: 0.7}
    with open(path, "a") as f:
        f.write('{"key": "' + "a" * 64 + '", "thinking_rew')  # a write cut off by the interrupt
    assert ScoreCheckpoint(path).scores == {key: 0.7}
    assert path.read_text().endswith("}\n")  # the torn tail is dropped, so the next line starts clean
    for bad in ['{"key": "x", "thinking_reward": 0.5}', '{"key": "' + "b" * 64 + '", "thinking_reward": 1.5}',
                '{"key": "' + "b" * 64 + '", "thinking_reward": true}', "[1, 2]"]:
        path.write_text(path.read_text().splitlines()[0] + "\n" + bad + "\n")
        err = _error(["audit", "--out", str(tmp_path), "--trm-url", "http://127.0.0.1:9/v1", "--trm-model", "m"],
                     capsys)
        assert err == (f"sophiavl-verl audit: error: {path}:2: not a line of the audit's saved thinking rewards; "
                       "delete the file to score every response again\n")


# ------------------------------------------------------------------------------- the TRM preflight check


def _redirect_to(server: FaultInjectionServer, path: str):
    return lambda *args: web.Response(status=307, headers={"Location": f"http://127.0.0.1:{server.port}{path}"})


def test_the_preflight_and_scoring_drop_the_api_key_on_a_redirect_to_another_port(tmp_path, capsys, monkeypatch):
    """The /models check goes the client's way: a redirect to another origin loses the Authorization header
    (urllib, which it used, forwarded the key to wherever the endpoint redirected)."""
    secret = "sk-audit-preflight-SECRET"
    monkeypatch.setenv("SOPHIAVL_TRM_API_KEY", secret)
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as elsewhere:
        redirect = _redirect_to(elsewhere, "/v1/models")
        chat_redirect = _redirect_to(elsewhere, "/v1/chat/completions")
        with FaultInjectionServer(chat_redirect, models=redirect) as server:
            rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                       "--no-progress", "--limit", "1"])
            assert server.models_headers[0]["Authorization"] == f"Bearer {secret}"  # the configured endpoint
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert elsewhere.models_requests == 1 and "Authorization" not in elsewhere.models_headers[0]
    assert elsewhere.requests > 0 and all("Authorization" not in headers for headers in elsewhere.headers)
    assert secret not in out + err


def test_a_trickling_models_endpoint_fails_within_the_timeout(tmp_path, capsys):
    """A /models that sends a byte every 0.5 s: --timeout bounds the whole request (urllib's bounded each read)."""

    async def trickle(request):
        reply = web.StreamResponse(headers={"Content-Type": "application/json"})
        await reply.prepare(request)
        for _ in range(20):  # 10 s in all
            await reply.write(b" ")
            await asyncio.sleep(0.5)
        return reply

    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>", models=trickle) as server:
        start = time.monotonic()
        err = _error(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                      "--timeout", "1", "--no-progress"], capsys)
        seconds = time.monotonic() - start
    assert f"cannot reach the thinking reward model at {server.base_url}" in err and "timeout" in err
    assert seconds < 3 * 1.0 and server.requests == 0


def test_the_models_check_reads_within_the_reply_size_cap(tmp_path, capsys):
    big = web.Response(body=b" " * (8 * 2**20), content_type="application/json")
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>", models=lambda request: big) as server:
        err = _error(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                      "--no-progress"], capsys)
    assert "max_reply_bytes" in err and server.requests == 0


def test_credentials_in_the_trm_url_are_never_shown(tmp_path, capsys, caplog):
    import logging

    from sophiavl_verl.thinking_reward import ThinkingRewardClient

    caplog.set_level(logging.DEBUG)
    url = f"http://trm-user:hunter2-pass@127.0.0.1:{free_port()}/v1"
    with pytest.raises(ValueError) as info:
        ThinkingRewardClient(url, "trm", api_key="sk-x")
    assert "hunter2" not in str(info.value) and "-pass" not in str(info.value) and "trm-user" not in str(info.value)
    rc = main(["audit", "--trm-url", url, "--trm-model", "m", "--out", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc != 0 and "hunter2" not in out + err + caplog.text


def test_nan_in_a_dump_column_the_audit_does_not_read_is_accepted_but_not_in_the_ones_it_reads(verl_dumps, tmp_path):
    """verl's rollout dumps write a missing thinking reward as NaN (Python's json): the audit of a run's own dumps
    must read them; a non-finite number in what the audit reads (here the outcome score) is still refused."""
    from sophiavl_verl.tools.audit.inputs import load_verl_dump

    rows = [json.loads(line) for line in verl_dumps.v1.read_text().splitlines()]
    dump = tmp_path / "rollouts"
    dump.mkdir()
    (dump / "1.jsonl").write_text("".join(json.dumps({**row, "sophiavl_thinking_reward": math.nan}) + "\n"
                                          for row in rows))
    groups, info = load_verl_dump(dump, problem_type="numerical")
    assert info["rows"] == len(rows) and groups
    rows[3]["score"] = math.inf
    (dump / "1.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(AuditError, match=rf"{dump / '1.jsonl'}:4: score is Infinity; JSON numbers must be finite"):
        load_verl_dump(dump, problem_type="numerical")
