"""What the audit applies to the rollouts: training's own options, plus the few that only the audit has.

The options the audit shares with training are not declared here. They are the fields of
:class:`~sophiavl_verl.config.TrustGRPOConfig` (``algorithm.trust_grpo.*``) and of
:class:`~sophiavl_verl.config.SophiaVLRewardConfig` (``reward.reward_kwargs.*``, those in
:data:`REWARD_OPTIONS`), with their types, defaults, docs and validation. The command line makes a flag of
each (:func:`flag` names it) and reports an invalid value under that flag.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sophiavl_verl.config import ConfigError, SophiaVLRewardConfig, TrustGRPOConfig, is_int
from sophiavl_verl.errors import AuditError

__all__ = ["AUDIT_QUERY_POLICY", "AuditSettings", "MAX_TIMEOUT_S", "PAPER_TOTAL_STEPS", "REWARD_OPTIONS",
           "check_run_options", "declared_fields", "flag"]

#: The reward manager's options the audit uses (the others concern training's reward workers).
REWARD_OPTIONS = ("trm_base_url", "trm_model", "trm_api_key_env", "query_policy", "timeout_s", "max_retries",
                  "require_format")
#: The audit's default query policy, not training's ``skip_uniform``: the audit judges the thinking reward
#: model, so it asks about every response, also those whose requests would change no reward in training.
AUDIT_QUERY_POLICY = "all"
#: The run's total steps when none is given: the paper's 1500 (T of the schedule when
#: ``anneal_steps`` is null, as in training).
PAPER_TOTAL_STEPS = 1500
#: Longest ``timeout_s`` accepted (a day); larger values overflow timers deep in asyncio and aiohttp.
MAX_TIMEOUT_S = 86400.0

_PREFIX = "audit"  # how the configs name a key in their errors: "audit.<field>", rewritten to the flag
_FLAGS = {  # where a flag is not "--" + the field name with dashes
    "trm_base_url": "--trm-url",
    "timeout_s": "--timeout",
    "use_trust_weight": "--no-trust-weight",
    "require_format": "--no-require-format",
    "norm_by_std": "--no-norm-by-std",
}


def flag(name: str) -> str:
    """The command-line flag of an option: ``anneal_steps`` -> ``--anneal-steps``, a bool on by default ``--no-…``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The options a config dataclass declares (its public fields)."""
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@dataclass(frozen=True)
class AuditSettings:
    """What the audit applies (the command-line flag of each in brackets).

    Args:
        trust_grpo: The ``trust_grpo`` estimator's options, as training reads them from
            ``algorithm.trust_grpo`` (a flag each: ``--alpha``, ``--schedule``, ...).
        reward: The ``sophiavl`` reward manager's options of :data:`REWARD_OPTIONS` (``--trm-url``,
            ``--query-policy``, ``--timeout``, ...); ``query_policy`` defaults to :data:`AUDIT_QUERY_POLICY`.
        step: Global training step for the annealing factor [``--step``]. ``None``: the ``step`` of each
            dump row / group, else 1 (verl's first training step).
        total_training_steps: The run's total steps: T of the schedule when ``trust_grpo.anneal_steps``
            is null, as in training [``--total-training-steps``].
        norm_by_std: Divide advantages by the group std, verl's ``algorithm.norm_adv_by_std_in_grpo``
            [``--no-norm-by-std``].

    Raises:
        AuditError: On an invalid value, naming its flag.
    """

    trust_grpo: TrustGRPOConfig = field(default_factory=lambda: TrustGRPOConfig(_prefix=_PREFIX))
    reward: SophiaVLRewardConfig = field(
        default_factory=lambda: SophiaVLRewardConfig(query_policy=AUDIT_QUERY_POLICY, _prefix=_PREFIX)
    )
    step: int | None = None
    total_training_steps: int = PAPER_TOTAL_STEPS
    norm_by_std: bool = True

    def __post_init__(self) -> None:
        if self.step is not None and not (is_int(self.step) and self.step >= 0):
            raise AuditError(f"--step must be an integer >= 0, got {self.step!r}")
        if not (is_int(self.total_training_steps) and self.total_training_steps >= 1):
            raise AuditError(f"--total-training-steps must be an integer >= 1, got {self.total_training_steps!r}")
        if self.reward.timeout_s > MAX_TIMEOUT_S:
            raise AuditError(f"--timeout must be a number of seconds <= {MAX_TIMEOUT_S:.0f}, "
                             f"got {self.reward.timeout_s}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AuditSettings:
        """Settings from flat option values (the parsed command line); each goes to the config declaring it.

        Raises:
            AuditError: On an invalid value, naming its flag (``--anneal-steps (T) must be > 0, got 0``).
        """

        def pick(names) -> dict[str, Any]:
            return {name: options[name] for name in names if name in options}

        reward = {"query_policy": AUDIT_QUERY_POLICY, **pick(REWARD_OPTIONS)}
        try:
            return cls(
                trust_grpo=TrustGRPOConfig(**pick(f.name for f in declared_fields(TrustGRPOConfig)), _prefix=_PREFIX),
                reward=SophiaVLRewardConfig(**reward, _prefix=_PREFIX),
                **pick(f.name for f in declared_fields(cls) if f.name not in ("trust_grpo", "reward")),
            )
        except ConfigError as exc:  # "audit.anneal_steps (T) must ..." -> "--anneal-steps (T) must ..."
            raise AuditError(re.sub(rf"{_PREFIX}\.(\w+)", lambda m: flag(m.group(1)), str(exc))) from None

    @property
    def anneal_steps(self) -> int:
        """T of the schedule: ``trust_grpo.anneal_steps``, else the run's total steps (training's rule)."""
        return self.trust_grpo.anneal_total_steps(self.total_training_steps)

    def anneal(self, step: int) -> float:
        """The annealing factor at ``step``, with the schedule function training uses."""
        from sophiavl_verl.annealing import get_schedule

        return float(get_schedule(self.trust_grpo.schedule)(step, self.anneal_steps))

    def as_dict(self) -> dict[str, Any]:
        """One flat record for the report: every option by its field name, ``anneal_steps`` the T applied."""
        trust = {f.name: getattr(self.trust_grpo, f.name) for f in declared_fields(TrustGRPOConfig)}
        reward = {name: getattr(self.reward, name) for name in ("query_policy", "require_format")}
        return {**trust, "anneal_steps": self.anneal_steps, "total_training_steps": self.total_training_steps,
                "step": self.step, "norm_by_std": self.norm_by_std, **reward}


def check_run_options(*, max_concurrency: int | None, limit: int | None, text_limit: int | None) -> None:
    """The run's own numeric options (:func:`~sophiavl_verl.tools.audit.run_audit`), before any work.

    Raises:
        AuditError: Naming the flag.
    """
    checks = (  # (flag, value, least allowed, what it means)
        ("--max-concurrency", max_concurrency, 1, "an integer >= 1"),
        ("--limit", limit, 1, "an integer >= 1"),
        ("--text-limit", text_limit, 0, "an integer >= 0 (0 = whole texts)"),
    )
    for name, value, least, what in checks:
        if value is not None and not (is_int(value) and value >= least):
            raise AuditError(f"{name} must be {what}, got {value!r}")
