"""The audit's scoring: the thinking reward model to ask, R^o and R^t of every response, then Trust-GRPO.

Each step calls the function training calls, with the options training reads:

* the TRM: a given OpenAI-compatible endpoint, or the embedded tiny TRM served on 127.0.0.1 for the
  duration of the audit (:func:`thinking_reward_endpoint`);
* R^o (:func:`outcome_rewards`): :func:`sophiavl_verl.rewards.outcome_reward`;
* R^t (:func:`score_groups`): :class:`sophiavl_verl.thinking_reward.ThinkingRewardClient`, asked about the
  responses the query policy sends (:func:`sophiavl_verl.query_policy.thinking_reward_decision`); a failed
  request is NaN, reported as a failure, never as 0;
* γ, the Eq. 5 rewards and the Eq. 6 advantages (:func:`apply_trust_grpo`):
  :func:`sophiavl_verl.trust_grpo.trust_grpo_advantages`, with plain GRPO's advantages next to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sophiavl_verl.errors import AuditError
from sophiavl_verl.tools.audit.inputs import Group
from sophiavl_verl.tools.audit.settings import AuditSettings

__all__ = ["CHECKPOINT_NAME", "EMBEDDED_CONCURRENCY", "REMOTE_CONCURRENCY", "GroupResult", "ScoreCheckpoint",
           "apply_trust_grpo", "check_endpoint", "default_cache_dir", "outcome_rewards", "request_key", "score_groups",
           "thinking_reward_endpoint", "trm_client"]

#: Default TRM requests in flight: the embedded CPU server, and a server given by --trm-url. transformers
#: serve runs each request's generate() in its own thread: on a small CPU, requests in flight together
#: oversubscribe the cores (2 cores: 256 responses took 64 s with 1 in flight, 113 s with 2). A vLLM-style
#: server batches concurrent requests instead.
EMBEDDED_CONCURRENCY = 1
REMOTE_CONCURRENCY = 16

# ------------------------------------------------------------------------------------------ the TRM


def default_cache_dir() -> Path:
    """Where the embedded TRM is built: ``$SOPHIAVL_VERL_CACHE``, else ``$XDG_CACHE_HOME/sophiavl_verl``."""
    if os.environ.get("SOPHIAVL_VERL_CACHE"):
        return Path(os.environ["SOPHIAVL_VERL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sophiavl_verl"


def check_endpoint(client) -> list[str]:
    """Fail fast when the TRM endpoint cannot be reached: ``GET {base_url}/models`` through ``client`` (a
    ``ThinkingRewardClient``), the way its scoring requests go: its timeout as a limit on the whole request, its
    reply size cap, and redirects that drop the API key when they lead to another host, port or scheme.

    Returns:
        The model ids the server lists (empty when it does not implement ``/models``).

    Raises:
        AuditError: When nothing answers at the client's base URL in time, or it refuses the API key.
    """
    from sophiavl_verl.thinking_reward import TRMRequestError

    try:
        status, ids = asyncio.run(client.served_models())
    except TRMRequestError as exc:
        raise AuditError(
            f"cannot reach the thinking reward model at {client.base_url} ({exc}); is the server running "
            "(e.g. `vllm serve <model> --port 8000`, then --trm-url http://host:8000/v1)?"
        ) from None
    if status in (401, 403):
        raise AuditError(
            f"thinking reward model at {client.base_url} refused the request ({status}); "
            "set the API key in the environment variable named by --trm-api-key-env"
        )
    return ids or []  # no /models route: the chat requests will tell


@contextmanager
def thinking_reward_endpoint(
    trm_url: str | None,
    trm_model: str | None,
    *,
    cache_dir: str | os.PathLike | None = None,
    log=print,
) -> Iterator[dict]:
    """The TRM to score with: the given OpenAI-compatible endpoint, or the embedded tiny TRM served here.

    The embedded one is trained (once, cached) by :func:`sophiavl_verl.tools.trm_sft.make_embedded_trm` and served
    by :class:`sophiavl_verl.integration.cpu_backend.transformers_serve.LocalOpenAIServer` on 127.0.0.1; the server
    is stopped when the block exits, also on error or Ctrl-C.

    Yields:
        ``{"base_url", "model", "embedded"}``.
    """
    if trm_url:  # an http(s) URL: SophiaVLRewardConfig checked it; check_endpoint checks that it answers
        if not trm_model:
            raise AuditError("--trm-url needs --trm-model (the model name the server serves)")
        yield {"base_url": trm_url, "model": trm_model, "embedded": False}
        return
    if trm_model:
        raise AuditError("--trm-model needs --trm-url (without both, the embedded tiny TRM is used)")
    from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    log(f"[audit] embedded thinking reward model: building/reusing it in {cache}", file=sys.stderr)
    try:
        model_dir = make_embedded_trm(cache, progress=lambda line: log(f"[audit] {line}",
                                                                                         file=sys.stderr)).model_dir
    except OSError as exc:
        raise AuditError(f"--cache-dir {cache}: cannot build the embedded thinking reward model there "
                         f"({exc.strerror or exc})") from None
    log("[audit] starting its OpenAI-compatible server on 127.0.0.1 (transformers serve)", file=sys.stderr)
    with LocalOpenAIServer(model_dir, progress=lambda line: log(f"[audit] {line}", file=sys.stderr)) as server:
        yield {"base_url": server.base_url, "model": server.model, "embedded": True}


def trm_client(endpoint: dict, settings: AuditSettings, *, api_key: str | None, max_concurrency: int | None,
               log=print):
    """The thinking reward client training uses, on ``endpoint``, with the audit's reward options; a given
    endpoint is checked first (:func:`check_endpoint`), through that client.

    ``max_concurrency`` None: :data:`EMBEDDED_CONCURRENCY` for the embedded TRM, else :data:`REMOTE_CONCURRENCY`.
    """
    from sophiavl_verl.thinking_reward import ThinkingRewardClient

    if max_concurrency is None:
        max_concurrency = EMBEDDED_CONCURRENCY if endpoint["embedded"] else REMOTE_CONCURRENCY
    options = dataclasses.replace(settings.reward, max_concurrency=max_concurrency)
    try:
        client = ThinkingRewardClient(endpoint["base_url"], endpoint["model"], options, api_key=api_key)
    except ValueError as exc:  # the other options are checked by then: the URL (its message never echoes it)
        raise AuditError(f"--trm-url: {exc}") from None
    if not endpoint["embedded"]:
        served = check_endpoint(client)
        if served and client.model not in served:
            log(f"warning: {client.base_url} lists models {served}, not {client.model!r}; requests may fail",
                file=sys.stderr)
    return client


# ------------------------------------------------------------------------------------------ the checkpoint

#: The thinking rewards obtained so far, in ``--out`` until the report holds them (:class:`ScoreCheckpoint`).
CHECKPOINT_NAME = "trm_scores.jsonl"
_CHECKPOINT_HEADER = {"format": "sophiavl-verl audit thinking rewards", "version": 1}


def request_key(item, client) -> str:
    """What identifies a thinking reward request: a SHA-256 of everything that shapes it.

    The model name, the request layout (``prompt``, ``max_tokens``, ``max_image_pixels``), the question, the
    response and each image's bytes (a file's content, not its name; a URL as written). The server's address
    is not part of it: the embedded TRM gets a new port every run.
    """
    digest = hashlib.sha256()
    layout = {"model": client.model, "prompt": client.options.trm_prompt, "max_tokens": client.max_tokens,
              "max_image_pixels": client.options.max_image_pixels, "question": item.question, "response": item.response}
    digest.update(json.dumps(layout, sort_keys=True, ensure_ascii=True).encode())
    for image in item.images:
        data = Path(image).read_bytes() if isinstance(image, Path) else image
        kind = b"url" if isinstance(data, str) else b"bytes"
        data = data.encode() if isinstance(data, str) else bytes(data)
        digest.update(b"\0%s:%d:" % (kind, len(data)) + hashlib.sha256(data).digest())
    return digest.hexdigest()


class ScoreCheckpoint:
    """The thinking rewards this ``--out`` has obtained, kept across an interrupted audit (``trm_scores.jsonl``).

    Each group's scores are appended as its requests complete, one line ``{"key", "thinking_reward"}`` per
    scored response (:func:`request_key`), each line written whole by one ``write`` to a file opened for
    appending: Ctrl-C, SIGTERM or a closed terminal lose at most the requests in flight. The same command on
    the same ``--out`` reads it back, checked line by line, and asks the TRM only for the rest. Failed
    requests are not kept (they are asked again). The file is removed once ``report.json`` holds every score.

    Args:
        path: The file (``<out>/trm_scores.jsonl``).

    Raises:
        AuditError: If the file exists but is not such a checkpoint, naming the file and line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._has_header = False  # the file starts with its header line (a cut-off one is dropped on reading)
        self.scores: dict[str, float] = self._read() if path.exists() else {}
        self.loaded = len(self.scores)  # read back from an interrupted run
        self.reused = 0  # responses of this run scored from them, not asked again

    def _read(self) -> dict[str, float]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditError(f"{self.path}: cannot read the saved thinking rewards ({exc}); delete it to score "
                             "every response again") from None
        lines = text.split("\n")
        torn = lines.pop()  # after the last newline: empty, or a line whose write was cut off (never a score)
        if torn:
            os.truncate(self.path, len(text.encode()) - len(torn.encode()))
        self._has_header = bool(lines)
        scores: dict[str, float] = {}
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if number == 1:
                valid = entry == _CHECKPOINT_HEADER
            else:
                valid = (isinstance(entry, dict) and set(entry) == {"key", "thinking_reward"}
                         and isinstance(entry["key"], str) and re.fullmatch(r"[0-9a-f]{64}", entry["key"]) is not None
                         and type(entry["thinking_reward"]) in (int, float) and 0 <= entry["thinking_reward"] <= 1)
            if not valid:
                raise AuditError(f"{self.path}:{number}: not a line of the audit's saved thinking rewards; delete "
                                 "the file to score every response again", path=str(self.path), row=number)
            if number > 1:
                scores[entry["key"]] = float(entry["thinking_reward"])
        return scores

    def add(self, scored: Sequence[tuple[str, float]]) -> None:
        """Keep ``(request key, score)`` pairs (finite scores only), appended to the file at once."""
        new = [(key, score) for key, score in scored if math.isfinite(score) and key not in self.scores]
        if not new:
            return
        lines = [json.dumps(_CHECKPOINT_HEADER)] * (not self._has_header)
        lines += [json.dumps({"key": key, "thinking_reward": score}) for key, score in new]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)
        self._has_header = True
        self.scores.update(new)

    def remove(self) -> None:
        """Delete the file: the report holds every score now."""
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ scoring


def outcome_rewards(groups: Sequence[Group], settings: AuditSettings) -> list[tuple[list[float], list[bool]]]:
    """R^o and the format check of every response (the plugin's reward functions)."""
    from sophiavl_verl.rewards import format_reward, outcome_reward

    out = []
    for g in groups:
        try:
            ro = [float(outcome_reward(g.problem_type, r, g.ground_truth,
                                       require_format=settings.reward.require_format)) for r in g.responses]
        except ValueError as exc:
            raise AuditError(f"{g.source}: cannot compute the outcome reward: {exc}") from None
        out.append((ro, [format_reward(r) == 1.0 for r in g.responses]))
    return out


async def score_groups(
    groups: Sequence[Group],
    outcomes: Sequence[list[float]],
    client,
    settings: AuditSettings,
    *,
    checkpoint: ScoreCheckpoint | None = None,
    progress: bool = True,
) -> list[tuple[list[float], list[str]]]:
    """Thinking rewards of every response through ``client`` (a ``ThinkingRewardClient``), with a progress bar.

    Which responses are sent is the reward manager's rule (:func:`~sophiavl_verl.query_policy.thinking_reward_decision`
    under ``settings.reward.query_policy``; a group's outcomes are all known here). Per response: ``scored``,
    ``failed`` (the request failed: NaN) or ``skipped`` (not sent: NaN, or 0 where the policy gives 0), the
    statuses training records. Groups are sent concurrently (the client bounds the requests in flight).
    With a ``checkpoint``, a response it holds a score for is not sent again, and each group's new scores are
    added to it as they arrive.
    """
    from tqdm import tqdm

    from sophiavl_verl.query_policy import thinking_reward_decision
    from sophiavl_verl.thinking_reward import ThinkingRewardItem

    policy, threshold = settings.reward.query_policy, settings.trust_grpo.correct_threshold
    results: list[tuple[list[float], list[str]]] = []
    asked: list[tuple[int, list[int]]] = []  # (group, the responses sent to the TRM)
    for i, ro in enumerate(outcomes):
        decisions = [thinking_reward_decision(policy, o, ro, threshold) for o in ro]
        results.append(([0.0 if d == "zero" else math.nan for d in decisions], ["skipped"] * len(ro)))
        sent = [j for j, d in enumerate(decisions) if d == "query"]
        if sent:
            asked.append((i, sent))
    bar = tqdm(total=sum(len(sent) for _, sent in asked), desc="thinking rewards", unit="resp",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    slots = asyncio.Semaphore(max(1, client.options.max_concurrency // max(1, max(len(g.responses) for g in groups))))

    saved = checkpoint.scores if checkpoint is not None else {}

    async def one(i: int, sent: list[int]) -> None:
        g = groups[i]
        items = [ThinkingRewardItem(question=g.question, response=g.responses[j], images=tuple(g.images)) for j in sent]
        keys = [request_key(item, client) for item in items]
        ask = [n for n, key in enumerate(keys) if key not in saved]
        scores = [saved.get(key, math.nan) for key in keys]
        if checkpoint is not None:
            checkpoint.reused += len(keys) - len(ask)
        if ask:
            async with slots:
                for n, score in zip(ask, await client.score([items[n] for n in ask]), strict=True):
                    scores[n] = float(score)
            if checkpoint is not None:
                checkpoint.add([(keys[n], scores[n]) for n in ask])
        thinking, status = results[i]
        for j, score in zip(sent, scores, strict=True):
            thinking[j] = float(score)
            status[j] = "scored" if math.isfinite(thinking[j]) else "failed"
        bar.update(len(items))
        bar.set_postfix(failed=client.stats.failed, refresh=False)

    # The client warns once per failing call; the report counts failures, so keep the bar readable.
    client_logger = logging.getLogger("sophiavl_verl.thinking_reward")
    level = client_logger.level
    client_logger.setLevel(logging.ERROR)
    try:
        await asyncio.gather(*(one(i, sent) for i, sent in asked))
    finally:
        client_logger.setLevel(level)
        bar.close()
    return results


# ------------------------------------------------------------------------------------------ Trust-GRPO


@dataclass
class GroupResult:
    """One group's scores and what Trust-GRPO makes of them (NaN = missing thinking reward).

    The per-group statistics are the core's (:class:`sophiavl_verl.trust_grpo.GroupTrust`), read, not recomputed.
    """

    group: Group
    outcome: list[float]
    format_ok: list[bool]
    thinking: list[float]
    status: list[str]  # "scored" | "failed" | "skipped"
    step: int = 1
    correct: list[bool] = field(default_factory=list)  # R^o >= correct_threshold
    anneal: float = 1.0
    reward: list[float] = field(default_factory=list)  # R_i of Eq. 5
    thinking_term: list[float] = field(default_factory=list)  # γ·α·anneal·R^t (0 where R^t is missing)
    gamma: float = math.nan  # the multiplier applied to the group's thinking rewards (0 for a skipped group)
    mixed: bool = False  # a scored correct and a scored wrong response
    mu_correct: float = math.nan
    mu_wrong: float = math.nan
    untrusted: bool = False  # γ < 1 (the core's rule, tie tolerance included)
    advantage: list[float] = field(default_factory=list)  # Eq. 6 of the rewards
    advantage_grpo: list[float] = field(default_factory=list)  # Eq. 6 of R^o alone: plain GRPO


def apply_trust_grpo(
    groups: Sequence[Group],
    outcomes: Sequence[tuple[list[float], list[bool]]],
    thinking: Sequence[tuple[list[float], list[str]]],
    settings: AuditSettings,
) -> list[GroupResult]:
    """γ, Eq. 5 rewards and Eq. 6 advantages of every group (Trust-GRPO and plain GRPO), as training computes them.

    One :func:`~sophiavl_verl.trust_grpo.trust_grpo_advantages` call per distinct training step (the
    annealing factor is per step), with R^o as verl's base score; plain GRPO's advantages are Eq. 6 of R^o.

    Args:
        groups: The groups, as read.
        outcomes: Per group, R^o and the format check of each response (:func:`outcome_rewards`).
        thinking: Per group, R^t and the TRM status of each response (:func:`score_groups`).
        settings: The options applied.
    """
    import torch

    from sophiavl_verl.trust_grpo import group_normalized_advantage, trust_grpo_advantages

    cfg = settings.trust_grpo
    results = [
        GroupResult(group=g, outcome=ro, format_ok=fmt_ok, thinking=rt, status=status,
                    step=settings.step if settings.step is not None else (g.step if g.step is not None else 1),
                    correct=[o >= cfg.correct_threshold for o in ro])
        for g, (ro, fmt_ok), (rt, status) in zip(groups, outcomes, thinking, strict=True)
    ]
    by_step: dict[int, list[GroupResult]] = {}
    for res in results:
        by_step.setdefault(res.step, []).append(res)
    for step, members in sorted(by_step.items()):
        anneal = settings.anneal(step)
        outcome = torch.tensor([x for res in members for x in res.outcome], dtype=torch.float64)
        index = np.array([n for n, res in enumerate(members) for _ in res.outcome])  # group n is members[n]
        mask = torch.ones(len(index), 1)
        out = trust_grpo_advantages(outcome, outcome, [x for res in members for x in res.thinking], mask, index,
                                    config=cfg, anneal=anneal, norm_by_std=settings.norm_by_std)
        grpo, _ = group_normalized_advantage(outcome, mask, index, norm_by_std=settings.norm_by_std,
                                             epsilon=cfg.epsilon)
        pos = 0
        for n, res in enumerate(members):
            rows = slice(pos, pos + len(res.outcome))
            pos = rows.stop
            res.anneal = anneal
            res.reward = out.rewards[rows].tolist()
            res.thinking_term = out.thinking_term[rows].tolist()
            res.advantage = out.advantages[rows, 0].tolist()
            res.advantage_grpo = grpo[rows, 0].tolist()
            res.gamma = float(out.trust.gamma[n])
            res.mixed = bool(out.trust.mixed[n])
            res.mu_correct = float(out.trust.mu_correct[n])
            res.mu_wrong = float(out.trust.mu_wrong[n])
            res.untrusted = bool(out.trust.untrusted[n])
    return results
