"""The CPU backend: inert unless VERL_PLATFORM=cpu; registered through verl's registries when it is; its rollout
server generates as Hugging Face does and takes the trainer's weights."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from support.net import free_port

INSPECT = r"""
import json, os, sys
import torch.distributed
import verl
from verl.plugin.platform import PlatformRegistry
from verl.workers.rollout import base
from verl.workers.rollout.replica import RolloutReplicaRegistry
print(json.dumps({
    "platforms": list(PlatformRegistry.registered_names()),
    "rollouts": sorted(name for name, _ in base._ROLLOUT_REGISTRY),
    "replicas": sorted(RolloutReplicaRegistry._registry),
    "init_process_group_patched": hasattr(torch.distributed.init_process_group, "__sophiavl_wrapped__"),
    "engine_device": os.environ.get("VERL_ENGINE_DEVICE"),
    "modules": sorted(m for m in sys.modules if m.startswith(("sophiavl_verl.integration.cpu_backend.", "qwen_vl_utils",
                                                              "torchvision"))),
}))
"""


def _inspect(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE")}
    result = subprocess.run([sys.executable, "-c", INSPECT], capture_output=True, text=True, env={**clean, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_inert_without_verl_platform_cpu():
    """A GPU user's process: no platform, no rollout, no patch, no env var, nothing extra imported."""
    seen = _inspect()
    assert "cpu" not in seen["platforms"] and "nvidia" in seen["platforms"]
    assert "transformers" not in seen["rollouts"] and "transformers" not in seen["replicas"]
    assert seen["init_process_group_patched"] is False
    assert seen["engine_device"] is None
    assert seen["modules"] == []  # the backend's modules are imported on the cpu platform only


def test_registered_through_verls_registries_on_cpu():
    seen = _inspect(VERL_PLATFORM="cpu")
    assert "cpu" in seen["platforms"]
    assert "transformers" in seen["rollouts"] and "transformers" in seen["replicas"]
    assert seen["init_process_group_patched"] is True
    assert seen["engine_device"] == "cuda"
    assert "qwen_vl_utils" in seen["modules"] and "torchvision" not in seen["modules"]


def test_verl_device_calls_and_process_group_on_cpu(tmp_path):
    """verl's own device helpers and its process-group initialisation (which joins cpu:gloo twice) work."""
    code = r"""
import os, torch, verl
from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name, get_torch_device
from verl.utils.distributed import initialize_global_process_group_ray
from verl.utils.flops_counter import get_device_flops
initialize_global_process_group_ray()
t = torch.ones(3); torch.distributed.all_reduce(t)
print(get_device_name(), get_nccl_backend(), get_resource_name(), get_torch_device().current_device(),
      get_torch_device().memory_allocated(), torch.distributed.get_backend(), t.tolist(), get_device_flops())
"""
    env = {**os.environ, "VERL_PLATFORM": "cpu", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [  # 0.448: verl's own "CPU" entry
        "cpu", "gloo", "GPU", "cpu", "0", "cpu:gloo", "[1.0,", "1.0,", "1.0]", "0.448"], result.stdout


def test_cpu_rollout_without_the_cpu_platform_fails_validation_in_the_driver():
    from support.verl import TRUST_GRPO_RUN, compose_verl_config, run_verl_validation

    config = compose_verl_config([*TRUST_GRPO_RUN, "actor_rollout_ref.rollout.name=transformers"])
    with pytest.raises(ValueError, match="rollout.name=transformers .* set VERL_PLATFORM=cpu"):
        run_verl_validation(config)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("policy"), seed=3))


def _server(model_path: str):
    from sophiavl_verl.integration.cpu_backend.rollout import TransformersServer

    return TransformersServer(model_path, prompt_length=64, response_length=12)


def test_server_greedy_tokens_and_log_probs_match_a_forward_pass(tiny_model):
    """Greedy tokens are each the argmax of the model's next-token logits, and log-probs are their log-softmax,
    computed here by plain forward passes (no generate)."""
    from transformers import AutoModelForImageTextToText

    server = _server(tiny_model)
    prompt = [5, 17, 42, 99, 7]
    out = asyncio.run(server.generate(prompt, {"temperature": 0, "logprobs": True}, request_id="r"))
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids, expected_tokens, expected_logprobs = list(prompt), [], []
    with torch.no_grad():
        for _ in range(len(out.token_ids)):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            token = int(logits.argmax())
            expected_tokens.append(token)
            expected_logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
    assert out.token_ids == expected_tokens
    assert out.log_probs == pytest.approx(expected_logprobs, abs=1e-4)
    eos_at = [i for i, token in enumerate(out.token_ids) if token in server.eos_token_ids]
    assert eos_at in ([], [len(out.token_ids) - 1])  # it stops at the first end-of-sequence token ...
    assert eos_at or len(out.token_ids) == server.response_length  # ... or after response_length tokens
    assert (out.stop_reason == "completed") == bool(eos_at)


def test_server_generates_concurrent_requests_in_one_batch_each_as_if_alone(tiny_model):
    """Requests sent together are generated in one left-padded ``generate`` call per sampling setting, and each
    gets the tokens and log-probs it gets when sent alone (prompts of different lengths, an image in each)."""
    from PIL import Image

    server = _server(tiny_model)
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    chats = ["Sum of bars?", "Which bar is the tallest one in this chart?", "Describe the picture in one sentence."]
    prompts = []
    for text in chats:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        rendered = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(server.processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0].tolist())
    assert len({len(p) for p in prompts}) == 3
    greedy = {"temperature": 0, "logprobs": True}

    async def send(prompt, params):
        return await server.generate(prompt, params, request_id="r", image_data=[image])

    alone = [asyncio.run(send(p, greedy)) for p in prompts]
    calls = []
    generate_batch = server._generate_batch
    server._generate_batch = lambda batch: calls.append(len(batch)) or generate_batch(batch)

    async def together():  # two sampling settings: greedy and sampled requests never share a call
        return await asyncio.gather(*[send(p, greedy) for p in prompts], send(prompts[0], {"temperature": 1.0}))

    *batched, _ = asyncio.run(together())
    assert sorted(calls) == [1, 3]
    for one, many in zip(alone, batched, strict=True):
        assert many.token_ids == one.token_ids
        assert many.log_probs == pytest.approx(one.log_probs, abs=1e-4)


def test_server_takes_the_trainers_weights(tiny_model):
    server = _server(tiny_model)
    prompt = [5, 17, 42, 99, 7]
    before = asyncio.run(server.generate(prompt, {"temperature": 0}, request_id="a")).token_ids
    state = {name: torch.randn_like(p) for name, p in server.model.named_parameters()}
    assert server.update_weights(state, global_steps=4) == len(state)
    after = asyncio.run(server.generate(prompt, {"temperature": 0}, request_id="b"))
    assert after.extra_fields["global_steps"] == 4
    assert after.token_ids != before
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="does not match the model: missing"):
        server.update_weights(state, global_steps=5)


_REWARD_MODEL_MANAGER = """
import json, os, sys
os.environ["VERL_PLATFORM"] = "cpu"
import ray, verl
from hydra import compose, initialize_config_dir
from verl.experimental.reward_loop.reward_model import RewardModelManager
from sophiavl_verl.config import SophiaVLRewardConfig
from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem

recipes, trm = sys.argv[1], sys.argv[2]
with initialize_config_dir(config_dir=recipes, version_base=None):
    config = compose("sophiavl_r1_tiny_cpu", overrides=[f"reward.reward_model.model_path={trm}"])
ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, runtime_env={"env_vars": {"VERL_PLATFORM": "cpu"}})
try:
    manager = RewardModelManager(config.reward.reward_model, resource_pool=None)  # standalone: its own pool
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
client = ThinkingRewardClient(f"http://{manager.router_address}/v1", trm, SophiaVLRewardConfig(timeout_s=120))
item = ThinkingRewardItem("What is 2 + 3?", "<think>2 + 3 = 5 because addition.</think><answer>5</answer>")
print(json.dumps({"router": manager.router_address, "replicas": manager.server_addresses,
                  "scores": client.score_sync([item, item])}))
ray.shutdown()
"""


def _reward_model_manager(trm: str) -> dict:
    """verl's RewardModelManager (standalone, in its own Ray session) on the tiny CPU recipe with ``trm`` served."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _REWARD_MODEL_MANAGER, os.path.join(root, "recipes", "sophiavl_r1"),
                             trm], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_verls_reward_model_manager_serves_the_trm_behind_its_router_on_cpu():
    """Hosting mode A's machinery alone: verl builds the CPU backend's replica as a reward model, which serves the
    SFT-trained TRM over HTTP; verl's router forwards the Table-4 request to it and the reply parses."""
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    found = _reward_model_manager(make_embedded_trm(default_cache_dir()).model_dir)
    assert "error" not in found, found
    (replica,) = found["replicas"]
    assert found["router"] != replica and replica.count(":") == 1
    assert all(0.0 <= score <= 1.0 for score in found["scores"])


def test_a_reward_model_that_fails_to_load_is_one_line_naming_it(tmp_path):
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    broken = tmp_path / "trm"
    shutil.copytree(make_embedded_trm(default_cache_dir()).model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")  # passes validation's file check, fails to load
    found = _reward_model_manager(str(broken))
    assert found["error"].startswith(f"RuntimeError: the reward model {broken} did not start on the CPU backend "
                                     "(replica 0): ") and "\n" not in found["error"]
    assert found["error"].endswith("Error while deserializing header: header too large")  # the cause, in the line
