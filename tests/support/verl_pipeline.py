"""Reward-loop inputs built by verl 0.9.1's own code (v1 trainer, single-turn agent loop), never by hand.

The path, step by step, with verl's functions wherever verl has one:

1. ``RLHFDataset`` (built from the run's ``config.data``) + ``collate_fn`` -> ``batch_dict``;
2. ``uid`` (and for validation ``validate``) and ``global_steps`` as ``PPOTrainer._fetch_one_gen_batch`` /
   ``_next_train_batch`` / ``_validate`` add them, then ``tensordict_utils.get_tensordict``;
3. ``AgentLoopWorkerTQ.generate_sequences`` itself splits the batch into per-prompt dicts (its ``_run_prompt``
   is replaced by a recorder, since the real one talks to TransferQueue);
4. ``_run_prompt``'s pops of ``__rollout_n__`` / ``__do_sample__``, ``n`` and ``session_id``, and the
   ``agent_name`` keyword that ``_run_agent_loop`` consumes (the same expressions; no other code runs there);
5. ``AgentLoopWorker._compute_score`` itself builds the reward ``DataProto`` (``np.array([v] * n)``) and
   calls ``compute_score.remote(data)`` on a reward-loop worker handle; here the handle calls a real
   ``RewardLoopWorker`` in-process.
"""

from __future__ import annotations

import asyncio
import pickle
import types
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.ray_utils import get_event_loop


def rl_dataset(files: list[str], config: Any, tokenizer: Any, processor: Any = None) -> RLHFDataset:
    """verl's dataset over ``files`` with the run's ``config.data`` (as ``create_rl_dataset`` builds it)."""
    return RLHFDataset(files, tokenizer, config.data, processor=processor)


def prompt_batch(dataset: RLHFDataset, *, global_steps: int, validate: bool = False) -> Any:
    """The whole dataset as one prompt batch, as the v1 trainer submits it for generation."""
    batch_dict = collate_fn([dataset[i] for i in range(len(dataset))])
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch_dict["raw_prompt"]))], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", global_steps)
    if validate:
        tu.assign_non_tensor_data(batch, "validate", True)
    return batch


def session_kwargs(batch: Any, config: Any) -> list[list[dict]]:
    """Per prompt, the keyword arguments each of its sessions hands ``_compute_score``."""
    worker = object.__new__(AgentLoopWorkerTQ.__ray_metadata__.modified_class)
    worker.config = config
    worker.background_tasks = set()
    recorded: list[tuple[dict, dict]] = []

    async def record(prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        recorded.append((prompt, trajectory))

    async def split() -> None:
        worker._run_prompt = record
        await worker.generate_sequences(batch)
        await asyncio.gather(*list(worker.background_tasks))

    get_event_loop().run_until_complete(split())
    rollout = config.actor_rollout_ref.rollout
    sessions = []
    for prompt, trajectory in recorded:
        n = prompt.pop("__rollout_n__", rollout.n if not trajectory["validate"] else rollout.val_kwargs.n)
        prompt.pop("__do_sample__", True)
        prompt.pop("agent_name")  # a keyword-only parameter of _run_agent_loop, not part of its **kwargs
        sessions.append([dict(prompt, session_id=i) for i in range(n)])
    return sessions


class RewardWorkerHandle:
    """Stands in for the Ray handle of a reward-loop worker: ``handle.compute_score.remote(data)``.

    The reward input is pickled on the way, as Ray serialises a remote call's arguments (so concurrent
    sessions do not share objects, e.g. the PIL images of their common prompt).

    Args:
        worker: A real ``RewardLoopWorker``.
        meta_info: Added to the reward input's ``meta_info`` (verl PR #7217 adds ``{"validate": ...}``).
    """

    def __init__(self, worker: Any, meta_info: dict | None = None) -> None:
        self.worker = worker
        self.meta_info = dict(meta_info or {})
        self.inputs: list[Any] = []
        self.compute_score = types.SimpleNamespace(remote=self._remote)

    async def _remote(self, data: Any) -> dict:
        data = pickle.loads(pickle.dumps(data))
        data.meta_info.update(self.meta_info)
        self.inputs.append(data)
        return await self.worker.compute_score(data)


async def score_session(handle: RewardWorkerHandle, kwargs: dict, outputs: list[tuple[list[int], list[int]]]) -> Any:
    """Run verl's ``AgentLoopWorker._compute_score`` for one session's outputs.

    Args:
        handle: Where verl sends the reward input.
        kwargs: The session's keyword arguments (:func:`session_kwargs`).
        outputs: ``(prompt_ids, response_ids)`` of each output of the session (several for multi-turn).

    Returns:
        The session's final ``AgentLoopOutput`` (``reward_score``, ``extra_fields["reward_extra_info"]``).
    """
    agent = object.__new__(AgentLoopWorker)
    agent.processor = None  # the position ids of a text model; the non-tensor columns do not depend on it
    agent.mm_processor_kwargs = {}
    agent.reward_loop_worker_handles = [handle]
    loop_outputs = [
        AgentLoopOutput(
            prompt_ids=list(prompt_ids),
            response_ids=list(response_ids),
            response_mask=[1] * len(response_ids),
            num_turns=2,
            metrics=AgentLoopMetrics(),
        )
        for prompt_ids, response_ids in outputs
    ]
    await agent._compute_score(loop_outputs, kwargs=kwargs)
    return loop_outputs[-1]


def score_sessions(
    handle: RewardWorkerHandle, tokenizer: Any, sessions: Iterable[tuple[dict, str]], timeout_s: float | None = None
) -> list[Any]:
    """Score the sessions concurrently, as the agent loop's sessions run, each with one output: the prompt "Q" and
    its response text.

    Args:
        handle: Where verl sends the reward inputs.
        tokenizer: Encodes the prompt and the responses.
        sessions: Each session's keyword arguments (:func:`session_kwargs`) and its response.
        timeout_s: A bound on the whole wait (none by default).

    Returns:
        Each session's final ``AgentLoopOutput`` (:func:`score_session`), in order.
    """

    async def run():
        finals = asyncio.gather(*(
            score_session(handle, kwargs, [(tokenizer.encode("Q"), tokenizer.encode(response))])
            for kwargs, response in sessions
        ))
        return await asyncio.wait_for(finals, timeout=timeout_s)

    return get_event_loop().run_until_complete(run())
