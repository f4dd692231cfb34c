"""Target of the ``verl.plugins`` entry point: ``import verl`` runs this in every process.

It registers the ``trust_grpo`` advantage estimator and the ``sophiavl`` reward manager, installs
the verl adapter, and, with ``VERL_PLATFORM=cpu`` only, imports and installs the CPU backend. verl swallows a plugin's
import error at DEBUG level; so that a broken install is still loud, a failure here logs an error and
registers a stand-in ``trust_grpo`` that raises with the original error, and makes a trust_grpo config
fail validation.
"""

from __future__ import annotations

import logging
import traceback

logger = logging.getLogger(__name__)


def _register_failure_stand_ins(error: str) -> None:
    """Make any use of trust_grpo raise ``error`` (the reason the plugin failed to load).

    Both writes are declared in :data:`.hooks.TOUCH_POINTS` (path ``failure stand-in``); they are made directly,
    not through :mod:`.hooks`, so that they depend on nothing of the plugin that may be what failed.
    """
    import verl.utils.config as verl_config
    from verl.trainer.ppo import core_algos

    message = f"the sophiavl_verl plugin failed to load, so trust_grpo is unavailable:\n{error}"

    def trust_grpo_unavailable(*args, **kwargs):
        raise RuntimeError(message)

    core_algos.ADV_ESTIMATOR_REGISTRY["trust_grpo"] = trust_grpo_unavailable
    original_validate = verl_config.validate_config

    def validate_config(config, use_reference_policy, use_critic):
        if (config.get("algorithm") or {}).get("adv_estimator") == "trust_grpo":
            raise RuntimeError(message)
        return original_validate(config=config, use_reference_policy=use_reference_policy, use_critic=use_critic)

    verl_config.validate_config = validate_config


try:
    # Importing registers: the estimator with register_adv_est, the manager with the reward loop's register.
    from sophiavl_verl.integration import adapter, estimator, reward_manager  # noqa: F401
    from sophiavl_verl.integration.backend_choice import is_cpu_platform
    from sophiavl_verl.integration.validation import validate_plugin_config

    adapter.install(config_check=validate_plugin_config)
    if is_cpu_platform():
        from sophiavl_verl.integration import cpu_backend

        cpu_backend.install()
except Exception:  # noqa: BLE001 - reported loudly, then re-raised for verl's own (DEBUG) log
    _error = traceback.format_exc()
    logger.error("sophiavl_verl plugin failed to load:\n%s", _error)
    _register_failure_stand_ins(_error)
    raise
