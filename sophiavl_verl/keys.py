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

