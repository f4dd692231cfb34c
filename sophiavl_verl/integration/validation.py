"""Checks of a whole verl config for the plugin, run inside verl's ``validate_config``.

``main_ppo`` calls ``validate_config`` in the driver before Ray starts, so a wrong option fails in
seconds, naming its key, instead of after the GPUs have loaded a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sophiavl_verl import outcome_reward_fn
from sophiavl_verl.config import ConfigError, SophiaVLRewardConfig, TrustGRPOConfig, is_trust_grpo
from sophiavl_verl.integration import adapter
from sophiavl_verl.integration.backend_choice import uses_cpu_rollout

__all__ = ["REWARD_MANAGER_NAME", "check_reward_model_path", "validate_plugin_config"]

#: The name of the plugin's reward manager in verl's reward-loop registry.
REWARD_MANAGER_NAME = "sophiavl"

# verl 0.9.1's own reward managers; none of them writes the thinking reward.
_VERL_REWARD_MANAGERS = ("naive", "dapo", "gdpo", "limited", "remote")


def validate_plugin_config(config: Any) -> None:
    """Validate the plugin's part of a composed verl config.

    Raises:
        ConfigError: Naming the offending key, when trust_grpo or the ``sophiavl`` reward manager is
            misconfigured or cannot run in this process.
    """
    if uses_cpu_rollout(config):
        from sophiavl_verl.integration import cpu_backend  # only then: a GPU process never imports it

        cpu_backend.require_registered(config)
    algorithm = config.get("algorithm") or {}
    reward = config.get("reward") or {}
    manager = (reward.get("reward_manager") or {}).get("name")
    trust_grpo = is_trust_grpo(algorithm)
    if not trust_grpo and manager != REWARD_MANAGER_NAME:
        return
    if trust_grpo:
        adapter.require_trainer_adapter()
    elif not adapter.is_installed():
        raise ConfigError(adapter.adapter_missing_reason())

    trust_cfg = TrustGRPOConfig.from_algorithm_config(algorithm) if trust_grpo else None
    if trust_grpo and manager in _VERL_REWARD_MANAGERS:
        raise ConfigError(
            f"algorithm.adv_estimator=trust_grpo needs the thinking reward, which verl's {manager!r} reward "
            f"manager does not write: set reward.reward_manager.name={REWARD_MANAGER_NAME}"
        )
    if manager != REWARD_MANAGER_NAME:
        return

    reward_cfg = SophiaVLRewardConfig.from_reward_config(reward)
    reward_model = reward.get("reward_model") or {}
    if reward_cfg.trm_base_url is None:
        if not reward_model.get("enable"):
            raise ConfigError(
                "the sophiavl reward manager needs a thinking reward model: set reward.reward_model.enable=True "
                "(served by verl in the cluster) or reward.reward_kwargs.trm_base_url (an external endpoint)"
            )
        if not reward_model.get("enable_resource_pool"):
            # Colocated, verl scores in one batch after rollout and passes no ground truth or extra_info.
            raise ConfigError(
                "reward.reward_model.enable_resource_pool=False: verl 0.9.1's colocated reward path gives reward "
                "managers no ground truth, so the sophiavl manager cannot score. Set "
                "reward.reward_model.enable_resource_pool=True (the TRM on its own GPUs) or use an external "
                "endpoint (reward.reward_kwargs.trm_base_url)"
            )
        check_reward_model_path(reward_model.get("model_path"))
        if not (reward.get("custom_reward_function") or {}).get("path"):
            # verl routes an enabled reward model without a custom function to /classify (discriminative).
            raise ConfigError(
                "reward.custom_reward_function.path is null while reward.reward_model.enable=True: verl would "
                "bypass the sophiavl reward manager and POST to /classify. Set "
                f"reward.custom_reward_function.path={outcome_reward_fn.VERL_PATH}"
            )
    if trust_cfg is not None and trust_cfg.uniform_groups == "trust" and reward_cfg.query_policy == "skip_uniform":
        # (official leaves unscored only the groups the reference code gives no thinking term.)
        raise ConfigError(
            "algorithm.trust_grpo.uniform_groups=trust gives uniform groups a thinking term, but "
            "reward.reward_kwargs.query_policy=skip_uniform does not score them: use query_policy=all "
            "(or official, the reference code's rules)"
        )


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check_reward_model_path(model_path: Any) -> None:
    """Hosting mode A: a TRM folder that exists here is a Hugging Face model, not a verl checkpoint.

    verl starts the reward model deep inside Ray; a wrong folder would surface there as a long traceback, after
    the cluster has started. A folder that exists on this node must hold a Hugging Face model (``config.json`` and
    weights); a verl checkpoint folder (``global_step_N``, or the folder of checkpoints) is refused with the path to
    give instead. A path that does not exist here (a Hub id, a remote path, a mount of the worker nodes only) is
    left to verl.

    Raises:
        ConfigError: Naming ``reward.reward_model.model_path`` and the folder.
    """
    key = "reward.reward_model.model_path"
    if not isinstance(model_path, str) or not model_path.strip():
        raise ConfigError(f"{key} is {model_path!r}: set it to the thinking reward model's folder (the huggingface "
                          "folder of its SFT checkpoint)", key=key)
    path = Path(os.path.expanduser(model_path))
    if not path.exists():
        return  # a Hugging Face id, a remote path, or a folder mounted on the nodes only: verl's workers load it
    if not path.is_dir():
        raise ConfigError(f"{key}: {model_path} is a file, not a model folder", key=key)
    if (path / "config.json").is_file():
        if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
            raise ConfigError(f"{key}: {model_path} has a config.json but no weights (*.safetensors or *.bin)", key=key)
        return
    if (path / "huggingface" / "config.json").is_file():
        raise ConfigError(f"{key}: {model_path} is a verl checkpoint; its model is {path / 'huggingface'}", key=key)
    steps = sorted(path.glob("global_step_*"), key=lambda p: (len(p.name), p.name))
    if steps:
        raise ConfigError(f"{key}: {model_path} holds verl checkpoints; give the huggingface folder of one, e.g. "
                          f"{steps[-1] / 'huggingface'}", key=key)
    if next(path.glob("model_world_size_*"), None) is not None or path.name.startswith("global_step_"):
        raise ConfigError(f"{key}: {model_path} is a verl checkpoint without its huggingface folder: save the SFT "
                          "with checkpoint.save_contents including hf_model (trm_sft_3b.yaml does)", key=key)
    raise ConfigError(f"{key}: {model_path} is not a Hugging Face model folder (no config.json)", key=key)
