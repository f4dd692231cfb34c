"""The `sophiavl` reward manager inside verl's real reward loop worker, against a real TRM server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.utils.ray_utils import get_event_loop

from conftest import SMALL_RUN, compose_verl_config, run_verl_validation
from fault_injection import FaultInjectionServer
from sophiavl_verl.data import prepare_rl
from sophiavl_verl.reward_manager import GroupOutcomeBoard, _question_and_images, thinking_reward_decision
from sophiavl_verl.rewards import outcome_reward
from sophiavl_verl.thinking_reward import build_reference_trm_prompt
from sophiavl_verl.trust_grpo import OUTCOME_KEY, THINKING_KEY, TRM_LATENCY_KEY, TRM_STATUS_KEY
from verl_pipeline import RewardWorkerHandle, prompt_batch, rl_dataset, score_session, session_kwargs

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
    buffer = io.BytesIO()
    _image(color).save(buffer, format="PNG")
    return buffer.getvalue()


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

    from sophiavl_verl.tiny_vl import install_processor_shim

    install_processor_shim()
    return AutoProcessor.from_pretrained(embedded_trm_server.model)


def _score_groups(worker, config, tmp_path, processor=None) -> tuple[list[str], list[float], list[dict]]:
    """Score GROUPS through verl's own pipeline (tests/verl_pipeline.py), one prompt per group, its sessions
    answering the group's responses; with a processor each prompt has a chart image.

    Returns:
        Per response: its group's name, its expected R^o and the reward loop's output.
    """
    rows = []
    for g, name in enumerate(GROUPS):
        question = f"What is the sum of the two bars? (chart {g})"
        image = "<image>" if processor is not None else ""
        rows.append(_row(g, [{"role": "user", "content": f"{image}{question}\nPlease think ..."}],
                         [_png((40 * g, 90, 160))] if processor is not None else [], question=question))
        rows[-1]["reward_model"]["ground_truth"] = "<answer>7</answer>"
    tokenizer = worker.input_tokenizer
    dataset = rl_dataset([_rl_parquet(tmp_path / "groups.parquet", rows)], config, tokenizer, processor)
    sessions = [kwargs for group in session_kwargs(prompt_batch(dataset, global_steps=1), config) for kwargs in group]
    responses = [GROUPS[list(GROUPS)[kwargs["index"]]][kwargs["session_id"]] for kwargs in sessions]
    handle = RewardWorkerHandle(worker)

    async def run():
        return await asyncio.gather(*(
            score_session(handle, kwargs, [(tokenizer.encode("Q"), tokenizer.encode(response))])
            for kwargs, response in zip(sessions, responses)
        ))

    finals = get_event_loop().run_until_complete(run())
    outputs = [{"reward_score": f.reward_score, "reward_extra_info": f.extra_fields["reward_extra_info"]}
               for f in finals]
    names = [list(GROUPS)[kwargs["index"]] for kwargs in sessions]
    return names, [outcome_reward("numerical", r, "7") for r in responses], outputs


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
    rows = zip(names, queried, info[THINKING_KEY], info[TRM_LATENCY_KEY], expected_outcomes)
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


def _tokenizer_dir(tmp_path):
    from sophiavl_verl.tiny_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path / "tiny")


def test_groups_split_across_ray_reward_workers_share_one_board(ray_with_transfer_queue, tmp_path):
    """verl sends each response to a random reward worker: the board is a cluster-wide named actor."""
    ray = ray_with_transfer_queue
    from sophiavl_verl import reward_manager

    @ray.remote(num_cpus=0)
    class Worker:
        async def arrive(self, uid, outcome):
            board = reward_manager._group_board()
            return await board.arrive(uid, outcome, 4, 30, 30)

    workers = [Worker.remote(), Worker.remote()]
    refs = [workers[i % 2].arrive.remote("g", float(i % 3 == 0)) for i in range(4)]
    results = ray.get(refs, timeout=120)
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
        "algorithm.adv_estimator=trust_grpo", "reward.reward_manager.name=sophiavl",
        "reward.reward_model.enable=True", "reward.reward_model.enable_resource_pool=True",
        f"reward.reward_model.model_path={embedded_trm_server.model}", "reward.reward_model.rollout.name=vllm",
        "reward.custom_reward_function.path=pkg://sophiavl_verl.outcome_reward_fn",
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

    async def run():
        return await asyncio.gather(*(
            score_session(handle, kwargs, [(tokenizer.encode("Q"), tokenizer.encode(GOOD))])
            for group in sessions for kwargs in group
        ))

    finals = get_event_loop().run_until_complete(run())
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
    assert np.asarray(images[0]).shape[-1] == 3  # the decoded PNG of the row
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
    handle = RewardWorkerHandle(worker, meta_info)

    async def run():
        finals = asyncio.gather(*(
            score_session(handle, kwargs, [(tokenizer.encode("Q"), tokenizer.encode(GOOD))])
            for group in sessions for kwargs in group
        ))
        return await asyncio.wait_for(finals, timeout=300)  # a wait on the board would last 3600 s

    return [final.extra_fields["reward_extra_info"] for final in get_event_loop().run_until_complete(run())]


@pytest.mark.parametrize(("split", "meta_info"), [
    (True, {}),  # sophiavl-verl-data rl --val-size marks its validation rows (extra_info.split = "val")
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
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="PNG")
    assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
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
