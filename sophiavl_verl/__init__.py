"""sophiavl-verl: SophiaVL-R1 (thinking reward + Trust-GRPO + annealing, arXiv 2505.17018) as a verl plugin.

The method, with no verl import (torch, numpy, aiohttp):

    trust_grpo.py        Eq. 1-5 (μ_c, μ_w, γ, the trust-weighted reward) and Eq. 6's GRPO normalisation
    annealing.py         the annealing schedules of the thinking term (e^(-step/T) and others)
    rewards.py           the outcome reward R^o per problem type, and the format check
    outcome_reward_fn.py R^o as verl's custom reward function (``pkg://sophiavl_verl.outcome_reward_fn``)
    query_policy.py      which responses cost a thinking-reward request
    thinking_reward/     the thinking reward model R^t: its prompt (Table 4) and its HTTP client
    config.py            every option, declared once (type, default, allowed values, meaning)
    keys.py              the reward extra-info keys the reward manager writes and the estimator reads
    errors.py            the one exception hierarchy

    integration/         everything that imports verl: entry point, estimator, adapter, reward manager
    tools/               command lines, data preparation, the audit, the CPU run

``import sophiavl_verl`` imports nothing else; ``import verl`` loads
:mod:`sophiavl_verl.integration.plugin` through the ``verl.plugins`` entry point.
"""

from __future__ import annotations

__version__ = "0.1.0"
