"""The `sophiavl` reward manager inside verl's real reward loop worker, against a real TRM server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import pickle
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensordict import TensorDict
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.utils.ray_utils import get_event_loop

from sophiavl_verl.integration.group_board import GroupOutcomeBoard
from sophiavl_verl.integration.reward_manager import _question_and_images
from sophiavl_verl.keys import OUTCOME_KEY, THINKING_KEY, TRM_LATENCY_KEY, TRM_STATUS_KEY
from sophiavl_verl.query_policy import thinking_reward_decision
from sophiavl_verl.rewards import outcome_reward
from sophiavl_verl.thinking_reward import build_reference_trm_prompt
from sophiavl_verl.tools.data import prepare_rl

from support.fault_injection import FaultInjectionServer
from support.images import encoded
from support.verl import HOSTING_MODE_A, SMALL_RUN, compose_verl_config, run_verl_validation
from support.verl_pipeline import (
    RewardWorkerHandle,
    prompt_batch,
    rl_dataset,
    score_session,
    score_sessions,
    session_kwargs,
)

GOOD = "<think>The bars read 3 and 4, so 3 + 4 = 7.</think><answer>7</answer>"
BAD = "<think>Looks like about 9.</think><answer>9</answer>"
UNFORMATTED = "It is 7."

# uid -> responses; ground truth 7 everywhere: a mixed group, an all-correct one, an all-wrong one.
GROUPS = {
    "mixed": [GOOD, BAD, GOOD, UNFORMATTED],
    "all_correct": [GOOD] * 4,
    "all_wrong": [BAD, BAD, UNFORMATTED, BAD],
}


@pytest.mark.parametrize(
    ("policy", "outcome", "group", "expected"),
    [
        ("all", 0.0, [0.0, 0.0], "query"),
        ("skip_uniform", 1.0, [1.0, 1.0, 1.0], "skip"),
        ("skip_uniform", 0.0, [0.0, 0.4, 0.1], "skip"),  # all below the 0.5 threshold: all wrong
        ("skip_uniform", 0.0, [0.0, 1.0], "query"),
        ("skip_uniform", 1.0, None, "query"),  # the group timed out: scored, never dropped
        ("official", 1.0, [0.95, 0.9, 1.0], "skip"),
        ("official", 0.05, [0.05, 0.1, 0.0], "skip"),
        ("official", 0.1, [0.1, 0.7], "zero"),  # R^o < 0.2 in a mixed group: R^t = 0 without a request
        ("official", 0.7, [0.1, 0.7], "query"),
        ("official", 0.1, None, "zero"),
    ],
)
def test_query_policy_decisions(policy, outcome, group, expected):
    assert thinking_reward_decision(policy, outcome, group, correct_threshold=0.5) == expected


def test_group_board_waits_for_the_whole_group_and_forgets_it():
    async def run():
        board = GroupOutcomeBoard()
        first = asyncio.create_task(board.arrive("g", 1.0, group_size=3, timeout_s=5, idle_s=5))
        second = asyncio.create_task(board.arrive("g", 0.0, group_size=3, timeout_s=5, idle_s=5))
        await asyncio.sleep(0.05)
        assert not first.done() and board.pending_groups() == 1
        third = await board.arrive("g", 1.0, group_size=3, timeout_s=5, idle_s=5)
        results = [await first, await second, third]
        lonely = await board.arrive("h", 0.0, group_size=3, timeout_s=0.05, idle_s=5)
        return results, lonely, board.pending_groups()

    results, lonely, pending = asyncio.run(run())
    assert all(sorted(r) == [0.0, 1.0, 1.0] for r in results)
    assert lonely is None and pending == 0


def test_group_board_releases_groups_that_cannot_complete_once_nothing_arrives():
    """A group short of members is released by a quiet board long before ``timeout_s``."""

    async def run():
        board = GroupOutcomeBoard()
        short = asyncio.create_task(board.arrive("short", 1.0, group_size=4, timeout_s=3600, idle_s=0.5))
        whole = await board.arrive("whole", 0.0, group_size=1, timeout_s=3600, idle_s=0.5)
        return await asyncio.wait_for(short, timeout=120), whole, board.pending_groups()

    assert asyncio.run(run()) == (None, [0.0], 0)


def _image(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (56, 56), color)
    image.paste((255, 255, 255), (10, 20, 30, 50))
    return image


# ------------------------------------------------------------------ inputs built by verl's own code path

SYSTEM = "You are a careful visual reasoner."


def _png(color: tuple[int, int, int]) -> bytes:
    return encoded(_image(color), "PNG")


def _rl_parquet(path, rows: list[dict]) -> str:
    """An RL parquet in the layout verl's RLHFDataset reads (``prompt`` messages, ``images``)."""
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _row(index: int, messages: list[dict], images: list[bytes], question: str | None) -> dict:
    extra_info = {"problem_type": "numerical", "index": index}
    if question is not None:
        extra_info["question"] = question
    return {
        "data_source": "sophiavl_r1", "prompt": messages, "images": [{"bytes": b} for b in images],
        "reward_model": {"style": "rule", "ground_truth": "7"}, "extra_info": extra_info,
    }


@pytest.fixture(scope="module")
def tiny_vl_processor(embedded_trm_server):
    from transformers import AutoProcessor

    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
    return AutoProcessor.from_pretrained(embedded_trm_server.model)


def _score_groups(worker, config, tmp_path, processor=None) -> tuple[list[str], list[float], list[dict]]:
    """Score GROUPS through verl's own pipeline (tests/support/verl_pipeline.py), one prompt per group, its sessions
    answering the group's responses; with a processor each prompt has a chart image.

    Returns:
        Per response: its group's name, its expected R^o and the reward loop's output.
    """
    rows = []
    for g, _ in enumerate(GROUPS):
        question = f"What is the sum of the two bars? (chart {g})"
        image = "<image>" if processor is not None else ""
        rows.append(_row(g, [{"role": "user", "content": f"{image}{question}\nPlease think ..."}],
                         [_png((40 * g, 90, 160))] if processor is not None else [], question=question))
        rows[-1]["reward_model"]["ground_truth"] = "<answer>7</answer>"
    tokenizer = worker.input_tokenizer
    dataset = rl_dataset([_rl_parquet(tmp_path / "groups.parquet", rows)], config, tokenizer, processor)
    sessions = [kwargs for group in session_kwargs(prompt_batch(dataset, global_steps=1), config) for kwargs in group]
    responses = [GROUPS[list(GROUPS)[kwargs["index"]]][kwargs["session_id"]] for kwargs in sessions]
    finals = score_sessions(RewardWorkerHandle(worker), tokenizer, zip(sessions, responses, strict=True))
    outputs = [{"reward_score": f.reward_score, "reward_extra_info": f.extra_fields["reward_extra_info"]}
               for f in finals]
    names = [list(GROUPS)[kwargs["index"]] for kwargs in sessions]
    return names, [outcome_reward("numerical", r, "7") for r in responses], outputs


def _reward_batch(tokenizer) -> tuple[DataProto, list[float]]:
    """One row per response in the shape verl's agent loop hands the reward loop (see
    AgentLoopWorker._compute_score)."""
    prompts, responses, rows, expected_outcomes = [], [], [], []
    for g, (uid, group) in enumerate(GROUPS.items()):
        question = f"What is the sum of the two bars? (chart {g})"
        raw_prompt = [{"role": "user", "content": [
            {"type": "image", "image": _image((40 * g, 90, 160))},
            {"type": "text", "text": question + "\nPlease think ..."},
        ]}]
        for session, response in enumerate(group):
            prompts.append(torch.tensor(tokenizer.encode(question), dtype=torch.long))
            responses.append(torch.tensor(tokenizer.encode(response), dtype=torch.long))
            rows.append({
                "uid": uid, "session_id": session, "data_source": "sophiavl_r1", "raw_prompt": raw_prompt,
                "reward_model": {"style": "rule", "ground_truth": "<answer>7</answer>"},
                "extra_info": {"problem_type": "numerical", "question": question},
            })
            expected_outcomes.append(outcome_reward("numerical", response, "7"))
    pad = torch.nn.utils.rnn.pad_sequence
    prompt_ids, response_ids = pad(prompts, batch_first=True), pad(responses, batch_first=True)
    attention = torch.cat([
        pad([torch.ones_like(p) for p in prompts], batch_first=True),
        pad([torch.ones_like(r) for r in responses], batch_first=True),
    ], dim=1)
    non_tensors = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    data = DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": attention},
        non_tensors=non_tensors,
    )
    return data, expected_outcomes


def _requests_seen(server) -> int:
    return server.log_path.read_text(errors="replace").count('"POST /v1/chat/completions')


@pytest.mark.parametrize(
    ("policy", "expected_requests"),
    [
        ("all", 12),
        ("skip_uniform", 4),  # only the mixed group
        ("official", 2),  # the mixed group's responses with R^o >= 0.2
    ],
)
def test_reward_loop_worker_scores_through_the_real_server(
    embedded_trm_server, tiny_vl_processor, tmp_path, policy, expected_requests
):
    config = compose_verl_config([
        *SMALL_RUN,
        "actor_rollout_ref.rollout.n=4",
        f"actor_rollout_ref.model.path={embedded_trm_server.model}",  # the tiny model's tokenizer
        "algorithm.adv_estimator=trust_grpo",
        "reward.reward_manager.name=sophiavl",
        f"+reward.reward_kwargs.trm_base_url={embedded_trm_server.base_url}",
        f"+reward.reward_kwargs.trm_model={embedded_trm_server.model}",
        f"+reward.reward_kwargs.query_policy={policy}",
        "+reward.reward_kwargs.group_wait_s=60",
    ])
    worker = RewardLoopWorker(config, reward_router_address=None)  # verl's worker, run in-process

    before = _requests_seen(embedded_trm_server)
    names, expected_outcomes, outputs = _score_groups(worker, config, tmp_path, tiny_vl_processor)
    assert _requests_seen(embedded_trm_server) - before == expected_requests

    scores = [out["reward_score"] for out in outputs]
    info = {key: [out["reward_extra_info"][key] for out in outputs] for key in outputs[0]["reward_extra_info"]}
    assert scores == expected_outcomes == info[OUTCOME_KEY]
    queried = [status != "skipped" for status in info[TRM_STATUS_KEY]]
    assert sum(queried) == expected_requests
    rows = zip(names, queried, info[THINKING_KEY], info[TRM_LATENCY_KEY], expected_outcomes, strict=True)
    for name, asked, r_t, latency, r_o in rows:
        if asked:
            assert 0.0 <= r_t <= 1.0 and latency > 0
        elif policy == "official" and name == "mixed" and r_o < 0.2:
            assert r_t == 0.0  # the reference code's explicit zero
        else:
            assert math.isnan(r_t) and math.isnan(latency)  # missing, never 0
    assert set(info[TRM_STATUS_KEY]) <= {"scored", "skipped"}


def test_reward_loop_worker_failing_trm_gives_nan_and_failed_status(tmp_path):
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=4", "reward.reward_manager.name=sophiavl",
        f"actor_rollout_ref.model.path={_tokenizer_dir(tmp_path)}",
        "+reward.reward_kwargs.trm_base_url=http://127.0.0.1:9/v1",  # nothing listens on port 9
        "+reward.reward_kwargs.trm_model=trm", "+reward.reward_kwargs.query_policy=all",
        "+reward.reward_kwargs.max_retries=1", "+reward.reward_kwargs.timeout_s=2",
    ])
    worker = RewardLoopWorker(config, reward_router_address=None)
    _, expected_outcomes, outputs = _score_groups(worker, config, tmp_path)
    assert [o["reward_score"] for o in outputs] == expected_outcomes
    assert all(math.isnan(o["reward_extra_info"][THINKING_KEY]) for o in outputs)
    assert {o["reward_extra_info"][TRM_STATUS_KEY] for o in outputs} == {"failed"}


def _trust_grpo_metrics(data: DataProto) -> dict:
    """The metrics verl's own ``compute_advantage`` logs for trust_grpo at step 1 of 10 (the estimator's report)."""
    from verl.trainer.ppo import ray_trainer

    from sophiavl_verl.integration import trainer_step

    metrics: dict = {}
    with trainer_step(global_step=1, total_training_steps=10, metrics=metrics):
        ray_trainer.compute_advantage(data, "trust_grpo", config=OmegaConf.create(
            {"adv_estimator": "trust_grpo", "norm_adv_by_std_in_grpo": True, "trust_grpo": {}}))
    return metrics


def _tokenizer_dir(tmp_path):
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path / "tiny")


def test_groups_split_across_ray_reward_workers_share_one_board(ray_with_transfer_queue, tmp_path):
    """verl sends each response to a random reward worker: the board is a cluster-wide named actor."""
    ray = ray_with_transfer_queue
    from sophiavl_verl.integration import group_board

    @ray.remote(num_cpus=0)
    class Worker:
        async def arrive(self, uid, outcome):
            board = group_board.group_board()
            # Generous waits: on a loaded 2-core machine the second actor can take tens of seconds to start.
            return await board.arrive(uid, outcome, 4, 180, 180)

    workers = [Worker.remote(), Worker.remote()]
    refs = [workers[i % 2].arrive.remote("g", float(i % 3 == 0)) for i in range(4)]
    results = ray.get(refs, timeout=300)
    assert all(sorted(r) == [0.0, 0.0, 1.0, 1.0] for r in results)


def test_hosting_mode_a_reaches_the_trm_through_verls_router_address(
    embedded_trm_server, tiny_vl_processor, tmp_path
):
    """Mode A: verl serves the TRM in the cluster and hands the manager its router's host:port.

    vLLM cannot run here, so the real OpenAI-compatible server stands where verl's reward router would;
    everything on verl's side (RewardLoopWorker with an enabled reward model, the custom-function route
    that avoids /classify, the manager's router address and model_path) is verl's own code.
    """
    host_port = embedded_trm_server.base_url.removeprefix("http://").removesuffix("/v1")
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=4", f"actor_rollout_ref.model.path={embedded_trm_server.model}",
        "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl", *HOSTING_MODE_A,
        f"reward.reward_model.model_path={embedded_trm_server.model}",
        "+reward.reward_kwargs.query_policy=all",
    ])
    run_verl_validation(config)
    worker = RewardLoopWorker(config, reward_router_address=host_port)
    before = _requests_seen(embedded_trm_server)
    _, expected_outcomes, outputs = _score_groups(worker, config, tmp_path, tiny_vl_processor)
    assert _requests_seen(embedded_trm_server) - before == 12
    assert [o["reward_score"] for o in outputs] == expected_outcomes
    assert all(0.0 <= o["reward_extra_info"][THINKING_KEY] <= 1.0 for o in outputs)


def test_multi_message_prompts_reach_the_trm_in_every_shape_verl_builds(
    embedded_trm_server, tiny_vl_processor, tmp_path
):
    """System + user prompts (list content with an image, string content) and a lone user message.

    verl builds ``raw_prompt`` with ``np.array([v] * n)``: two messages arrive as a 2-D array of dicts.
    """
    user = "<image>What is the sum of the two bars?"
    rows = [
        _row(0, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], [_png((10, 90, 160))],
             question="What is the sum of the two bars?"),
        _row(1, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 3 + 4?"}], [],
             question=None),
        _row(2, [{"role": "user", "content": "What is 2 + 5?"}], [], question=None),
    ]
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=2", f"actor_rollout_ref.model.path={embedded_trm_server.model}",
        "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl",
        f"+reward.reward_kwargs.trm_base_url={embedded_trm_server.base_url}",
        f"+reward.reward_kwargs.trm_model={embedded_trm_server.model}", "+reward.reward_kwargs.query_policy=all",
    ])
    worker = RewardLoopWorker(config, reward_router_address=None)
    tokenizer = worker.input_tokenizer
    dataset = rl_dataset([_rl_parquet(tmp_path / "train.parquet", rows)], config, tokenizer, tiny_vl_processor)
    sessions = session_kwargs(prompt_batch(dataset, global_steps=1), config)
    handle = RewardWorkerHandle(worker)
    finals = score_sessions(handle, tokenizer, [(kwargs, GOOD) for group in sessions for kwargs in group])
    assert len(finals) == 6
    for final in finals:  # each "scored" is a request the server answered
        info = final.extra_fields["reward_extra_info"]
        assert final.reward_score == 1.0 and info[TRM_STATUS_KEY] == "scored", info
        assert 0.0 <= info[THINKING_KEY] <= 1.0

    rows_seen = [data[-1:][0].non_tensor_batch for data in handle.inputs]
    shapes = sorted({np.asarray(data.non_tensor_batch["raw_prompt"]).shape for data in handle.inputs})
    assert shapes == [(1, 1), (1, 2)]  # verl's shapes, not lists
    by_index = {row["index"]: _question_and_images(row) for row in rows_seen}
    question, images = by_index[0]
    assert question == "What is the sum of the two bars?" and len(images) == 1
    assert images[0] == rows[0]["images"][0]["bytes"]  # the row's PNG, its original bytes (never re-encoded)
    assert by_index[1] == ("What is 3 + 4?", ())  # the user message only, never the system prompt
    assert by_index[2] == ("What is 2 + 5?", ())


def _validation_run(server, tmp_path, *, split: bool, meta_info: dict, idle_s: float) -> list:
    """A validation pass of verl (``val_kwargs.n`` = 1 response per prompt, ``rollout.n`` = 4) under
    ``skip_uniform`` with ``group_wait_s`` = 3600; returns each sample's reward extra info."""
    source = tmp_path / "rows.json"
    source.write_text(json.dumps([
        {"problem": f"What is {i} + 7?", "solution": str(i + 7), "problem_type": "numerical", "data_type": "text"}
        for i in range(4)
    ]))
    out = tmp_path / "train.parquet"
    prepare_rl([source], out, val_size=2 if split else 0)
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.rollout.val_kwargs.n=1",
        f"actor_rollout_ref.model.path={server.model}", "algorithm.adv_estimator=trust_grpo",
        "reward.reward_manager.name=sophiavl", f"+reward.reward_kwargs.trm_base_url={server.base_url}",
        f"+reward.reward_kwargs.trm_model={server.model}", "+reward.reward_kwargs.query_policy=skip_uniform",
        "+reward.reward_kwargs.group_wait_s=3600", f"+reward.reward_kwargs.group_idle_s={idle_s}",
    ])
    worker = RewardLoopWorker(config, reward_router_address=None)
    tokenizer = worker.input_tokenizer
    dataset = rl_dataset([str(tmp_path / "val.parquet" if split else out)], config, tokenizer)
    sessions = session_kwargs(prompt_batch(dataset, global_steps=3, validate=True), config)
    assert all(len(group) == 1 for group in sessions)  # val_kwargs.n, never rollout.n
    finals = score_sessions(RewardWorkerHandle(worker, meta_info), tokenizer,
                            [(kwargs, GOOD) for group in sessions for kwargs in group],
                            timeout_s=300)  # a wait on the board would last 3600 s
    return [final.extra_fields["reward_extra_info"] for final in finals]


@pytest.mark.parametrize(("split", "meta_info"), [
    (True, {}),  # sophiavl-verl data rl --val-size marks its validation rows (extra_info.split = "val")
    (False, {"validate": True}),  # verl PR #7217 passes the validate flag in meta_info
])
def test_validation_samples_never_wait_for_their_group(embedded_trm_server, tmp_path, split, meta_info):
    infos = _validation_run(embedded_trm_server, tmp_path, split=split, meta_info=meta_info, idle_s=3600)
    assert len(infos) == (2 if split else 4)
    assert all(info[TRM_STATUS_KEY] == "scored" for info in infos)  # scored as an incomplete group


def test_unmarked_validation_costs_group_idle_s_not_group_wait_s(embedded_trm_server, tmp_path):
    infos = _validation_run(embedded_trm_server, tmp_path, split=False, meta_info={}, idle_s=1)
    assert len(infos) == 4 and all(info[TRM_STATUS_KEY] == "scored" for info in infos)


def test_reference_layout_sends_the_decoded_policy_prompt_and_the_first_image(
    embedded_trm_server, tiny_vl_processor, tmp_path
):
    """``trm_prompt=reference``: what the authors' reward manager sends for a response of verl's pipeline."""
    png = _png((200, 40, 40))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "<image><image>What is the sum?"}]
    rows = [_row(0, messages, [png, _png((0, 0, 255))], question="What is the sum?")]
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        config = compose_verl_config([
            *SMALL_RUN, "actor_rollout_ref.rollout.n=1", f"actor_rollout_ref.model.path={embedded_trm_server.model}",
            "reward.reward_manager.name=sophiavl", f"+reward.reward_kwargs.trm_base_url={server.base_url}",
            f"+reward.reward_kwargs.trm_model={server.model}", "+reward.reward_kwargs.query_policy=all",
            "+reward.reward_kwargs.trm_prompt=reference",
        ])
        worker = RewardLoopWorker(config, reward_router_address=None)
        tokenizer = worker.input_tokenizer
        dataset = rl_dataset([_rl_parquet(tmp_path / "t.parquet", rows)], config, tokenizer, tiny_vl_processor)
        (group,) = session_kwargs(prompt_batch(dataset, global_steps=1), config)
        # The prompt ids as the agent loop makes them: the processor's chat template, vision tokens included.
        text = tiny_vl_processor.apply_chat_template(group[0]["raw_prompt"], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(text)
        final = get_event_loop().run_until_complete(
            score_session(RewardWorkerHandle(worker), group[0], [(prompt_ids, tokenizer.encode(GOOD))])
        )
        (body,) = server.bodies
    assert final.extra_fields["reward_extra_info"][THINKING_KEY] == 0.5
    decoded = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert decoded.startswith("system\n" + SYSTEM) and "What is the sum?" in decoded
    text_part, image_part = body["messages"][1]["content"]  # the text, then one image: the first
    assert text_part == {"type": "text", "text": build_reference_trm_prompt(decoded, GOOD, has_image=True)}
    reencoded = encoded(Image.open(io.BytesIO(png)), "PNG")
    assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(reencoded).decode()
    assert "max_tokens" not in body


def test_multi_output_session_is_scored_on_its_final_output(embedded_trm_server, tmp_path):
    """verl pads a multi-output session's rows to its longest output; the final one is read at its own length."""
    rows = [_row(0, [{"role": "user", "content": "What is 3 + 4?"}], [], question=None)]
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=1", f"actor_rollout_ref.model.path={embedded_trm_server.model}",
        "reward.reward_manager.name=sophiavl", f"+reward.reward_kwargs.trm_base_url={embedded_trm_server.base_url}",
        f"+reward.reward_kwargs.trm_model={embedded_trm_server.model}", "+reward.reward_kwargs.query_policy=all",
    ])
    worker = RewardLoopWorker(config, reward_router_address=None)
    tokenizer = worker.input_tokenizer
    dataset = rl_dataset([_rl_parquet(tmp_path / "t.parquet", rows)], config, tokenizer)
    (group,) = session_kwargs(prompt_batch(dataset, global_steps=1), config)
    turns = [  # a long first output, then a final one with a shorter prompt and response
        (tokenizer.encode("What is 3 + 4? " * 8), tokenizer.encode("Let me use a tool to add the numbers. " * 8)),
        (tokenizer.encode("What is 3 + 4?"), tokenizer.encode(GOOD)),
    ]
    handle = RewardWorkerHandle(worker)
    final = get_event_loop().run_until_complete(score_session(handle, group[0], turns))
    (data,) = handle.inputs
    assert data.batch["responses"].shape[-1] > len(turns[1][1])  # the final row is padded
    assert final.reward_score == 1.0  # GOOD, read at its own length


# ------------------------------------------------------------- the TRM client inside verl's reward worker


def _jpeg(color: tuple[int, int, int]) -> bytes:
    return encoded(_image(color), "JPEG", quality=90)


def _dataset_row(uid: str, question: str, image_bytes: bytes) -> dict:
    """A parquet row with a stored image ({"bytes", "path"}, the datasets Image feature), turned into its
    ``raw_prompt`` by verl's own ``RLHFDataset._build_messages`` (which adds a decoded "image" next to the bytes)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    example = {"prompt": [{"role": "user", "content": f"<image>{question}"}],
               "images": [{"bytes": image_bytes, "path": None}]}
    dataset = SimpleNamespace(image_key="images", video_key="videos", audio_key="audios", processor=object())
    return {
        "uid": uid, "data_source": "sophiavl_r1", "raw_prompt": RLHFDataset._build_messages(dataset, example, "prompt"),
        "reward_model": {"style": "rule", "ground_truth": "<answer>7</answer>"},
        "extra_info": {"problem_type": "numerical", "question": question},
    }


def _agent_loop_sample(tokenizer, row: dict, response: str) -> DataProto:
    """One response as verl's ``AgentLoopWorker._compute_score`` builds it (n = 1 output) and Ray delivers it to a
    reward worker: pickled and unpickled, so the responses of a group hold separate copies of its image."""
    prompts = torch.tensor(tokenizer.encode(row["extra_info"]["question"]), dtype=torch.int64)
    responses = torch.tensor(tokenizer.encode(response), dtype=torch.int64)
    input_ids = torch.cat([prompts, responses], dim=0)
    n = 1
    batch = TensorDict({
        "prompts": prompts[None], "responses": responses[None], "input_ids": input_ids[None],
        "attention_mask": torch.ones_like(input_ids)[None], "position_ids": torch.arange(len(input_ids))[None],
    }, batch_size=n)
    non_tensor_batch = {
        **{k: np.array([v] * n) for k, v in row.items()},
        "__num_turns__": np.array([2]),
        "prompt_len": np.array([len(prompts)]),
        "response_len": np.array([len(responses)]),
    }
    return pickle.loads(pickle.dumps(DataProto(batch=batch, non_tensor_batch=non_tensor_batch)))


def _sophiavl_worker(tmp_path, server, *options) -> RewardLoopWorker:
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=4", "reward.reward_manager.name=sophiavl",
        f"actor_rollout_ref.model.path={_tokenizer_dir(tmp_path)}",
        f"+reward.reward_kwargs.trm_base_url={server.base_url}", f"+reward.reward_kwargs.trm_model={server.model}",
        "+reward.reward_kwargs.query_policy=all", *options,
    ])
    return RewardLoopWorker(config, reward_router_address=None)


def test_reward_worker_sends_the_datasets_image_bytes_prepared_once_per_group_and_logs_the_cost(tmp_path):
    images = {uid: _jpeg((60 * g, 90, 160)) for g, uid in enumerate(["mixed", "all_correct"])}
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        worker = _sophiavl_worker(tmp_path, server, "+reward.reward_kwargs.max_concurrency=4")
        rows = {uid: _dataset_row(uid, f"What is the sum? ({uid})", data) for uid, data in images.items()}
        samples = [_agent_loop_sample(worker.input_tokenizer, rows[uid], response)
                   for uid in images for response in GROUPS[uid]]
        part = samples[0].non_tensor_batch["raw_prompt"][0][0]["content"][0]
        assert part["bytes"] == images["mixed"] and part["image"].size == (56, 56)  # verl's part: both
        loop = get_event_loop()
        outputs = loop.run_until_complete(asyncio.gather(*(worker.compute_score(s) for s in samples)))
        sent = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for b in server.bodies
                for p in b["messages"][-1]["content"] if p["type"] == "image_url"]
        worker.reward_manager.client.close()
    assert sorted(sent) == sorted([images["mixed"]] * 4 + [images["all_correct"]] * 4)  # original bytes, as stored
    stats = worker.reward_manager.client.stats
    assert stats.images_prepared == 2 and stats.image_encodes == 0 and stats.connections <= 4

    # the step's metrics, from the reward extra info assembled as RewardLoopManager.compute_rm_score does
    infos = [out["reward_extra_info"] for out in outputs]
    non_tensor = {key: np.array([info[key] for info in infos]) for key in infos[0]}
    outcome = [out["reward_score"] for out in outputs]
    token_level = torch.tensor(outcome, dtype=torch.float32)[:, None]
    data = DataProto.from_dict(tensors={"token_level_rewards": token_level, "response_mask": torch.ones(8, 1)},
                               non_tensors={"uid": np.array([s.non_tensor_batch["uid"][0] for s in samples]),
                                            **non_tensor})
    metrics = _trust_grpo_metrics(data)
    assert metrics["trm/http_requests"] == server.requests == 8
    assert metrics["trm/bytes_sent"] == server.bytes_received
    assert metrics["trm/connections"] == server.connections and metrics["trm/image_encodes"] == 0


def test_reward_worker_with_a_hanging_trm_ends_within_the_deadline_with_nan_counted(tmp_path):
    """A TRM that accepts connections and never answers: the reward phase ends within deadline_s, the breaker
    stops sending after the first wave, every thinking reward is NaN (never 0) and counted by kind."""
    async def hang(n, body):
        await asyncio.sleep(600)

    deadline_s = 3.0
    with FaultInjectionServer(hang) as server:
        worker = _sophiavl_worker(
            tmp_path, server, "+reward.reward_kwargs.max_concurrency=4", "+reward.reward_kwargs.timeout_s=0.5",
            "+reward.reward_kwargs.max_retries=5", f"+reward.reward_kwargs.deadline_s={deadline_s}",
            "+reward.reward_kwargs.breaker_failures=4", "+reward.reward_kwargs.breaker_cooldown_s=60",
        )
        data, expected_outcomes = _reward_batch(worker.input_tokenizer)
        start = time.monotonic()
        outputs = get_event_loop().run_until_complete(worker.compute_score_batch(data))
        seconds = time.monotonic() - start
        requests = server.requests
        worker.reward_manager.client.close()
    assert seconds < deadline_s + 2.0  # (without the fix: 12 responses x 6 attempts x 60 s, 4 at a time)
    assert requests <= 8  # the first wave (4) and at most one more per slot; then the breaker fails fast
    assert [o["reward_score"] for o in outputs] == expected_outcomes
    infos = [o["reward_extra_info"] for o in outputs]
    assert all(math.isnan(i[THINKING_KEY]) and i[TRM_STATUS_KEY] == "failed" for i in infos)
    kinds = Counter(i["sophiavl_trm_failure"] for i in infos)
    assert set(kinds) <= {"timeout", "circuit_open"} and kinds["circuit_open"] >= 4


def test_hosting_mode_a_refused_requests_fail_fast_through_verls_worker_and_router(verl_router, tmp_path):
    """Mode A end to end: verl's RewardLoopWorker with its router address, verl's own router, and an upstream that
    refuses the wrong responses' requests with vLLM's context-length 400 (the router turns it into its bodiless
    500): those are NaN as upstream_rejected after two requests each, not six with backoff."""
    from aiohttp import web

    from support.fault_injection import VLLM_TOO_LONG

    async def script(n, body):
        if BAD in body["messages"][-1]["content"][-1]["text"]:
            await asyncio.sleep(0.3)  # the other requests are answered first
            return web.json_response(VLLM_TOO_LONG, status=400)
        return "<answer>0.6</answer>"

    address, server = verl_router(script)
    tokenizer = _tokenizer_dir(tmp_path)
    config = compose_verl_config([
        *SMALL_RUN, "actor_rollout_ref.rollout.n=4", f"actor_rollout_ref.model.path={tokenizer}",
        "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl", *HOSTING_MODE_A,
        f"reward.reward_model.model_path={tokenizer}",
        "+reward.reward_kwargs.query_policy=all", "+reward.reward_kwargs.max_retries=5",
    ])
    run_verl_validation(config)
    worker = RewardLoopWorker(config, reward_router_address=address)
    data, expected_outcomes = _reward_batch(worker.input_tokenizer)
    outputs = get_event_loop().run_until_complete(worker.compute_score_batch(data))
    worker.reward_manager.client.close()
    responses = [response for group in GROUPS.values() for response in group]
    refused = [response == BAD for response in responses]
    assert [o["reward_score"] for o in outputs] == expected_outcomes
    for out, bad in zip(outputs, refused, strict=True):
        info = out["reward_extra_info"]
        if bad:
            assert math.isnan(info[THINKING_KEY]) and info["sophiavl_trm_failure"] == "upstream_rejected"
            assert info["sophiavl_trm_http_requests"] == 2
        else:
            assert info[THINKING_KEY] == pytest.approx(0.6) and info["sophiavl_trm_failure"] == ""
    assert server.requests == sum(not b for b in refused) + 2 * sum(refused)


def test_padding_rows_count_in_no_failure_kind_and_no_cost(tmp_path):
    """verl pads a batch with copies of a real sample (uid ``pad<hex>``, the copy's reward extra info): they count
    in neither trm/failed_<kind> nor the cost totals (2 real rows and 1 pad gave failed_timeout 2, not 1)."""
    async def script(n, body):
        if BAD in body["messages"][-1]["content"][-1]["text"]:
            await asyncio.sleep(30)  # past timeout_s
        return "<answer>0.5</answer>"

    with FaultInjectionServer(script) as server:
        worker = _sophiavl_worker(tmp_path, server, "+reward.reward_kwargs.timeout_s=0.3",
                                  "+reward.reward_kwargs.max_retries=0")
        row = _dataset_row("mixed", "What is the sum?", _jpeg((10, 200, 30)))
        samples = [_agent_loop_sample(worker.input_tokenizer, row, response) for response in (GOOD, BAD)]
        outputs = get_event_loop().run_until_complete(asyncio.gather(*(worker.compute_score(s) for s in samples)))
        worker.reward_manager.client.close()
        requests, received = server.requests, server.bytes_received
    infos = [out["reward_extra_info"] for out in outputs]
    assert [info["sophiavl_trm_failure"] for info in infos] == ["", "timeout"]
    infos.append(dict(infos[1]))  # verl's padding row: a copy of a real sample's extra info, under a pad uid
    uids = ["mixed", "mixed", "pad" + "0f" * 16]
    non_tensor = {key: np.array([info[key] for info in infos]) for key in infos[0]}
    outcome = [out["reward_score"] for out in outputs] + [outputs[1]["reward_score"]]
    data = DataProto.from_dict(
        tensors={"token_level_rewards": torch.tensor(outcome, dtype=torch.float32)[:, None],
                 "response_mask": torch.ones(3, 1)},
        non_tensors={"uid": np.array(uids, dtype=object), **non_tensor})
    metrics = _trust_grpo_metrics(data)
    assert metrics["trm/failed"] == 1 and metrics["trm/failed_timeout"] == 1
    assert metrics["trm/http_requests"] == requests == 2 and metrics["trm/bytes_sent"] == received


def test_hosting_mode_a_router_that_cannot_reach_its_replica_stops_before_training(verl_router, tmp_path):
    """verl's own router in front of a replica address where nothing listens: building verl's RewardLoopWorker (in
    the TaskRunner, before the first step) fails with one line naming the router, not with a run of NaN rewards."""
    from support.net import free_port

    address, _ = verl_router(lambda n, body: "<answer>0.5</answer>", upstream=f"http://127.0.0.1:{free_port()}")
    tokenizer = _tokenizer_dir(tmp_path)
    config = compose_verl_config([
        *SMALL_RUN, f"actor_rollout_ref.model.path={tokenizer}", "algorithm.adv_estimator=trust_grpo",
        "reward.reward_manager.name=sophiavl", *HOSTING_MODE_A, f"reward.reward_model.model_path={tokenizer}",
        "+reward.reward_kwargs.timeout_s=20",
    ])
    started = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        RewardLoopWorker(config, reward_router_address=address)
    assert time.monotonic() - started < 60  # verl's router retries its upstream 3 times, 2 s apart
    message = str(error.value)
    assert "\n" not in message and f"router at http://{address}/v1 cannot reach the reward model" in message
