"""verl's real Hydra config, composed and validated as ``main_ppo`` does, and the overrides of a small run."""

from __future__ import annotations

from pathlib import Path

import verl

VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"

#: Overrides that make verl's own part of ``validate_config`` pass for a small GRPO run on CPU.
SMALL_RUN = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.rollout.n=8",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
)

#: A trust_grpo run whose thinking reward model is an external endpoint (nothing is contacted).
TRUST_GRPO_RUN = (
    *SMALL_RUN,
    "algorithm.adv_estimator=trust_grpo",
    "reward.reward_manager.name=sophiavl",
    "+reward.reward_kwargs.trm_base_url=http://127.0.0.1:9/v1",
    "+reward.reward_kwargs.trm_model=trm",
)

#: Hosting mode A: verl serves the TRM (``reward.reward_model.model_path``) behind its reward router; the
#: custom-function route keeps verl's reward loop off ``/classify``.
HOSTING_MODE_A = (
    "reward.reward_model.enable=True",
    "reward.reward_model.enable_resource_pool=True",
    "reward.reward_model.rollout.name=vllm",
    "reward.custom_reward_function.path=pkg://sophiavl_verl.outcome_reward_fn",
)


def compose_verl_config(overrides=(), config_dir: Path = VERL_CONFIG_DIR, config_name: str = "ppo_trainer"):
    """verl's real Hydra composition of ``config_name`` with command-line style overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def run_verl_validation(config) -> None:
    """verl's own ``validate_config`` (wrapped by the plugin), as ``main_ppo`` calls it."""
    import verl.utils.config as verl_config
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    verl_config.validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
