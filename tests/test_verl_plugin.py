"""The plugin inside stock verl: registration in every process, the delivery path, config validation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.trainer.ppo import ray_trainer

from sophiavl_verl.config import ConfigError
from sophiavl_verl.integration import trainer_step
from sophiavl_verl.integration.advantage import METRICS_META_KEY
from sophiavl_verl.integration.trainer_legacy import _wrap_fit as _wrap_legacy_fit
from sophiavl_verl.integration.trainer_v1 import fetch_reward_extra_info
from sophiavl_verl.keys import OUTCOME_KEY, THINKING_KEY, TRM_STATUS_KEY

from support.paper_reference import reference_advantage, reference_rewards
from support.verl import SMALL_RUN, TRUST_GRPO_RUN, compose_verl_config, run_verl_validation

REGISTRATION_PROBE = """
import verl
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
import verl.utils.config
print(ADV_ESTIMATOR_REGISTRY["trust_grpo"].__module__, REWARD_MANAGER["sophiavl"].__module__,
      hasattr(verl.utils.config.validate_config, "__sophiavl_wrapped__"))
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )


def test_bare_import_verl_registers_everything_in_a_fresh_process():
    result = _python(REGISTRATION_PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sophiavl_verl.integration.estimator", "sophiavl_verl.integration.reward_manager",
                                     "True"]


def test_verl_plugin_filter_can_exclude_us():
    result = _python(REGISTRATION_PROBE, VERL_USE_EXTERNAL_PLUGINS="none")
    assert result.returncode != 0 and "KeyError: 'trust_grpo'" in result.stderr


def test_a_ray_worker_registers_the_plugin_by_importing_verl(ray_with_transfer_queue):
    ray = ray_with_transfer_queue

    @ray.remote(num_cpus=0)
    def probe() -> tuple[int, bool, bool]:
        import verl  # noqa: F401
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        return os.getpid(), "trust_grpo" in ADV_ESTIMATOR_REGISTRY, "sophiavl" in REWARD_MANAGER

    pid, has_estimator, has_manager = ray.get(probe.remote())
    assert pid != os.getpid() and has_estimator and has_manager


def test_a_gpu_process_never_imports_the_cpu_backend():
    result = _python(
        """
        import sys
        import verl
        from omegaconf import OmegaConf
        from sophiavl_verl.integration.validation import validate_plugin_config
        validate_plugin_config(OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "vllm"}}}))
        print(sorted(m for m in sys.modules if m.startswith("sophiavl_verl.integration.cpu_backend")))
        """,
        VERL_PLATFORM="",
    )
    assert result.returncode == 0 and result.stdout.split() == ["[]"], result.stdout + result.stderr


def test_a_broken_install_is_loud_not_silent():
    # Make one of our modules unimportable: verl itself would only log it at DEBUG level.
    result = _python(
        """
        import sys
        sys.modules["sophiavl_verl.thinking_reward"] = None
        import verl
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        try:
            get_adv_estimator_fn("trust_grpo")()
        except RuntimeError as e:
            print("ESTIMATOR:", str(e).splitlines()[0])
        import verl.utils.config as c
        from omegaconf import OmegaConf
        try:
            c.validate_config(OmegaConf.create({"algorithm": {"adv_estimator": "trust_grpo"}}), False, False)
        except RuntimeError as e:
            print("VALIDATE:", "ImportError" in str(e) or "ModuleNotFoundError" in str(e))
        """
    )
    assert "sophiavl_verl plugin failed to load" in result.stderr  # logged at ERROR, visible by default
    assert "ESTIMATOR: the sophiavl_verl plugin failed to load, so trust_grpo is unavailable:" in result.stdout
    assert "VALIDATE: True" in result.stdout


GUARD_PROBE = """
import sys
{setup}
from omegaconf import OmegaConf
from sophiavl_verl.integration import adapter as verl_adapter
from sophiavl_verl.integration.validation import validate_plugin_config
print("INSTALLED:", verl_adapter.install(config_check=validate_plugin_config))
try:
    validate_plugin_config(OmegaConf.create({{"algorithm": {{"adv_estimator": "trust_grpo"}}}}))
    print("VALID")
except Exception as e:
    print("ERROR:", type(e).__name__, e)
from verl.trainer.ppo import ray_trainer
from verl.trainer.ppo.v1 import trainer_base
print("PATCHED:", hasattr(ray_trainer.compute_advantage, "__sophiavl_wrapped__"),
      hasattr(trainer_base.PPOTrainer.__dict__.get("_compute_advantage"), "__sophiavl_wrapped__"))
"""


def test_another_verl_version_with_the_same_interfaces_is_accepted():
    """setup.py allows verl<0.10: a 0.9.2 whose touched interfaces match runs, with a warning."""
    result = _python(GUARD_PROBE.format(setup="import verl; verl.__version__ = '0.9.2'"),
                     VERL_USE_EXTERNAL_PLUGINS="none")
    assert "INSTALLED: True" in result.stdout and "VALID" in result.stdout, result.stdout + result.stderr
    assert "PATCHED: True True" in result.stdout
    assert "verl 0.9.2 is untested" in result.stderr


@pytest.mark.parametrize(("setup", "message"), [
    (  # fault injection: a method the v1 path wraps is gone
        "import verl; verl.__version__ = '0.9.2'\n"
        "from verl.trainer.ppo.v1 import trainer_base; del trainer_base.PPOTrainer._compute_advantage",
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage is missing",
    ),
    (  # fault injection: a function the adapter calls by keyword lost a parameter
        "from verl.trainer.ppo import ray_trainer\n"
        "def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, config=None): pass\n"
        "ray_trainer.compute_advantage = compute_advantage",
        "lacks norm_adv_by_std_in_grpo",
    ),
])
def test_a_verl_whose_touched_interfaces_changed_is_refused_loudly(setup, message):
    result = _python(GUARD_PROBE.format(setup=setup), VERL_USE_EXTERNAL_PLUGINS="none")
    assert "ERROR: ConfigError sophiavl_verl's verl adapter does not fit verl" in result.stdout, result.stdout
    assert message in result.stdout and message in result.stderr  # refused at validation, logged at ERROR
    patched = result.stdout.split("PATCHED: ")[1].split()
    assert "False" in patched  # the module that does not fit is left as verl made it


def test_trust_grpo_recipe_options_pass_verls_validation():
    run_verl_validation(compose_verl_config([*TRUST_GRPO_RUN, "+algorithm.trust_grpo.alpha=0.3"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+algorithm.trust_grpo.alpha=-1"],
         r"algorithm.trust_grpo.alpha must be a finite number in \[0, 1000\], got -1"),
        (["+algorithm.trust_grpo.schedule=bogus"], "algorithm.trust_grpo.schedule: unknown annealing schedule 'bogus'"),
        (["+algorithm.trust_grpo.anneal_steps=0"], r"algorithm.trust_grpo.anneal_steps \(T\) must be > 0, got 0"),
        (["+algorithm.trust_grpo.alpah=0.3"], r"unknown key\(s\) algorithm.trust_grpo.alpah"),
        (["+algorithm.trust_grpo.uniform_groups=maybe"], "algorithm.trust_grpo.uniform_groups must be one of"),
        (["reward.reward_manager.name=naive"], "set reward.reward_manager.name=sophiavl"),
        (["+reward.reward_kwargs.query_policy=some"], "reward.reward_kwargs.query_policy must be one of"),
        (["+reward.reward_kwargs.timeout=3"], r"unknown key\(s\) reward.reward_kwargs.timeout"),
        (["+reward.reward_kwargs.deadline_s=0"], "reward.reward_kwargs.deadline_s must be a finite number > 0, got 0"),
        (["+reward.reward_kwargs.deadline_s=inf"], "reward.reward_kwargs.deadline_s must be a finite number > 0"),
        (["+reward.reward_kwargs.breaker_failures=-1"],
         "reward.reward_kwargs.breaker_failures must be an integer >= 0"),
        (["+reward.reward_kwargs.breaker_cooldown_s=-2"], "reward.reward_kwargs.breaker_cooldown_s must be a finite"),
        (["+reward.reward_kwargs.clip_scores=sometimes"], "reward.reward_kwargs.clip_scores must be true or false"),
        (["+reward.reward_kwargs.max_image_pixels=0"], "reward.reward_kwargs.max_image_pixels must be an integer >= 1"),
        (["+algorithm.trust_grpo.uniform_groups=trust"], "use query_policy=all"),
        # Wrong types (issue 18): each was accepted and then misread, or raised in a Ray worker.
        (["+reward.reward_kwargs.require_format='false'"], "reward.reward_kwargs.require_format must be true or false"),
        (["+algorithm.trust_grpo.epsilon=true"], "algorithm.trust_grpo.epsilon must be a number, got True"),
        (["+algorithm.trust_grpo.correct_threshold=true"], "algorithm.trust_grpo.correct_threshold must be a number"),
        (["reward.reward_kwargs.trm_model=123"], "reward.reward_kwargs.trm_model must be a string or null, got 123"),
        (["+reward.reward_kwargs.trm_api_key_env=null"], "reward.reward_kwargs.trm_api_key_env must be a string"),
        (["+algorithm.trust_grpo.alpha=1e20"], r"algorithm.trust_grpo.alpha must be a finite number in \[0, 1000\]"),
        # URLs that would send every request elsewhere, and credentials (never echoed).
        (["reward.reward_kwargs.trm_base_url='http://127.0.0.1:9/v1?api-version=x'"], "must not have a query"),
        (["reward.reward_kwargs.trm_base_url='http:///v1'"], "trm_base_url has no valid host"),
        (["reward.reward_kwargs.trm_base_url='http://u:pw@127.0.0.1:9/v1'"],
         r"trm_base_url must not carry credentials \(user:password@\); put the API key in the environment"),
    ],
)
def test_config_errors_name_the_key_before_any_worker_starts(overrides, message):
    config = compose_verl_config([*TRUST_GRPO_RUN, *overrides])
    with pytest.raises(ConfigError, match=message):
        run_verl_validation(config)


def _model_folder(path: Path) -> Path:
    """The files a Hugging Face model folder has (validation reads no weights)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_in_cluster_trm_needs_its_own_pool_and_a_custom_function_to_avoid_classify(tmp_path):
    in_cluster = [
        *SMALL_RUN, "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl",
        "reward.reward_model.enable=True", f"reward.reward_model.model_path={_model_folder(tmp_path / 'trm')}",
        "reward.reward_model.rollout.name=vllm",
    ]
    with pytest.raises(ConfigError, match="enable_resource_pool=False: verl 0.9.1's colocated reward path"):
        run_verl_validation(compose_verl_config(in_cluster))
    in_cluster.append("reward.reward_model.enable_resource_pool=True")
    with pytest.raises(ConfigError, match="POST to /classify"):
        run_verl_validation(compose_verl_config(in_cluster))
    run_verl_validation(compose_verl_config(
        [*in_cluster, "reward.custom_reward_function.path=pkg://sophiavl_verl.outcome_reward_fn"]
    ))


def _verl_checkpoints(root: Path, with_huggingface: bool) -> Path:
    """What verl's SFT trainer writes under trainer.default_local_dir (model shards; huggingface/ with hf_model)."""
    step = root / "global_step_8"
    step.mkdir(parents=True)
    (step / "model_world_size_1_rank_0.pt").write_bytes(b"")
    if with_huggingface:
        _model_folder(step / "huggingface")
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: _verl_checkpoints(tmp / "ckpt", True), "{tmp}/ckpt holds verl checkpoints; give the huggingface "
                                                            "folder of one, e.g. {tmp}/ckpt/global_step_8/huggingface"),
        (lambda tmp: _verl_checkpoints(tmp / "ckpt", True) / "global_step_8",
         "{tmp}/ckpt/global_step_8 is a verl checkpoint; its model is {tmp}/ckpt/global_step_8/huggingface"),
        (lambda tmp: _verl_checkpoints(tmp / "ckpt", False) / "global_step_8",
         "{tmp}/ckpt/global_step_8 is a verl checkpoint without its huggingface folder"),
        (lambda tmp: (_model_folder(tmp / "m") / "model.safetensors").unlink() or tmp / "m",
         "{tmp}/m has a config.json but no weights"),
    ],
)
def test_a_mode_a_trm_that_is_not_a_model_folder_stops_validation_with_one_line(tmp_path, make, message):
    path = make(tmp_path)
    config = compose_verl_config([
        *SMALL_RUN, "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl",
        "reward.reward_model.enable=True", "reward.reward_model.enable_resource_pool=True",
        f"reward.reward_model.model_path={path}", "reward.reward_model.rollout.name=vllm",
        "reward.custom_reward_function.path=pkg://sophiavl_verl.outcome_reward_fn",
    ])
    with pytest.raises(ConfigError) as error:
        run_verl_validation(config)
    text = str(error.value)
    assert text.startswith("reward.reward_model.model_path: ") and "\n" not in text
    assert message.format(tmp=tmp_path) in text
    assert error.value.key == "reward.reward_model.model_path"


GROUPS = {
    # uid: (outcomes, thinking rewards) — a trusted group, a distrusted one, an all-wrong one.
    "p0": ([1.0, 0.0, 1.0, 0.0], [0.9, 0.3, 0.7, math.nan]),
    "p1": ([1.0, 0.0, 0.0, 0.0], [0.2, 0.8, 0.7, 0.9]),
    "p2": ([0.0, 0.0, 0.0, 0.0], [0.5, 0.6, 0.1, 0.3]),
}


def _expected_advantages(alpha: float, anneal: float) -> dict[str, float]:
    index = [uid for uid, (o, _) in GROUPS.items() for _ in o]
    outcome = [x for o, _ in GROUPS.values() for x in o]
    thinking = [x for _, t in GROUPS.values() for x in t]
    rewards, _ = reference_rewards(outcome, thinking, index, alpha=alpha, anneal=anneal, threshold=0.5,
                                   uniform_groups="skip")
    advantages = reference_advantage(rewards, index)
    keys = [f"{uid}_{s}_0" for uid, (o, _) in GROUPS.items() for s in range(len(o))]
    return dict(zip(keys, advantages, strict=True))


def test_v1_trainer_delivers_thinking_rewards_and_step_through_transfer_queue(ray_with_transfer_queue):
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys, rows = [], []
    for uid, (outcomes, thinking) in GROUPS.items():
        for session, (r_o, r_t) in enumerate(zip(outcomes, thinking, strict=True)):
            length = 3 + session  # ragged responses, as the agent loop stores them
            rm_scores = torch.zeros(length)
            rm_scores[-1] = r_o
            keys.append(f"{uid}_{session}_0")
            rows.append({
                "uid": uid,
                "response_mask": torch.ones(length, dtype=torch.int64),
                "rm_scores": rm_scores,
                "extra_fields": {"reward_extra_info": {OUTCOME_KEY: r_o, THINKING_KEY: r_t}},
            })
    # verl's agent loop writes samples with this very call (AgentLoopWorkerTQ._agent_loop_postprocess).
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id="train")

    config = compose_verl_config([*TRUST_GRPO_RUN, "actor_rollout_ref.rollout.n=4"])
    # A trainer resumed from global_step_6 runs step 7 next; T defaults to its total steps.
    trainer = SimpleNamespace(config=config, global_steps=7, total_training_steps=20)
    metrics: dict = {}
    PPOTrainer._compute_advantage(trainer, KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train"), metrics)

    stored = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])["advantages"]
    anneal = math.exp(-7 / 20)
    expected = _expected_advantages(alpha=0.3, anneal=anneal)
    for key, advantages in zip(keys, stored.unbind(), strict=True):
        assert torch.allclose(advantages, torch.full_like(advantages, expected[key]), atol=1e-5), key
    assert metrics["trust_grpo/anneal"] == pytest.approx(anneal)
    assert metrics["trust_grpo/untrusted_group_frac"] == pytest.approx(0.5)
    assert metrics["trust_grpo/thinking_missing_frac"] == pytest.approx(1 / 12)
    tq.kv_clear(keys=keys, partition_id="train")


# uid: per session (outcome, thinking reward, number of outputs); sessions with several outputs are where
# counting outputs instead of sessions changes μ_c, μ_w and the group mean and std.
SESSIONS = {
    "m0": [(1.0, 0.9, 3), (0.0, 0.2, 1), (1.0, 0.4, 1), (0.0, 0.8, 2)],
    "m1": [(1.0, 0.1, 1), (0.0, 0.9, 3), (0.0, 0.7, 1), (1.0, 0.6, 2)],
    "m2": [(0.0, 0.5, 2), (0.0, 0.3, 1), (0.0, 0.6, 1), (0.0, 0.2, 1)],
}


def _multi_output_rows() -> tuple[list[str], list[dict]]:
    """TransferQueue rows as verl's v1 agent loop writes a multi-output session (``{uid}_{session}_{index}``):
    every output carries the final output's reward score and reward extra info."""
    keys, rows = [], []
    for uid, sessions in SESSIONS.items():
        for session, (r_o, r_t, outputs) in enumerate(sessions):
            for index in range(outputs):
                length = 2 + index + session
                rm_scores = torch.zeros(length)
                rm_scores[-1] = r_o
                keys.append(f"{uid}_{session}_{index}")
                rows.append({
                    "uid": uid, "response_mask": torch.ones(length, dtype=torch.int64), "rm_scores": rm_scores,
                    "extra_fields": {"reward_extra_info": {
                        OUTCOME_KEY: r_o, THINKING_KEY: r_t, TRM_STATUS_KEY: "scored",
                    }},
                })
    return keys, rows


def _per_session_expectation(alpha: float, anneal: float) -> tuple[dict[str, float], list[float]]:
    """Eq. 1-6 over sessions (one entry each), by key of every output; and the same over outputs."""
    by_key, per_output = {}, ([], [], [])
    sessions = [(uid, s, r_o, r_t, n) for uid, group in SESSIONS.items() for s, (r_o, r_t, n) in enumerate(group)]
    for weighted in (False, True):
        rows = [(f"{uid}_{s}_{i}", uid, r_o, r_t)
                for uid, s, r_o, r_t, n in sessions for i in range(n if weighted else 1)]
        keys, index, outcome, thinking = (list(column) for column in zip(*rows, strict=True))
        rewards, _ = reference_rewards(outcome, thinking, index, alpha=alpha, anneal=anneal, threshold=0.5,
                                       uniform_groups="skip")
        advantages = reference_advantage(rewards, index)
        if weighted:
            per_output = advantages
        else:
            session_advantage = dict(zip(keys, advantages, strict=True))
            by_key = {f"{uid}_{s}_{i}": session_advantage[f"{uid}_{s}_0"]
                      for uid, s, _, _, n in sessions for i in range(n)}
    return by_key, per_output


def test_v1_multi_output_sessions_count_once_as_in_verls_grpo_and_padding_rows_count_in_no_metric(
    ray_with_transfer_queue,
):
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys, rows = _multi_output_rows()
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id="train")
    batch = KVBatchMeta(keys=keys, tags=[{"seq_len": 8}] * len(keys), partition_id="train")
    batch = upsample_batch_to_divisible_size(batch, batch_multiple=8, eos_token_id=0)  # verl's padding rows
    assert len(batch) == 24 and sum(k.startswith("pad") for k in batch.keys) == 24 - len(keys)

    def advantages(alpha: float) -> tuple[dict[str, float], dict]:
        config = compose_verl_config([*TRUST_GRPO_RUN, f"+algorithm.trust_grpo.alpha={alpha}"])
        trainer = SimpleNamespace(config=config, global_steps=3, total_training_steps=10)
        metrics: dict = {}
        PPOTrainer._compute_advantage(trainer, batch, metrics)
        stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages"])["advantages"]
        return {key: float(a[-1]) for key, a in zip(batch.keys, stored.unbind(), strict=True)
                if not key.startswith("pad")}, metrics

    # alpha = 0 is verl's GRPO, multi-output treatment included: compare with verl's own function.
    got, _ = advantages(0.0)
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["uid", "response_mask", "rm_scores"])
    grpo = DataProto(batch=data.to_padded_tensor())
    grpo.non_tensor_batch["uid"] = np.array(grpo.batch.pop("uid").tolist(), dtype=object)
    grpo.batch["token_level_rewards"] = grpo.batch["rm_scores"]
    grpo = compute_advantage_for_multi_trajectories(grpo, batch_keys=keys, adv_estimator="grpo")
    last = grpo.batch["response_mask"].sum(-1) - 1
    expected = grpo.batch["advantages"][torch.arange(len(keys)), last].tolist()
    np.testing.assert_allclose([got[k] for k in keys], expected, atol=1e-5)

    # alpha = 0.3: Eq. 1-6 over sessions, not outputs (the two differ on this batch).
    got, metrics = advantages(0.3)
    per_session, per_output = _per_session_expectation(alpha=0.3, anneal=math.exp(-3 / 10))
    np.testing.assert_allclose([got[k] for k in keys], [per_session[k] for k in keys], atol=1e-5)
    assert not np.allclose([per_session[k] for k in keys], per_output, atol=1e-3)
    # Metrics: 12 sessions in 3 groups, 2 mixed; verl's padding rows (a copy of the first sample) add nothing.
    assert metrics["trm/requests"] == 12
    assert metrics["trust_grpo/mixed_group_frac"] == pytest.approx(2 / 3)
    assert metrics["trust_grpo/thinking_missing_frac"] == 0.0
    tq.kv_clear(keys=batch.keys, partition_id="train")


def test_reward_extra_info_is_read_from_any_list_like_transfer_queue_field(monkeypatch):
    """Storage backends differ in the container of a non-tensor field; a plain list must do too."""
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta

    fields = [{"reward_extra_info": {THINKING_KEY: 0.5}}, {"reward_extra_info": {THINKING_KEY: math.nan}}]
    monkeypatch.setattr(tq, "kv_batch_get", lambda keys, partition_id, select_fields: {"extra_fields": list(fields)})
    info = fetch_reward_extra_info(KVBatchMeta(keys=["a_0_0", "a_1_0"], tags=[{}, {}], partition_id="train"))
    assert info[THINKING_KEY][0] == 0.5 and math.isnan(info[THINKING_KEY][1])


def test_v1_compute_advantage_for_multi_trajectories_uses_trust_grpo():
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    keys = [f"{uid}_{s}_0" for uid, (o, _) in GROUPS.items() for s in range(len(o))]
    outcome = [x for o, _ in GROUPS.values() for x in o]
    thinking = [x for _, t in GROUPS.values() for x in t]
    token_level = torch.zeros(len(keys), 4)
    token_level[:, -1] = torch.tensor(outcome)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": token_level, "response_mask": torch.ones(len(keys), 4)},
        non_tensors={"uid": np.array([k.split("_")[0] for k in keys], dtype=object)},
    )
    extra = {OUTCOME_KEY: np.array(outcome), THINKING_KEY: np.array(thinking)}
    config = compose_verl_config([*TRUST_GRPO_RUN, "+algorithm.trust_grpo.anneal_steps=100"]).algorithm
    with trainer_step(global_step=10, reward_extra_info=extra):
        out = compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator="trust_grpo", config=config)
    expected = _expected_advantages(alpha=0.3, anneal=math.exp(-10 / 100))
    torch.testing.assert_close(out.batch["advantages"][:, -1], torch.tensor([expected[k] for k in keys]),
                               atol=1e-5, rtol=1e-5)


def test_legacy_trainer_path_values_step_and_metrics():
    keys = [f"{uid}_{s}_0" for uid, (o, _) in GROUPS.items() for s in range(len(o))]
    outcome = [x for o, _ in GROUPS.values() for x in o]
    token_level = torch.zeros(len(keys), 4)
    token_level[:, -1] = torch.tensor(outcome)
    # The legacy trainer merges reward_extra_info into non_tensor_batch before compute_advantage.
    bs = len(keys)
    tensors = {
        "token_level_scores": token_level, "token_level_rewards": token_level.clone(),
        "response_mask": torch.ones(bs, 4), "prompts": torch.ones(bs, 2, dtype=torch.long),
        "responses": torch.ones(bs, 4, dtype=torch.long), "attention_mask": torch.ones(bs, 6, dtype=torch.long),
    }
    data = DataProto.from_dict(
        tensors=tensors,
        non_tensors={"uid": np.array([k.split("_")[0] for k in keys], dtype=object),
                     OUTCOME_KEY: np.array(outcome),
                     THINKING_KEY: np.array([x for _, t in GROUPS.values() for x in t])},
    )
    config = compose_verl_config(TRUST_GRPO_RUN)
    trainer = SimpleNamespace(config=config, global_steps=4, total_training_steps=8)

    def fit(self):  # stands in for RayPPOTrainer.fit's body: the calls it makes around the advantage
        batch = ray_trainer.compute_advantage(data, adv_estimator="trust_grpo", config=self.config.algorithm)
        return ray_trainer.compute_data_metrics(batch=batch, use_critic=False)

    assert ray_trainer.RayPPOTrainer.fit.__sophiavl_wrapped__.__qualname__ == "RayPPOTrainer.fit"
    metrics = _wrap_legacy_fit(fit)(trainer)
    expected = _expected_advantages(alpha=0.3, anneal=math.exp(-4 / 8))
    torch.testing.assert_close(data.batch["advantages"][:, -1], torch.tensor([expected[k] for k in keys]),
                               atol=1e-5, rtol=1e-5)
    assert metrics["trust_grpo/anneal"] == pytest.approx(math.exp(-0.5))
    assert "critic/score/mean" in metrics and METRICS_META_KEY not in data.meta_info
