"""The ``sophiavl`` reward manager of verl's reward loop: outcome reward + thinking reward per response.

verl's reward loop calls :meth:`SophiaVLRewardManager.run_single` once per response, during rollout,
as soon as the response is generated (the TRM is external, or verl serves it on its own GPUs; a
colocated TRM is rejected at validation, since verl's colocated path passes no ground truth). For each
response it computes the rule-based outcome reward R^o and asks the thinking reward model (TRM) for
R^t, returning

    {"reward_score": R^o, "reward_extra_info": {OUTCOME_KEY: R^o, THINKING_KEY: R^t or NaN, ...}}

R^o is the canonical score, so verl's accuracy metrics stay meaningful; the trust-weighted
thinking term is added later by the ``trust_grpo`` estimator, which alone sees whole groups and the
training step.

Query policies (``reward.reward_kwargs.query_policy``) decide which responses cost a TRM request.
``all`` asks for every response at once. ``skip_uniform`` and ``official`` need the outcomes of the
whole group first, so a response waits on a
:class:`~sophiavl_verl.integration.group_board.GroupOutcomeBoard` until all ``rollout.n``
responses of its prompt have their outcome, or until the board has been quiet for ``group_idle_s`` or
``group_wait_s`` has passed; it is then scored as one of an incomplete group (a timeout costs a request,
never a thinking reward). Validation samples (``meta_info["validate"]``, or ``extra_info.split`` in
:data:`~sophiavl_verl.config.VALIDATION_SPLITS`) never wait: they have ``val_kwargs.n`` responses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import time
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from sophiavl_verl import outcome_reward_fn
from sophiavl_verl.config import SPLIT_KEY, VALIDATION_SPLITS, SophiaVLRewardConfig, TrustGRPOConfig
from sophiavl_verl.integration.group_board import group_board
from sophiavl_verl.integration.validation import REWARD_MANAGER_NAME
from sophiavl_verl.keys import (
    OUTCOME_KEY,
    THINKING_KEY,
    TRM_COST_COLUMNS,
    TRM_FAILURE_KEY,
    TRM_LATENCY_KEY,
    TRM_STATUS_KEY,
)
from sophiavl_verl.query_policy import thinking_reward_decision
from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem, TRMRequestError, TRMResult

__all__ = ["SophiaVLRewardManager"]

def _check_router_reaches_trm(client: ThinkingRewardClient, model: str) -> None:
    """Hosting mode A, before training: verl's router answers ``GET /models`` from a replica (listing ``model``).

    verl starts the router after its replicas reported their addresses, but never asks through it; a router
    that cannot reach a replica would otherwise fail every thinking reward of the run (counted as failures).
    The request goes the client's one HTTP way (timeout, reply cap, redirects), on a loop of its own thread:
    verl may be inside one already.

    Raises:
        RuntimeError: One line naming the router and what it answered.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            status, served = pool.submit(asyncio.run, client.served_models()).result()
        except TRMRequestError as e:
            raise RuntimeError(f"hosting mode A: verl's reward router at {client.base_url} does not answer "
                               f"GET /models ({e})") from None
    if status != 200:
        raise RuntimeError(f"hosting mode A: verl's reward router at {client.base_url} cannot reach the reward model "
                           f"(GET /models answered HTTP {status})")
    if served and model not in served:  # a warning: a server may accept more names than it lists
        print(f"[sophiavl] warning: the reward model behind {client.base_url} lists {served}, not {model!r}; "
              "requests may be refused", flush=True)


def _items(value: Any) -> list[Any]:
    """The elements of a list, tuple or 1-D object array (``None`` -> none).

    verl builds every non-tensor column of the reward input with ``np.array([v] * n)`` and no dtype, so a
    list of dicts arrives as an ndarray of dicts, which must never be truth-tested.
    """
    return [] if value is None else list(value)


def _question_and_images(non_tensor: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The question text and the images of a sample (from ``extra_info.question`` and ``raw_prompt``).

    ``raw_prompt`` may be a list of messages or a row of verl's 2-D message array; a message's content a
    string or a list (or array) of ``text`` / ``image`` parts. Only user messages count.
    """
    extra_info = non_tensor.get("extra_info") or {}
    texts, images = [], []
    for message in _items(non_tensor.get("raw_prompt")):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in _items(content):
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image":
                # verl's dataset keeps a stored image's original bytes next to the decoded "image": send those
                image = part.get("bytes") if part.get("bytes") is not None else part.get("image")
                if image is None:
                    raise ValueError(f"an image of the prompt has neither 'image' nor 'bytes': keys {sorted(part)}")
                images.append(image)
    question = extra_info.get("question") or "\n".join(texts)
    return question, tuple(images)


def _lengths(item: Any) -> tuple[int, int]:
    """Prompt and response lengths of one reward-input row.

    verl's agent loop passes them (``prompt_len``, ``response_len``); the row's tensors are padded to the
    longest output of a multi-output session. Without them the row is taken as unpadded.
    """
    if "prompt_len" in item.non_tensor_batch and "response_len" in item.non_tensor_batch:
        return int(item.non_tensor_batch["prompt_len"]), int(item.non_tensor_batch["response_len"])
    response_length = int(item.batch["attention_mask"][-item.batch["responses"].shape[-1] :].sum())
    return int(item.batch["attention_mask"].sum()) - response_length, response_length


@register(REWARD_MANAGER_NAME)
class SophiaVLRewardManager(RewardManagerBase):
    """verl reward-loop manager ``sophiavl``: R^o as the score, R^t (NaN = missing) as extra info.

    Args:
        config: The full verl config. Reads ``reward.reward_kwargs`` (``SophiaVLRewardConfig``),
            ``reward.reward_model.model_path``, ``actor_rollout_ref.rollout.n`` and
            ``algorithm.trust_grpo.correct_threshold``.
        tokenizer: The policy's tokenizer (decodes responses).
        compute_score: verl's loaded ``reward.custom_reward_function``. A user's own function gives
            R^o; when none is set, or it is ``pkg://sophiavl_verl.outcome_reward_fn``, the plugin's
            outcome reward by ``extra_info.problem_type`` is used with ``reward_kwargs.require_format``.
        reward_router_address: ``host:port`` of verl's reward-model router (hosting mode A).
        reward_model_tokenizer: Unused (the TRM is reached through its chat API).
    """

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        reward = config.reward
        self.options = SophiaVLRewardConfig.from_reward_config(reward)
        custom_path = (reward.get("custom_reward_function") or {}).get("path")
        if custom_path and custom_path != outcome_reward_fn.VERL_PATH:
            self.outcome_score = compute_score  # the user's own outcome reward
        else:
            self.outcome_score = functools.partial(
                outcome_reward_fn.compute_score, require_format=self.options.require_format
            )
        self.correct_threshold = TrustGRPOConfig.from_algorithm_config(config.get("algorithm")).correct_threshold
        self.group_size = int(config.actor_rollout_ref.rollout.n)
        if self.options.trm_base_url is not None:
            mode, base_url, model = "B", self.options.trm_base_url, self.options.trm_model
        elif reward_router_address is not None:
            mode, base_url = "A", f"http://{reward_router_address}/v1"
            model = self.options.trm_model or reward.reward_model.model_path
        else:
            raise ValueError(
                "the sophiavl reward manager has no thinking reward model: set reward.reward_kwargs.trm_base_url "
                "or enable reward.reward_model (verl then passes its router address)"
            )
        if not model:
            raise ValueError("reward.reward_kwargs.trm_model is required with reward.reward_kwargs.trm_base_url")
        self.client = ThinkingRewardClient(base_url, model, self.options)  # its key: trm_api_key_env
        if mode == "A":
            _check_router_reaches_trm(self.client, model)
        # One line per reward worker, so that a run's log says where its thinking rewards came from.
        print(f"[sophiavl] thinking reward model: hosting mode {mode} at {self.client.base_url} (model {model})",
              flush=True)
        self._board = group_board() if self.options.query_policy != "all" else None

    async def _outcome(self, data_source: str, response: str, ground_truth: str, extra_info: dict) -> float:
        kwargs = dict(data_source=data_source, solution_str=response, ground_truth=ground_truth, extra_info=extra_info)
        if asyncio.iscoroutinefunction(self.outcome_score):
            result = await self.outcome_score(**kwargs)
        else:
            result = await self.loop.run_in_executor(None, lambda: self.outcome_score(**kwargs))
        score = float(result["score"] if isinstance(result, dict) else result)
        if not math.isfinite(score):
            raise ValueError(f"the outcome reward of a {data_source!r} sample is {score}; it must be finite")
        return score

    async def _decode(self, token_ids: Any) -> str:
        return await self.loop.run_in_executor(None, lambda: self.tokenizer.decode(token_ids, skip_special_tokens=True))

    async def _decision(self, uid: Any, outcome: float, validate: bool) -> str:
        if self._board is None:
            return "query"
        group = None
        if not validate:
            wait_s, idle_s = self.options.group_wait_s, self.options.group_idle_s
            group = await self._board.arrive(str(uid), outcome, self.group_size, wait_s, idle_s)
        return thinking_reward_decision(self.options.query_policy, outcome, group, self.correct_threshold)

    async def run_single(self, data: DataProto) -> dict:
        """Score the last sequence of one sample (verl's reward-loop contract)."""
        item = data[-1:][0]
        non_tensor = item.non_tensor_batch
        prompt_length, response_length = _lengths(item)
        response = await self._decode(item.batch["responses"][:response_length])
        extra_info = dict(non_tensor.get("extra_info") or {})
        outcome = await self._outcome(
            non_tensor["data_source"], response, non_tensor["reward_model"]["ground_truth"], extra_info
        )

        validate = bool(data.meta_info.get("validate")) or extra_info.get(SPLIT_KEY) in VALIDATION_SPLITS
        decision = await self._decision(non_tensor.get("uid"), outcome, validate)
        thinking, latency = (0.0 if decision == "zero" else math.nan), math.nan
        status, result = "skipped", TRMResult()
        if decision == "query":
            question, images = _question_and_images(non_tensor)
            if self.options.trm_prompt == "reference":  # the authors send the policy's whole decoded prompt
                question = await self._decode(item.batch["prompts"][:prompt_length])
            start = time.perf_counter()
            (result,) = await self.client.score_results([ThinkingRewardItem(question, response, images)])
            latency = time.perf_counter() - start
            thinking = result.score
            status = "failed" if math.isnan(thinking) else "scored"
        return {
            "reward_score": outcome,
            "reward_extra_info": {
                "acc": outcome,
                OUTCOME_KEY: outcome,
                THINKING_KEY: thinking,
                TRM_STATUS_KEY: status,
                TRM_LATENCY_KEY: latency,
                TRM_FAILURE_KEY: result.failure or "",
                **{key: float(getattr(result, attribute)) for attribute, key, _ in TRM_COST_COLUMNS},
            },
        }
