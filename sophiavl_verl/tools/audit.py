"""``sophiavl-verl audit``: what Trust-GRPO would make of your rollouts, before you spend GPU hours.

For every group of responses to one prompt the audit computes, with the very functions the verl plugin
trains with:

* the outcome rewards R^o (:func:`sophiavl_verl.rewards.outcome_reward`);
* the thinking rewards R^t from a thinking reward model (TRM) behind an OpenAI-compatible API, through
  :class:`sophiavl_verl.thinking_reward.ThinkingRewardClient` (a failed item is NaN, reported as a
  failure, never as 0);
* γ and the Eq. 5 rewards (:func:`sophiavl_verl.trust_grpo.trust_weighted_rewards`, with the annealing
  factor of :func:`sophiavl_verl.annealing.get_schedule`) and the Eq. 6 advantages
  (:func:`sophiavl_verl.trust_grpo.group_normalized_advantage`), next to plain GRPO's advantages.

Inputs (see :func:`load_input`):

* a JSONL of groups: ``question``, ``images`` (paths relative to the file, or base64 / ``data:`` URLs),
  ``ground_truth``, ``problem_type``, ``responses`` (a list); optional ``id``, ``step``, and any other keys
  (kept as metadata);
* verl's rollout dumps, the ``<step>.jsonl`` files verl writes under ``trainer.rollout_data_dir`` (rows
  ``input``, ``output``, ``gts``, ``score``, ``step`` and extra keys such as ``uid``), a file or a folder of
  them. A dump has no images and no problem types: pass ``--problem-type``, and ``--dataset`` (the RL
  parquet/JSONL the run trained on) to recover both from the matching dataset row.

The report (``report.json``, ``report.md``, PNG plots) is written by :mod:`sophiavl_verl.tools.report` and
:mod:`sophiavl_verl.tools.plots`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sophiavl_verl.config import SophiaVLRewardConfig
from sophiavl_verl.errors import AuditError

__all__ = [
    "AuditError",
    "AuditSettings",
    "Group",
    "GroupResult",
    "EMBEDDED_SAMPLE",
    "default_cache_dir",
    "load_input",
    "question_from_prompt",
    "run_audit",
    "score_groups",
    "thinking_reward_endpoint",
]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
#: The sample audited when no input is given (made by ``scripts/make_embedded_sample.py``).
EMBEDDED_SAMPLE = EMBEDDED_DIR / "groups.jsonl"

# Keys of verl's rollout dump rows (verl/trainer/ppo/{ray_trainer.py,v1/trainer_base.py}: _write_generations).
DUMP_REQUIRED = ("input", "output", "gts")
# Extra keys a dump row may carry (e.g. put there by a custom reward function's extra info).
DUMP_TYPE_KEYS = ("problem_type", "ability")
DUMP_IMAGE_KEYS = ("images", "image", "image_path", "path")
QUERY_POLICIES = ("all", "skip_uniform")
#: Default TRM requests in flight: the embedded CPU server, and a server given by --trm-url.
EMBEDDED_CONCURRENCY = 1
REMOTE_CONCURRENCY = 16
#: Longest --timeout accepted (a day); larger values overflow timers deep in asyncio and aiohttp.
MAX_TIMEOUT_S = 86400.0


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuditSettings:
    """The Trust-GRPO settings the audit applies (the CLI flag of each in brackets).

    Args:
        alpha: α of Eq. 5 [``--alpha``].
        schedule: Annealing schedule name [``--schedule``].
        step: Global training step for the annealing factor [``--step``]. ``None``: the ``step`` of each
            dump row / group, else 1 (verl's first training step).
        anneal_steps: T of the schedule [``--anneal-steps``].
        correct_threshold: R^o at or above this is correct [``--correct-threshold``].
        uniform_groups: ``skip`` or ``trust`` for groups that are not mixed [``--uniform-groups``].
        use_trust_weight: False forces γ = 1 (the "w/o trust weight" ablation) [``--no-trust-weight``].
        epsilon: Std epsilon of Eq. 6 [``--epsilon``].
        norm_by_std: Divide advantages by the group std, verl's ``norm_adv_by_std_in_grpo``
            [``--no-norm-by-std``].
        require_format: Outcome reward 0 without the ``<think>``/``<answer>`` format [``--no-require-format``].
        query_policy: ``all`` responses go to the TRM, or ``skip_uniform``: not those of groups whose
            outcomes are all correct or all wrong [``--query-policy``].
    """

    alpha: float = 0.3
    schedule: str = "exp"
    step: int | None = None
    anneal_steps: int = 1500
    correct_threshold: float = 0.5
    uniform_groups: str = "skip"
    use_trust_weight: bool = True
    epsilon: float = 1e-6
    norm_by_std: bool = True
    require_format: bool = True
    query_policy: str = "all"

    def validate(self) -> None:
        """Check every value with the plugin's own validation (``TrustGRPOConfig``).

        Raises:
            AuditError: Naming the command-line flag at fault.
        """
        from sophiavl_verl.config import ConfigError, TrustGRPOConfig

        try:
            TrustGRPOConfig(
                alpha=self.alpha,
                schedule=self.schedule,
                anneal_steps=self.anneal_steps,
                correct_threshold=self.correct_threshold,
                uniform_groups=self.uniform_groups,
                use_trust_weight=self.use_trust_weight,
                epsilon=self.epsilon,
                _prefix="audit",
            )
        except ConfigError as exc:
            # "audit.anneal_steps must ..." -> "--anneal-steps must ..."
            message = re.sub(r"audit\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
            raise AuditError(message) from None
        if self.step is not None and self.step < 0:
            raise AuditError(f"--step must be >= 0, got {self.step}")
        if self.query_policy not in QUERY_POLICIES:
            raise AuditError(f"--query-policy must be one of {QUERY_POLICIES}, got {self.query_policy!r}")

    def anneal(self, step: int) -> float:
        """The annealing factor at ``step`` (the plugin's schedule function)."""
        from sophiavl_verl.annealing import get_schedule

        return float(get_schedule(self.schedule)(step, self.anneal_steps))


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class Group:
    """The responses to one prompt, as read from the input.

    Attributes:
        source: ``file:line`` (or ``file:lines a-b``) of the input rows.
        question: The question text the TRM sees.
        images: Image references for the TRM: file paths, encoded bytes or ``data:`` URLs.
        image_refs: How the input named each image (for the report).
        ground_truth: Reference answer.
        problem_type: One of :data:`sophiavl_verl.rewards.PROBLEM_TYPES` (canonical spelling).
        responses: The decoded responses.
        id: The group's id (the ``id`` key, a dump's prompt uid, or ``g<n>``).
        step: Training step of the rollout (dumps), else None.
        dump_scores: verl's ``score`` of each response (dumps), else None.
        meta: Other keys of the input (kept in the report).
    """

    source: str
    question: str
    images: list = field(default_factory=list)
    image_refs: list[str] = field(default_factory=list)
    ground_truth: str = ""
    problem_type: str = ""
    responses: list[str] = field(default_factory=list)
    id: str = ""
    step: int | None = None
    dump_scores: list | None = None
    meta: dict = field(default_factory=dict)


def _where(path: Path, line: int | Sequence[int]) -> str:
    if isinstance(line, int):
        return f"{path}:{line}"
    lines = sorted(set(line))
    return f"{path}:{lines[0]}" if len(lines) == 1 else f"{path}:lines {lines[0]}-{lines[-1]}"


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line; errors name the file and line."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise AuditError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, _without_lone_surrogates(obj)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """JSON may escape half of a UTF-16 pair ("\\ud800"), which no UTF-8 file can hold: U+FFFD instead."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _canonical_type(value: Any, where: str, flag_hint: str = "") -> str:
    from sophiavl_verl.rewards import canonical_problem_type

    try:
        return canonical_problem_type(value)
    except ValueError as exc:
        raise AuditError(f"{where}: {exc}{flag_hint}") from None


def _decode_base64_image(text: str) -> bytes | None:
    """Bytes of a ``data:`` URL or of a bare base64 string that decodes to an image; else None."""
    if text.startswith("data:"):
        head, _, payload = text.partition(",")
        if ";base64" not in head:
            return None
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            return None
    if len(text) < 64 or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", text[:4096]):
        return None
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _resolve_image(ref: Any, base: Path, where: str, allow_outside_root: bool) -> tuple[Any, str]:
    """An input image reference -> (what the TRM client gets, how the report names it).

    Files and embedded images pass data preparation's guard (:class:`sophiavl_verl.tools.data.ImageGuard`: confined
    to ``base`` unless ``allow_outside_root``, size checked before reading, fully decoded under Pillow's
    decompression-bomb limit).
    """
    from sophiavl_verl.tools.data import ImageError, ImageGuard

    guard = ImageGuard(base, allow_outside_root=allow_outside_root)

    def check(source: bytes | Path, name: str) -> None:
        try:
            guard.read(source)
        except ImageError as exc:
            hint = " (pass --allow-outside-image-root to read it)" if exc.kind == "outside_root" else ""
            raise AuditError(f"{where}: image {_short(name)!r} cannot be read: {exc.reason}{hint}") from None

    if isinstance(ref, dict):  # verl / HF datasets style {"bytes": ..., "path": ...} or {"image": path}
        if ref.get("bytes"):
            ref = ref["bytes"]
        else:
            ref = ref.get("path") or ref.get("image") or ref.get("url")
    if isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
        check(data, "<bytes>")
        return data, f"<{len(data)} bytes>"
    if not isinstance(ref, str) or not ref:
        raise AuditError(f"{where}: image entry {ref!r} is neither a path nor base64 data")
    if ref.startswith(("http://", "https://")):
        return ref, ref  # left to the TRM server to fetch
    data = _decode_base64_image(ref)
    if data is not None:
        check(data, "<base64>")
        return data, "<base64 image>"
    path = Path(ref).expanduser()
    check(path, ref)
    return base / path, ref


def load_groups_file(
    path: Path,
    *,
    problem_type: str | None = None,
    image_root: Path | None = None,
    allow_outside_image_root: bool = False,
) -> list[Group]:
    """Read a JSONL of groups (``question``, ``images``, ``ground_truth``, ``problem_type``, ``responses``).

    Args:
        path: The file.
        problem_type: Default for rows without ``problem_type``.
        image_root: Folder relative image paths are resolved against (default: the file's folder); image
            files outside it are refused unless ``allow_outside_image_root``.

    Raises:
        AuditError: On a missing or bad field, a group of fewer than two responses, or an unreadable
            image, naming the file and line.
    """
    base = image_root or path.parent
    groups = []
    for number, row in _read_jsonl(path):
        where = _where(path, number)
        for key in ("question", "ground_truth", "responses"):
            if key not in row:
                raise AuditError(f"{where}: missing field {key!r} (a group needs question, ground_truth, responses)")
        responses = row["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise AuditError(f"{where}: 'responses' must be a list of strings")
        if len(responses) < 2:
            raise AuditError(
                f"{where}: a group of {len(responses)} response(s); GRPO compares responses to the same prompt, "
                "so a group needs at least 2"
            )
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise AuditError(f"{where}: 'question' must be a non-empty string")
        gt = row["ground_truth"]
        if isinstance(gt, (int, float)) and not isinstance(gt, bool):
            gt = str(gt)
        if not isinstance(gt, str) or not gt.strip():
            raise AuditError(f"{where}: 'ground_truth' must be a non-empty string")
        raw_type = row.get("problem_type", problem_type)
        if raw_type is None:
            raise AuditError(f"{where}: missing field 'problem_type' (or pass --problem-type)")
        ptype = _canonical_type(raw_type, where)
        raw_images = row.get("images", row.get("image")) or []
        if isinstance(raw_images, (str, dict)):
            raw_images = [raw_images]
        images, refs = [], []
        for ref in raw_images:
            image, name = _resolve_image(ref, base, where, allow_outside_image_root)
            images.append(image)
            refs.append(name)
        known = {"question", "ground_truth", "responses", "problem_type", "images", "image", "id", "step"}
        groups.append(
            Group(
                source=where,
                question=row["question"],
                images=images,
                image_refs=refs,
                ground_truth=gt,
                problem_type=ptype,
                responses=list(responses),
                id=str(row.get("id", f"g{len(groups)}")),
                step=_int_or_none(row.get("step"), where, "step"),
                meta={k: v for k, v in row.items() if k not in known},
            )
        )
    if not groups:
        raise AuditError(f"{path}: no groups in the file")
    return groups


def _int_or_none(value: Any, where: str, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise AuditError(f"{where}: {key!r} must be an integer, got {value!r}")
    return int(value)


# Decoded chat prompts (skip_special_tokens=True drops <|im_start|>, <|im_end|> and the vision tokens):
# "system\n<system prompt>\nuser\n<user content>\nassistant\n".
_CHAT_RE = re.compile(r"(?:^|\n)user\n(?P<user>.*)\nassistant\s*$", re.DOTALL)


def _user_content(text: str) -> str:
    """The last user turn of a decoded chat prompt (the whole text when it is not one)."""
    match = None
    for match in _CHAT_RE.finditer(text):
        pass
    user = match.group("user") if match else text
    return user.rsplit("\nuser\n", 1)[1] if "\nuser\n" in user else user


def question_from_prompt(text: str) -> str:
    """The question inside a verl rollout dump's ``input`` (the decoded chat prompt).

    Takes the last user turn of a ChatML-style prompt decoded without special tokens, then drops the
    reasoning instructions of this package's RL prompt (:data:`sophiavl_verl.tools.data.QUESTION_TEMPLATE`) if
    they are there. Text in another shape is returned stripped, unchanged.
    """
    from sophiavl_verl.tools.data import QUESTION_TEMPLATE

    user = _user_content(text)
    instructions = QUESTION_TEMPLATE.split("{Question}", 1)[1].strip().split(".")[0]
    if instructions and instructions in user:
        user = user.split(instructions, 1)[0]
    return user.replace("<image>", "").strip()


def _normalize(text: str) -> str:
    return " ".join(text.replace("<image>", " ").split())


class _DatasetIndex:
    """The RL dataset a run trained on, indexed by prompt text, to give dump rows their images and types."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:
                raise AuditError(f"{path}: cannot read the dataset parquet: {exc}") from None
            records = table.to_pylist()
            numbered = [(i + 1, r) for i, r in enumerate(records)]
        else:
            numbered = list(_read_jsonl(path))
        for number, row in numbered:
            prompt = row.get("prompt")
            if isinstance(prompt, list) and prompt:
                users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
                content = (users or prompt)[-1].get("content", "")
            else:
                content = prompt if isinstance(prompt, str) else ""
            if isinstance(content, list):  # multimodal content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not content:
                continue
            self.rows.setdefault(_normalize(content), {"row": row, "line": number})
        if not self.rows:
            raise AuditError(f"{path}: no rows with a 'prompt' (the verl RL dataset format) in the dataset")

    def find(self, prompt_text: str) -> dict | None:
        return self.rows.get(_normalize(prompt_text))


def _dump_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"), key=lambda p: (int(p.stem) if p.stem.isdigit() else math.inf, p.name))
        if not files:
            raise AuditError(f"{path}: no *.jsonl rollout dumps in this folder")
        return files
    return [path]


def load_verl_dump(
    path: Path,
    *,
    problem_type: str | None = None,
    image_root: Path | None = None,
    dataset: Path | None = None,
    raw_prompt: bool = False,
    allow_outside_image_root: bool = False,
) -> tuple[list[Group], dict]:
    """Read verl rollout dumps and group the responses by prompt.

    Rows of one prompt are found by their ``uid`` (v1 trainer: ``{uid}_{session}_{index}``; only the final
    output of each session counts, as in verl's GRPO) or, without a ``uid``, by identical ``input`` text
    within one step.

    Args:
        path: A ``<step>.jsonl`` dump or a folder of them.
        problem_type: Problem type of rows that do not carry one (dumps normally do not).
        image_root: Folder for relative image paths found in rows or in the dataset (default: the dump's or
            the dataset's folder); image files outside it are refused unless ``allow_outside_image_root``.
        dataset: The RL dataset (parquet or JSONL, verl format) to recover images, problem type and the
            clean question from, by matching the prompt text.
        raw_prompt: Send the whole decoded ``input`` to the TRM instead of the extracted question.

    Returns:
        The groups, and facts about the dump for the report (rows, matched rows, what was missing).

    Raises:
        AuditError: On a missing field, an unknown problem type, a group of one, an unreadable image,
            naming the file and line.
    """
    index = _DatasetIndex(dataset) if dataset else None
    info = {"files": [], "rows": 0, "dataset": str(dataset) if dataset else None, "dataset_matched_groups": 0,
            "groups_without_images": 0, "uid_format": None, "raw_prompt": raw_prompt}
    groups: list[Group] = []
    for file in _dump_files(path):
        info["files"].append(str(file))
        buckets: dict[tuple, dict] = {}
        for number, row in _read_jsonl(file):
            info["rows"] += 1
            where = _where(file, number)
            missing = [k for k in DUMP_REQUIRED if k not in row]
            if missing:
                raise AuditError(
                    f"{where}: missing field {missing[0]!r}; verl rollout dump rows carry "
                    f"{', '.join(DUMP_REQUIRED)}, score, step (is this a verl rollout dump?)"
                )
            for key in ("input", "output"):
                if not isinstance(row[key], str):
                    raise AuditError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
            step = _int_or_none(row.get("step"), where, "step")
            uid = row.get("uid")
            session, order = None, 0
            if isinstance(uid, str) and re.fullmatch(r".+_\d+_\d+", uid):
                prompt_uid, session, order = uid.rsplit("_", 2)
                order = int(order)
                key = (step, "uid", prompt_uid)
                info["uid_format"] = "{uid}_{session}_{index} (v1 trainer)"
            elif uid is not None:
                key = (step, "uid", str(uid))
                info["uid_format"] = info["uid_format"] or "uid"
            else:
                key = (step, "input", row["input"])
            bucket = buckets.setdefault(key, {"rows": {}, "lines": [], "step": step})
            # v1 multi-turn sessions: several outputs per session; the last index is the final one.
            slot = session if session is not None else len(bucket["rows"])
            previous = bucket["rows"].get(slot)
            if previous is None or order >= previous[0]:
                bucket["rows"][slot] = (order, number, row)
            bucket["lines"].append(number)
        for key, bucket in buckets.items():
            rows = [bucket["rows"][s] for s in bucket["rows"]]
            where = _where(file, bucket["lines"])
            if len(rows) < 2:
                raise AuditError(
                    f"{where}: a group of 1 response (prompt {'uid ' + str(key[2]) if key[1] == 'uid' else 'text'}); "
                    "GRPO needs at least 2 responses per prompt (actor_rollout_ref.rollout.n >= 2)"
                )
            first = rows[0][2]
            gts = {json.dumps(r[2]["gts"], sort_keys=True, default=str) for r in rows}
            if len(gts) > 1:
                raise AuditError(f"{where}: responses of one prompt have different 'gts' values")
            gt = first["gts"]
            if isinstance(gt, dict):
                gt = gt.get("ground_truth", gt.get("answer"))
            if isinstance(gt, list) and len(gt) == 1:
                gt = gt[0]
            if isinstance(gt, (int, float)) and not isinstance(gt, bool):
                gt = str(gt)
            if not isinstance(gt, str) or not gt.strip():
                raise AuditError(
                    f"{_where(file, rows[0][1])}: 'gts' is {first['gts']!r}; the audit needs the ground truth "
                    "(verl writes null when the dataset row has no reward_model.ground_truth)"
                )
            match = index.find(_user_content(first["input"])) if index else None
            dataset_row = match["row"] if match else {}
            extra = dataset_row.get("extra_info") or {}
            raw_type = next((first[k] for k in DUMP_TYPE_KEYS if first.get(k)), None)
            raw_type = raw_type or extra.get("problem_type") or dataset_row.get("ability") or problem_type
            if raw_type is None:
                raise AuditError(
                    f"{where}: the dump does not say the problem type; pass --problem-type "
                    "(numerical, multiple choice, OCR, free-form) or --dataset"
                )
            ptype = _canonical_type(raw_type, where, " (pass --problem-type)")
            raw_images = next((first[k] for k in DUMP_IMAGE_KEYS if first.get(k)), None)
            base = image_root or file.parent
            if raw_images is None and dataset_row.get("images") is not None:
                raw_images = dataset_row["images"]
                base = image_root or Path(index.path).parent
            if isinstance(raw_images, (str, dict)):
                raw_images = [raw_images]
            images, refs = [], []
            for ref in raw_images or []:
                image, name = _resolve_image(ref, base, where, allow_outside_image_root)
                images.append(image)
                refs.append(name)
            if match:
                info["dataset_matched_groups"] += 1
            if not images:
                info["groups_without_images"] += 1
            if raw_prompt:
                question = first["input"]
            else:
                question = extra.get("question") or question_from_prompt(first["input"])
            groups.append(
                Group(
                    source=where,
                    question=question,
                    images=images,
                    image_refs=refs,
                    ground_truth=gt,
                    problem_type=ptype,
                    responses=[r[2]["output"] for r in rows],
                    id=str(key[2]) if key[1] == "uid" else f"step{bucket['step']}_g{len(groups)}",
                    step=bucket["step"],
                    dump_scores=[r[2].get("score") for r in rows],
                )
            )
    if not groups:
        raise AuditError(f"{path}: no rows in the rollout dump")
    return groups, info


def detect_format(path: Path) -> str:
    """``groups`` or ``verl_dump``, from the first row of the input (a folder is a dump folder)."""
    if path.is_dir():
        return "verl_dump"
    for number, row in _read_jsonl(path):
        if "responses" in row:
            return "groups"
        if "input" in row or "output" in row:
            return "verl_dump"
        raise AuditError(
            f"{path}:{number}: neither a group row (with 'responses') nor a verl rollout dump row "
            "(with 'input', 'output', 'gts')"
        )
    raise AuditError(f"{path}: the file is empty")


def load_input(
    path: str | os.PathLike | None = None,
    *,
    fmt: str = "auto",
    problem_type: str | None = None,
    image_root: str | os.PathLike | None = None,
    dataset: str | os.PathLike | None = None,
    raw_prompt: bool = False,
    allow_outside_image_root: bool = False,
) -> tuple[list[Group], dict]:
    """Load the groups to audit.

    Args:
        path: A groups JSONL, a verl rollout dump (file or folder), or None for the embedded sample.
        fmt: ``auto``, ``groups`` or ``verl_dump``.
        problem_type, image_root, dataset, raw_prompt, allow_outside_image_root: See :func:`load_verl_dump`.

    Returns:
        The groups and a description of the input for the report.
    """
    embedded = path is None
    source = EMBEDDED_SAMPLE if embedded else Path(path).expanduser()
    if not source.exists():
        raise AuditError(f"{source}: no such file or folder")
    if problem_type is not None:
        problem_type = _canonical_type(problem_type, "--problem-type")
    root = Path(image_root).expanduser() if image_root else None
    if root is not None and not root.is_dir():
        raise AuditError(f"--image-root {root}: not a folder")
    data = Path(dataset).expanduser() if dataset else None
    if data is not None and not data.is_file():
        raise AuditError(f"--dataset {data}: no such file")
    fmt = detect_format(source) if fmt == "auto" else fmt.replace("-", "_")
    if fmt == "groups":
        if data is not None:
            raise AuditError("--dataset only applies to verl rollout dumps")
        groups = load_groups_file(source, problem_type=problem_type, image_root=root,
                                  allow_outside_image_root=allow_outside_image_root)
        info: dict = {"files": [str(source)], "rows": len(groups)}
    elif fmt == "verl_dump":
        groups, info = load_verl_dump(source, problem_type=problem_type, image_root=root, dataset=data,
                                      raw_prompt=raw_prompt, allow_outside_image_root=allow_outside_image_root)
    else:
        raise AuditError(f"unknown input format {fmt!r} (auto, groups, verl-dump)")
    info = {"path": str(source), "format": fmt, "embedded_sample": embedded, **info}
    return groups, info


# ---------------------------------------------------------------------------------------- TRM endpoint


def default_cache_dir() -> Path:
    """Where the embedded TRM is built: ``$SOPHIAVL_VERL_CACHE``, else ``$XDG_CACHE_HOME/sophiavl_verl``."""
    if os.environ.get("SOPHIAVL_VERL_CACHE"):
        return Path(os.environ["SOPHIAVL_VERL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sophiavl_verl"


def check_endpoint(base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 10.0) -> list[str]:
    """Fail fast when the TRM endpoint cannot be reached (``GET {base_url}/models``).

    Returns:
        The model ids the server lists (empty when it does not implement ``/models``).

    Raises:
        AuditError: When nothing answers at ``base_url``, or it refuses the API key.
    """
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise AuditError(
                f"thinking reward model at {base_url} refused the request ({exc.code} {exc.reason}); "
                "set the API key in the environment variable named by --trm-api-key-env"
            ) from None
        return []  # no /models route: the chat requests will tell
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AuditError(
            f"cannot reach the thinking reward model at {base_url} ({reason}); is the server running "
            "(e.g. `vllm serve <model> --port 8000`, then --trm-url http://host:8000/v1)?"
        ) from None
    data = body.get("data") if isinstance(body, dict) else None
    return [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []


@contextmanager
def thinking_reward_endpoint(
    trm_url: str | None,
    trm_model: str | None,
    *,
    cache_dir: str | os.PathLike | None = None,
    api_key: str | None = None,
    log=print,
) -> Iterator[dict]:
    """The TRM to score with: the given OpenAI-compatible endpoint, or the embedded tiny TRM served here.

    The embedded one is built (once, cached) by :func:`sophiavl_verl.tools.tiny_vl.make_embedded_trm` and served
    by :class:`sophiavl_verl.tools.local_server.LocalOpenAIServer` on 127.0.0.1; the server is stopped when the
    block exits, also on error or Ctrl-C.

    Yields:
        ``{"base_url", "model", "embedded"}``.
    """
    if trm_url:
        if not trm_url.startswith(("http://", "https://")):
            raise AuditError(f"--trm-url must be an http(s) URL like http://host:8000/v1, got {trm_url!r}")
        if not trm_model:
            raise AuditError("--trm-url needs --trm-model (the model name the server serves)")
        served = check_endpoint(trm_url, trm_model, api_key=api_key)
        if served and trm_model not in served:
            log(f"warning: {trm_url} lists models {served}, not {trm_model!r}; requests may fail", file=sys.stderr)
        yield {"base_url": trm_url, "model": trm_model, "embedded": False}
        return
    if trm_model:
        raise AuditError("--trm-model needs --trm-url (without both, the embedded tiny TRM is used)")
    from sophiavl_verl.tools.local_server import LocalOpenAIServer
    from sophiavl_verl.tools.tiny_vl import make_embedded_trm

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    log(f"[audit] embedded thinking reward model: building/reusing it in {cache / 'embedded_trm'}", file=sys.stderr)
    try:
        model_dir = make_embedded_trm(cache / "embedded_trm")
    except OSError as exc:
        raise AuditError(f"--cache-dir {cache}: cannot build the embedded thinking reward model there "
                         f"({exc.strerror or exc})") from None
    log("[audit] starting its OpenAI-compatible server on 127.0.0.1 (transformers serve)", file=sys.stderr)
    with LocalOpenAIServer(model_dir, progress=lambda line: log(f"[audit] {line}", file=sys.stderr)) as server:
        yield {"base_url": server.base_url, "model": server.model, "embedded": True}


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class GroupResult:
    """Per-response scores of one group (NaN = missing thinking reward)."""

    group: Group
    outcome: list[float]
    format_ok: list[bool]
    thinking: list[float]
    status: list[str]  # "scored" | "failed" | "skipped"
    step: int = 1
    anneal: float = 1.0
    reward: list[float] = field(default_factory=list)
    gamma: float = math.nan  # the multiplier applied to the group's thinking rewards (0 for a skipped group)
    mixed: bool = False  # a scored correct and a scored wrong response
    mu_correct: float = math.nan
    mu_wrong: float = math.nan
    untrusted: bool = False  # γ < 1 (trust_grpo.group_trust's rule, tie tolerance included)
    advantage: list[float] = field(default_factory=list)
    advantage_grpo: list[float] = field(default_factory=list)


def outcome_rewards(groups: Sequence[Group], settings: AuditSettings) -> list[tuple[list[float], list[bool]]]:
    """R^o and the format check of every response (the plugin's reward functions)."""
    from sophiavl_verl.rewards import format_reward, outcome_reward

    out = []
    for g in groups:
        try:
            ro = [float(outcome_reward(g.problem_type, r, g.ground_truth, require_format=settings.require_format))
                  for r in g.responses]
        except ValueError as exc:
            raise AuditError(f"{g.source}: cannot compute the outcome reward: {exc}") from None
        out.append((ro, [format_reward(r) == 1.0 for r in g.responses]))
    return out


def _to_query(outcome: list[float], settings: AuditSettings) -> bool:
    if settings.query_policy == "all":
        return True
    correct = [r >= settings.correct_threshold for r in outcome]
    return any(correct) and not all(correct)


async def score_groups(
    groups: Sequence[Group],
    outcomes: Sequence[list[float]],
    client,
    settings: AuditSettings,
    *,
    progress: bool = True,
) -> list[tuple[list[float], list[str]]]:
    """Thinking rewards of every response through ``client`` (a ``ThinkingRewardClient``), with a progress bar.

    Groups are sent concurrently (the client bounds the requests in flight per call); a response that is
    not sent under the query policy is ``skipped`` (NaN), one whose request failed is ``failed`` (NaN).
    """
    from tqdm import tqdm

    from sophiavl_verl.thinking_reward import ThinkingRewardItem

    results: list[tuple[list[float], list[str]] | None] = [None] * len(groups)
    todo = []
    for i, (g, ro) in enumerate(zip(groups, outcomes, strict=True)):
        if _to_query(ro, settings):
            todo.append(i)
        else:
            results[i] = ([math.nan] * len(g.responses), ["skipped"] * len(g.responses))
    total = sum(len(groups[i].responses) for i in todo)
    bar = tqdm(total=total, desc="thinking rewards", unit="resp", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    slots = asyncio.Semaphore(max(1, client.max_concurrency // max(1, max(len(g.responses) for g in groups))))

    async def one(i: int) -> None:
        g = groups[i]
        items = [ThinkingRewardItem(question=g.question, response=r, images=tuple(g.images)) for r in g.responses]
        async with slots:
            scores = await client.score(items)
        values = [float(s) for s in scores]
        results[i] = (values, ["scored" if math.isfinite(v) else "failed" for v in values])
        failed = client.stats.failed
        bar.update(len(items))
        bar.set_postfix(failed=failed, refresh=False)

    # The client warns once per failing call; the report counts failures, so keep the bar readable.
    client_logger = logging.getLogger("sophiavl_verl.thinking_reward")
    level = client_logger.level
    client_logger.setLevel(logging.ERROR)
    try:
        await asyncio.gather(*(one(i) for i in todo))
    finally:
        client_logger.setLevel(level)
        bar.close()
    return results  # type: ignore[return-value]


def apply_trust_grpo(results: list[GroupResult], settings: AuditSettings) -> None:
    """γ, Eq. 5 rewards and Eq. 6 advantages (Trust-GRPO and plain GRPO) with the plugin's functions.

    One call per distinct training step (the annealing factor is per step); fills ``results`` in place.
    """
    import torch

    from sophiavl_verl.trust_grpo import group_normalized_advantage, group_trust, trust_weighted_rewards

    by_step: dict[int, list[int]] = {}
    for i, res in enumerate(results):
        by_step.setdefault(res.step, []).append(i)
    for step, members in sorted(by_step.items()):
        anneal = settings.anneal(step)
        outcome = torch.tensor([x for i in members for x in results[i].outcome], dtype=torch.float64)
        thinking = torch.tensor([x for i in members for x in results[i].thinking], dtype=torch.float64)
        index = np.array([n for n, i in enumerate(members) for _ in results[i].outcome])
        rule = {"correct_threshold": settings.correct_threshold, "uniform_groups": settings.uniform_groups,
                "use_trust_weight": settings.use_trust_weight}
        rewards, _ = trust_weighted_rewards(outcome, thinking, index, alpha=settings.alpha, anneal=anneal, **rule)
        trust = group_trust(outcome, thinking, index, **rule)  # group n of `index` is results[members[n]]
        mask = torch.ones(len(index), 1)
        kwargs = {"norm_by_std": settings.norm_by_std, "epsilon": settings.epsilon}
        adv, _ = group_normalized_advantage(rewards, mask, index, **kwargs)  # float32, as verl's GRPO
        adv_grpo, _ = group_normalized_advantage(outcome, mask, index, **kwargs)
        pos = 0
        for n_group, i in enumerate(members):
            res = results[i]
            n = len(res.outcome)
            res.anneal = anneal
            res.reward = rewards[pos : pos + n].tolist()
            res.gamma = float(trust.gamma[n_group])
            res.mixed = bool(trust.mixed[n_group])
            res.mu_correct = float(trust.mu_correct[n_group])
            res.mu_wrong = float(trust.mu_wrong[n_group])
            res.untrusted = bool(trust.untrusted[n_group])
            res.advantage = adv[pos : pos + n, 0].tolist()
            res.advantage_grpo = adv_grpo[pos : pos + n, 0].tolist()
            pos += n


def _client(endpoint: dict, *, api_key: str | None, max_concurrency: int, timeout_s: float, max_retries: int):
    from sophiavl_verl.thinking_reward import ThinkingRewardClient

    return ThinkingRewardClient(
        endpoint["base_url"],
        endpoint["model"],
        api_key=api_key,
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        max_retries=max_retries,
    )


def run_audit(
    input_path: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike = "audit_report",
    settings: AuditSettings | None = None,
    fmt: str = "auto",
    problem_type: str | None = None,
    image_root: str | os.PathLike | None = None,
    allow_outside_image_root: bool = False,
    dataset: str | os.PathLike | None = None,
    raw_prompt: bool = False,
    trm_url: str | None = None,
    trm_model: str | None = None,
    trm_api_key_env: str = SophiaVLRewardConfig.trm_api_key_env,
    cache_dir: str | os.PathLike | None = None,
    max_concurrency: int | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 3,
    limit: int | None = None,
    text_limit: int | None = 2000,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the whole audit and write the report folder.

    Returns:
        The report (the content of ``report.json``), with ``paths`` naming the files written.

    Raises:
        AuditError: On bad input or settings, an unreachable TRM, or when every TRM request failed (the
            report is still written in that case).
        PlotError: If matplotlib (the ``plot`` extra) is missing, before any work.
    """
    from sophiavl_verl.tools.plots import check_plotting, plot_audit
    from sophiavl_verl.tools.report import build_report, write_report

    settings = settings or AuditSettings()
    settings.validate()
    check_plotting()  # before any input is read or scored
    _check_run_options(max_concurrency=max_concurrency, timeout_s=timeout_s, max_retries=max_retries, limit=limit,
                       text_limit=text_limit)
    started = time.monotonic()
    with _report_folder(Path(out_dir)) as out:  # checked and locked before any input is read or scored
        groups, input_info = load_input(input_path, fmt=fmt, problem_type=problem_type, image_root=image_root,
                                        dataset=dataset, raw_prompt=raw_prompt,
                                        allow_outside_image_root=allow_outside_image_root)
        if limit is not None:
            groups = groups[:limit]
        outcomes = outcome_rewards(groups, settings)
        api_key = os.environ.get(trm_api_key_env) or None
        with thinking_reward_endpoint(trm_url, trm_model, cache_dir=cache_dir, api_key=api_key, log=log) as endpoint:
            if max_concurrency is None:
                # transformers serve runs each request's generate() in its own thread: on a small CPU, requests in
                # flight together oversubscribe the cores (2 cores: 256 responses took 64 s with 1 in flight, 113 s
                # with 2). A vLLM-style server batches concurrent requests instead.
                max_concurrency = EMBEDDED_CONCURRENCY if endpoint["embedded"] else REMOTE_CONCURRENCY
            client = _client(endpoint, api_key=api_key, max_concurrency=max_concurrency, timeout_s=timeout_s,
                             max_retries=max_retries)
            log(f"[audit] scoring {sum(len(g.responses) for g in groups)} responses of {len(groups)} groups with "
                f"{endpoint['model']} at {endpoint['base_url']}", file=sys.stderr)
            scoring_started = time.monotonic()
            thinking = asyncio.run(score_groups(groups, [o for o, _ in outcomes], client, settings,
                                                progress=progress))
            scoring_s = time.monotonic() - scoring_started
        trm_info = {
            "base_url": endpoint["base_url"],
            "model": endpoint["model"],
            "embedded": endpoint["embedded"],
            "stats": client.stats,
            "max_concurrency": client.max_concurrency,
            "scoring_wall_s": scoring_s,
        }
        try:
            results = [
                GroupResult(
                    group=g,
                    outcome=ro,
                    format_ok=fmt_ok,
                    thinking=rt,
                    status=status,
                    step=settings.step if settings.step is not None else (g.step if g.step is not None else 1),
                )
                for g, (ro, fmt_ok), (rt, status) in zip(groups, outcomes, thinking, strict=True)
            ]
            apply_trust_grpo(results, settings)
            report = build_report(results, settings=settings, input_info=input_info, trm_info=trm_info,
                                  text_limit=text_limit)
            report["wall_s"] = time.monotonic() - started
            paths = write_report(report, out)  # report.json (every score) first
        except Exception as exc:  # never lose the TRM's work to a failure after it
            raise AuditError(f"the report could not be written ({type(exc).__name__}: {exc}); "
                             f"{_save_scores(out, groups, outcomes, thinking)}") from None
        try:
            report["plots"] = {name: str(p.name) for name, p in plot_audit(report, out).items()}
            report["wall_s"] = time.monotonic() - started
            paths = write_report(report, out)
        except Exception as exc:
            raise AuditError(f"drawing the plots failed ({type(exc).__name__}: {exc}); every score is in "
                             f"{paths['json']} and the summary in {paths['markdown']}") from None
    report["paths"] = {k: str(v) for k, v in paths.items()}
    requested = report["trm"]["requested"]
    if requested and report["trm"]["failed"] == requested:
        kinds = ", ".join(f"{k}: {n}" for k, n in report["trm"]["failures"].items())
        raise AuditError(
            f"all {requested} thinking reward requests to {endpoint['base_url']} failed ({kinds}); "
            f"the report in {out} has no thinking rewards. Check --trm-model and the server's log."
        )
    return report


def _check_run_options(
    *, max_concurrency: int | None, timeout_s: float, max_retries: int, limit: int | None, text_limit: int | None
) -> None:
    """The run's numeric options, before any work; errors name the flag."""

    def whole(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    checks = (
        (max_concurrency is None or whole(max_concurrency, 1), "--max-concurrency", "an integer >= 1", max_concurrency),
        (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= MAX_TIMEOUT_S, "--timeout",
         f"a number of seconds > 0 and <= {MAX_TIMEOUT_S:.0f}", timeout_s),
        (whole(max_retries, 0), "--max-retries", "an integer >= 0", max_retries),
        (limit is None or whole(limit, 1), "--limit", "an integer >= 1", limit),
        (text_limit is None or whole(text_limit, 0), "--text-limit", "an integer >= 0 (0 = whole texts)", text_limit),
    )
    for ok, flag, what, value in checks:
        if not ok:
            raise AuditError(f"{flag} must be {what}, got {value!r}")


@contextmanager
def _report_folder(out: Path) -> Iterator[Path]:
    """``--out``, created if needed, checked writable and locked against a second audit, before any work.

    A folder this call created is removed again if the audit writes nothing into it.

    Raises:
        AuditError: If ``out`` is a file, cannot be created or written, or another audit is writing it.
    """
    import fcntl
    import tempfile

    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file; give a folder for the report")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_check_"):
            pass
        folder = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise AuditError(f"--out {out}: cannot write the report there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditError(f"--out {out} is being written by another sophiavl-verl audit; wait for it to finish "
                             "or choose another folder") from None
        try:
            yield out
        finally:
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty: nothing was written
    finally:
        os.close(folder)


def _save_scores(out: Path, groups: Sequence[Group], outcomes: Sequence[tuple], thinking: Sequence[tuple]) -> str:
    """Every response's R^o, R^t and TRM status as ``scores.json`` (ASCII JSON: any text can be written)."""
    from sophiavl_verl.tools.report import write_atomically

    rows = [
        {"id": g.id, "source": g.source, "responses": [
            {"outcome_reward": ro, "thinking_reward": rt if math.isfinite(rt) else None, "trm_status": status}
            for ro, rt, status in zip(outcome[0], scores[0], scores[1], strict=True)
        ]}
        for g, outcome, scores in zip(groups, outcomes, thinking, strict=True)
    ]
    try:
        return f"the scores are saved in {write_atomically(out / 'scores.json', json.dumps(rows, indent=1))}"
    except OSError as exc:
        return f"saving the scores in {out} failed too ({exc.strerror or exc})"
