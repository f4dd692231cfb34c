"""The names that travel through verl between the reward manager, the estimator and the audit.

The ``sophiavl`` reward manager writes these per-sample reward extra-info keys; verl carries them (in
TransferQueue, ``non_tensor_batch`` and the rollout dumps) to the ``trust_grpo`` estimator, which reads
them, and to ``sophiavl-verl audit``, which reads them back from the dumps. They are public: a reward
manager of your own feeds ``trust_grpo`` by writing ``OUTCOME_KEY`` and ``THINKING_KEY``.
"""

from __future__ import annotations

__all__ = [
    "OUTCOME_KEY",
    "THINKING_KEY",
    "TRM_STATUS_KEY",
    "TRM_LATENCY_KEY",
    "TRM_FAILURE_KEY",
    "TRM_COST_COLUMNS",
    "PAD_UID_PATTERN",
    "STEP_METRICS",
]

#: Per-sample reward extra info written by the ``sophiavl`` reward manager.
OUTCOME_KEY = "sophiavl_outcome_reward"
THINKING_KEY = "sophiavl_thinking_reward"  # float in [0, 1], NaN = missing
TRM_STATUS_KEY = "sophiavl_trm_status"  # "scored" | "failed" | "skipped"
TRM_LATENCY_KEY = "sophiavl_trm_latency_s"  # NaN when no request was sent
#: The uid verl's ``padding_utils.upsample_batch_to_divisible_size`` gives the rows it adds
#: (``f"pad{uuid.uuid4().hex}"``); they copy a real sample's reward extra info and count in no metric.
PAD_UID_PATTERN = r"pad[0-9a-f]{32}"
TRM_FAILURE_KEY = "sophiavl_trm_failure"  # the kind of a failed request ("" otherwise), summed as trm/failed_<kind>
#: What each response's TRM request cost: (``TRMResult`` attribute, reward extra info key, per-step sum metric).
TRM_COST_COLUMNS = (
    ("requests", "sophiavl_trm_http_requests", "trm/http_requests"),
    ("connections", "sophiavl_trm_connections", "trm/connections"),
    ("image_encodes", "sophiavl_trm_image_encodes", "trm/image_encodes"),
    ("bytes_sent", "sophiavl_trm_bytes_sent", "trm/bytes_sent"),
)


#: Every metric the ``trust_grpo`` estimator logs at each training step (verl's tracker), with its meaning.
#: ``trm/failed_<kind>`` stands for one metric per failure kind of the thinking reward client. verl's padding rows
#: (uid ``pad<hex>``) count in none of them. docs/options.md's metrics table is generated from here.
STEP_METRICS = {
    "trust_grpo/gamma_mean": "mean trust weight γ over the mixed groups (a scored correct and a scored wrong response)",
    "trust_grpo/gamma_min": "smallest γ of a mixed group",
    "trust_grpo/untrusted_group_frac": "share of the mixed groups with γ < 1 (the TRM favoured the wrong responses)",
    "trust_grpo/mixed_group_frac": "share of the step's groups that are mixed",
    "trust_grpo/mu_correct": "mean over mixed groups of μ_c, the mean thinking reward of a group's correct responses",
    "trust_grpo/mu_wrong": "mean over mixed groups of μ_w, the mean thinking reward of a group's wrong responses",
    "trust_grpo/anneal": "the annealing factor of Eq. 5 at this step, e.g. e^(-step/T)",
    "trust_grpo/thinking_term_mean": "mean over responses of γ · α · anneal · R^t, what the thinking reward adds",
    "trust_grpo/thinking_missing_frac": "share of responses without a thinking reward (not asked, or the TRM failed)",
    "trm/requests": "responses sent to the TRM",
    "trm/skipped": "responses the query policy did not send",
    "trm/failed": "responses whose thinking reward is missing because the TRM failed (NaN, never 0)",
    "trm/failed_<kind>": "those failures by kind (timeout, http_5xx, unparseable, ...)",
    "trm/latency_p50_s": "median seconds from the manager's request to a score or a failure",
    "trm/latency_p95_s": "95th percentile of the same",
    "trm/thinking_reward_correct_mean": "mean R^t of the scored correct responses",
    "trm/thinking_reward_wrong_mean": "mean R^t of the scored wrong responses",
    "trm/http_requests": "HTTP requests sent, retries included",
    "trm/connections": "TCP connections opened",
    "trm/image_encodes": "images decoded and re-encoded as PNG before sending (0 when the original bytes are sent)",
    "trm/bytes_sent": "request bytes sent to the TRM",
}
