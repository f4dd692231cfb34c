"""The audit's inputs: a JSONL of groups, or verl's rollout dumps, read into :class:`Group` s.

* A JSONL of groups: ``question``, ``images`` (paths relative to the file, or base64 / ``data:`` URLs),
  ``ground_truth``, ``problem_type``, ``responses`` (a list); optional ``id``, ``step``, and any other keys
  (kept as metadata).
* verl's rollout dumps, the ``<step>.jsonl`` files verl writes under ``trainer.rollout_data_dir`` (rows
  ``input``, ``output``, ``gts``, ``score``, ``step`` and extra keys such as ``uid``), a file or a folder of
  them. A dump has no images and no problem types: pass ``--problem-type``, and ``--dataset`` (the RL
  parquet/JSONL the run trained on) to recover both from the matching dataset row.

Every error is an :class:`~sophiavl_verl.errors.AuditError` naming the file and line (or the flag).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_verl.errors import AuditError

__all__ = ["EMBEDDED_SAMPLE", "Group", "detect_format", "load_groups_file", "load_input", "load_verl_dump",
           "question_from_prompt"]

#: The sample audited when no input is given (made by ``scripts/make_embedded_sample.py``).
EMBEDDED_SAMPLE = Path(__file__).resolve().parent.parent / "embedded" / "groups.jsonl"

# Keys of verl's rollout dump rows (verl/trainer/ppo/{ray_trainer.py,v1/trainer_base.py}: _write_generations).
DUMP_REQUIRED = ("input", "output", "gts")
# Extra keys a dump row may carry (e.g. put there by a custom reward function's extra info).
DUMP_TYPE_KEYS = ("problem_type", "ability")
DUMP_IMAGE_KEYS = ("images", "image", "image_path", "path")


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


def _read_jsonl(path: Path, checked: Collection[str] | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line; errors name the file and line (and field).

    A UTF-8 byte order mark is skipped; NaN, Infinity and -Infinity are refused, as data preparation does
    (:func:`sophiavl_verl.tools.data.finite_json`), in every field, or only in the ``checked`` top-level fields:
    verl's rollout dumps hold NaN where a column is missing (a thinking reward that failed), which the audit
    does not read.
    """
    from sophiavl_verl.tools.data import describe_field, finite_json, non_finite_at

    try:
        handle = open(path, encoding="utf-8-sig")
    except OSError as exc:
        raise AuditError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj, non_finite = finite_json(line)
            except json.JSONDecodeError as exc:
                raise AuditError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})", path=str(path),
                                 row=number) from None
            if non_finite is not None and checked is not None:  # only the checked fields must be finite
                non_finite = non_finite_at({name: obj[name] for name in checked if name in obj})
                obj = json.loads(line)  # the other fields keep Python's floats (nan, inf)
            if non_finite is not None:
                field_name = describe_field(non_finite[0])
                raise AuditError(f"{path}:{number}: {field_name} is {non_finite[1]}; JSON numbers must be finite",
                                 path=str(path), row=number, field=field_name)
            if not isinstance(obj, dict):
                raise AuditError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}", path=str(path),
                                 row=number)
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
        head, _, text = text.partition(",")
        if ";base64" not in head:
            return None
    elif len(text) < 64 or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", text[:4096]):
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
    matches = list(_CHAT_RE.finditer(text))
    user = matches[-1].group("user") if matches else text
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
        for number, row in _read_jsonl(file, checked=(*DUMP_REQUIRED, "step", "uid", "score")):
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
