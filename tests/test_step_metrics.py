"""keys.STEP_METRICS is exactly what the registered estimator logs: none undeclared, none declared and never logged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sophiavl_verl.integration.estimator import compute_trust_grpo_advantage
from sophiavl_verl.keys import (
    OUTCOME_KEY,
    STEP_METRICS,
    THINKING_KEY,
    TRM_COST_COLUMNS,
    TRM_FAILURE_KEY,
    TRM_LATENCY_KEY,
    TRM_STATUS_KEY,
)


def _step_metrics(failures: list[str]) -> dict[str, float]:
    """The metrics of one step of two groups of three: one mixed, one all wrong; every extra-info column present."""
    outcome = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    thinking = [0.2, 0.9, float("nan"), 0.5, float("nan"), float("nan")]
    status = ["scored", "scored", "failed", "scored", "skipped", "failed"]
    batch = {
        OUTCOME_KEY: np.array(outcome, dtype=object),
        THINKING_KEY: np.array(thinking, dtype=object),
        TRM_STATUS_KEY: np.array(status, dtype=object),
        TRM_FAILURE_KEY: np.array(failures, dtype=object),
        TRM_LATENCY_KEY: np.array([0.1, 0.2, 0.3, 0.4, float("nan"), 0.5], dtype=object),
        **{key: np.array([1.0] * 6, dtype=object) for _, key, _ in TRM_COST_COLUMNS},
    }
    rewards = torch.zeros(6, 4)
    rewards[:, -1] = torch.tensor(outcome)
    config = {"trust_grpo": {"alpha": 0.3}, "norm_adv_by_std_in_grpo": True}
    _, _, metrics = compute_trust_grpo_advantage(
        rewards, torch.ones(6, 4), np.array(["a"] * 3 + ["b"] * 3, dtype=object), config,
        non_tensor_batch=batch, global_step=1, total_training_steps=10,
    )
    return metrics


@pytest.mark.parametrize("failures", [["", "", "timeout", "", "", "unparseable"],
                                      ["", "", "http_5xx", "", "", "http_5xx"]])
def test_the_estimator_logs_exactly_the_declared_metrics(failures):
    metrics = _step_metrics(failures)
    kinds = sorted({kind for kind in failures if kind})
    assert sorted(k for k in metrics if k.startswith("trm/failed_")) == [f"trm/failed_{kind}" for kind in kinds]
    logged = {re.sub(r"^trm/failed_\w+$", "trm/failed_<kind>", name) for name in metrics}
    assert logged == set(STEP_METRICS)
    assert metrics["trust_grpo/untrusted_group_frac"] == 1.0  # the mixed group favours its wrong response
    assert metrics["trm/failed"] == 2.0 and metrics["trm/skipped"] == 1.0 and metrics["trm/requests"] == 5.0


def test_every_cost_column_is_a_declared_metric():
    assert {metric for _, _, metric in TRM_COST_COLUMNS} <= set(STEP_METRICS)
