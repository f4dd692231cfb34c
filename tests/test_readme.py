"""The README's minimal launch on a plain verl config is a valid launch: verl's real Hydra composition and its
``validate_config`` (with the plugin's checks) accept it as written, and it selects what the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from support.verl import SMALL_RUN, compose_verl_config, run_verl_validation

README = Path(__file__).resolve().parents[1] / "README.md"


def _minimal_launch_overrides() -> list[str]:
    """The Hydra overrides of the README's launch "on any verl GRPO config" (its second bash block)."""
    section = README.read_text(encoding="utf-8").split("## A minimal launch", 1)[1].split("\n## ", 1)[0]
    command = re.findall(r"```bash\n(.*?)```", section, re.S)[1]
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    assert words[:3] == ["python", "-m", "verl.trainer.main_ppo"] and words[3] == "...", words[:4]
    return words[4:]


def test_the_readmes_minimal_launch_composes_and_validates():
    overrides = _minimal_launch_overrides()
    config = compose_verl_config([*SMALL_RUN, *overrides])
    run_verl_validation(config)
    assert config.algorithm.adv_estimator == "trust_grpo" and config.algorithm.trust_grpo.alpha == 0.3
    assert config.reward.reward_manager.name == "sophiavl"
    assert config.reward.custom_reward_function.path == "pkg://sophiavl_verl.outcome_reward_fn"
    assert config.reward.reward_kwargs.trm_base_url.startswith("http")
