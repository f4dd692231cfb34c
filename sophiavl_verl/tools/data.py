"""Data preparation for SophiaVL-R1 on verl; its command line is ``sophiavl-verl data {rl,trm} ...``.

``rl``
    SophiaVL-R1-130k rows (``problem``, ``solution``, ``path``, ``problem_type``, ``data_type``, optional
    ``options``) -> verl RL parquet (``data_source``, ``prompt``, ``images``, ``ability``, ``reward_model``,
    ``extra_info``), readable by ``verl.utils.dataset.rl_dataset.RLHFDataset``.
``trm``
    SophiaVL-R1-Thinking-156k-style rows (question, image path, response, score) -> verl SFT parquet
    (``messages``, ``images``) for the thinking reward model, readable by
    ``verl.utils.dataset.multiturn_sft_dataset.MultiTurnSFTDataset``.

Inputs are JSON lists, JSONL or parquet files, or a folder in the released Hugging Face layout (the data
file(s) next to image sub-folders; image paths are relative to ``--image-root``, by default the folder).
Images pass :class:`ImageGuard` (confined to the image root, size checked before reading, fully decoded with
Pillow's decompression-bomb guard on) and are embedded as ``{"bytes": ...}``. Options and input files are
checked before any image is read. Bad rows (a missing or wrong-typed field, a bad image, a repeated id) are
skipped and listed in ``<output stem>_rejected.jsonl`` (one JSON object a line: ``row``, ``file``, ``field``,
``reason``); ``--strict`` stops at the first one instead. Outputs appear only when the whole run succeeded.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from sophiavl_verl.config import DEFAULT_MAX_IMAGE_BYTES, SPLIT_KEY
from sophiavl_verl.errors import DataError, ImageError
from sophiavl_verl.rewards import PROBLEM_TYPES, canonical_problem_type, unwrap_answer

__all__ = [
    "QUESTION_TEMPLATE",
    "TYPE_TEMPLATE",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DataError",
    "ImageError",
    "ImageGuard",
    "Rejection",
    "Summary",
    "build_rl_prompt",
    "find_data_files",
    "finite_json",
    "non_finite_at",
    "prepare_rl",
    "prepare_trm",
]

# The RL prompt of the authors' training code (verl/utils/dataset.py of kxfan2002/SophiaVL-R1); the paper
# does not print it. Their inference script says "between the <think> and </think> tags"; we keep the
# wording the policy was trained with.
QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)
TYPE_TEMPLATE = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
    "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
    "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "text": " Please provide the short text answer within the <answer> </answer> tags.",
}
IMAGE_PLACEHOLDER = "<image>"  # what verl's datasets replace by the row's images, in order
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")

# Accepted column names, first match wins.
RL_FIELDS = {"question": ("problem",), "answer": ("solution",), "problem_type": ("problem_type",)}
TRM_FIELDS = {
    "question": ("question", "problem", "prompt"),
    "response": ("response", "reasoning", "process", "output"),
    "score": ("score", "reward", "label"),
}
IMAGE_FIELDS = ("path", "image", "images", "image_path")
#: Row id columns of ``rl`` input (SophiaVL-R1-130k has ``problem_id``); a repeated id is rejected.
ID_FIELDS = ("id", "problem_id")

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_IMAGES = pa.list_(pa.struct([("bytes", pa.binary())]))
RL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", _MESSAGES),
        ("images", _IMAGES),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("problem_type", pa.string()),
                    ("question", pa.string()),
                    ("index", pa.int64()),
                    ("data_type", pa.string()),
                    (SPLIT_KEY, pa.string()),
                ]
            ),
        ),
    ]
)
TRM_SCHEMA = pa.schema(
    [("messages", _MESSAGES), ("images", _IMAGES), ("extra_info", pa.struct([("index", pa.int64())]))]
)


@dataclass(frozen=True)
class Rejection:
    """One skipped row, as written to the rejected-rows report."""

    row: int
    file: str
    field: str
    reason: str


class _RowError(ValueError):
    """A bad row: the field to blame, why, and which image count it adds to (missing/unreadable/oversized)."""

    def __init__(self, field: str, reason: str, image_problem: str | None = None):
        super().__init__(reason)
        self.field, self.reason, self.image_problem = field, reason, image_problem


@dataclass
class Summary:
    """Counts of one run; :meth:`format` is what the CLI prints."""

    command: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_written: int = 0
    rows_val: int = 0
    per_type: Counter = field(default_factory=Counter)
    images_embedded: int = 0
    images_missing: int = 0
    images_unreadable: int = 0
    images_oversized: int = 0
    images_outside_root: int = 0
    skipped_files: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    report: str | None = None

    def count_image_problem(self, kind: str) -> None:
        attribute = f"images_{kind}"
        setattr(self, attribute, getattr(self, attribute) + 1)

    def format(self) -> str:
        lines = [f"sophiavl-verl data {self.command}: {self.rows_read} rows read from {len(self.files)} file(s)"]
        split = f" (train {self.rows_written - self.rows_val}, val {self.rows_val})" if self.rows_val else ""
        lines.append(f"  rows written: {self.rows_written}{split} -> {', '.join(self.outputs)}")
        if self.per_type:
            lines.append("  rows per problem type: " + ", ".join(f"{t} {self.per_type[t]}" for t in PROBLEM_TYPES))
        lines.append(
            f"  images: {self.images_embedded} embedded, {self.images_missing} missing, "
            f"{self.images_unreadable} unreadable, {self.images_oversized} oversized, "
            f"{self.images_outside_root} outside the image root"
        )
        if self.skipped_files:
            lines.append(f"  files skipped: {len(self.skipped_files)} ({'; '.join(self.skipped_files)})")
        by_field = Counter(r.field for r in self.rejected)
        detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(by_field.items()))})" if by_field else ""
        lines.append(f"  rows rejected: {len(self.rejected)}{detail} -> {self.report}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ reading


class _NonFinite:
    """Where JSON text had ``NaN``, ``Infinity`` or ``-Infinity`` (Python's json reads them, JSON has none)."""

    def __init__(self, text: str) -> None:
        self.text = text


def non_finite_at(value: Any) -> tuple[list[str | int], str] | None:
    """The field path (keys and list indexes) and text of the first :class:`_NonFinite` in ``value``."""
    if isinstance(value, _NonFinite):
        return [], value.text
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = non_finite_at(child)
        if found is not None:
            return [key, *found[0]], found[1]
    return None


def finite_json(text: str) -> tuple[Any, tuple[list[str | int], str] | None]:
    """Parse JSON text, and say where it holds a non-finite number.

    ``NaN``, ``Infinity`` and ``-Infinity`` are no JSON, yet Python's json turns them into floats, so a
    ``"solution": Infinity`` would become the ground truth ``"inf"``: data preparation and the audit refuse them.

    Returns:
        The value, and ``(field path, text)`` of the first non-finite number (e.g. ``(["solution"], "Infinity")``),
        else None. The path is what errors name; the value holds placeholders where it is not None.

    Raises:
        json.JSONDecodeError: If the text is not JSON.
    """
    seen = []
    value = json.loads(text, parse_constant=lambda name: seen.append(name) or _NonFinite(name))
    return value, non_finite_at(value) if seen else None


def describe_field(path: Sequence[str | int]) -> str:
    """``["options", 1]`` -> ``options[1]`` (how an error names a field of a JSON row)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".") or "the row"


def _rows_of(path: Path) -> tuple[int, Iterator[Any]]:
    """The number of rows of a data file and an iterator over them (parquet is streamed: it may embed images).

    Raises:
        DataError: If the file cannot be read or is not valid JSON / JSONL / parquet, naming the file and
            (for JSON) the line.
    """
    if path.suffix == ".parquet":
        try:
            source = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable parquet file: {exc}") from None
        return source.metadata.num_rows, _parquet_rows(path, source)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a UTF-8 byte order mark is no part of the JSON
            if path.suffix == ".jsonl":
                rows = [_json_text(path, line, number) for number, line in enumerate(f, 1) if line.strip()]
            else:
                rows = _json_text(path, f.read())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})", path=str(path),
                        row=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    return len(rows), iter(rows)


def _json_text(path: Path, text: str, line: int | None = None) -> Any:
    """The value of a JSON file's text, or of its JSONL ``line``; a non-finite number is an error naming the
    file, the line (JSONL) or row (a JSON list of rows), and the field.

    Raises:
        json.JSONDecodeError: From a JSON file (its line is in the error); a JSONL line's is a DataError.
        DataError: On a JSONL line that is not JSON, or a NaN / Infinity / -Infinity.
    """
    try:
        value, non_finite = finite_json(text)
    except json.JSONDecodeError as exc:
        if line is None:
            raise
        raise DataError(f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno})", path=str(path),
                        row=line) from None
    if non_finite is None:
        return value
    at, constant = non_finite
    where, row = (f"{path}:{line}", line) if line is not None else (str(path), None)
    if line is None and isinstance(value, list):
        where, row, at = f"{path}: row {at[0] + 1}", at[0] + 1, at[1:]
    field_name = describe_field(at)
    raise DataError(f"{where}: {field_name} is {constant}; JSON numbers must be finite", path=str(path), row=row,
                    field=field_name)


def _parquet_rows(path: Path, source: pq.ParquetFile) -> Iterator[dict]:
    try:
        for batch in source.iter_batches(batch_size=256):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read its rows: {exc}") from None


def _check_data_file(path: Path, fields: dict[str, tuple[str, ...]]) -> str | None:
    """Read a whole data file once (malformed JSON fails here, before any image is read).

    Returns:
        Why the file is not a table of rows (a JSON object, e.g. a dataset card's metadata), else None.

    Raises:
        DataError: If the file is unreadable, or its rows lack the expected columns (one alias of each).
    """
    if path.suffix == ".parquet":
        _rows_of(path)
        columns = set(pq.read_schema(path).names)
    else:
        try:
            _, rows = _rows_of(path)
        except DataError as exc:
            if "expected a JSON list of rows" in str(exc):
                return "a JSON object, not a list of rows"
            raise
        first = next(rows, None)
        if first is None:
            return None
        columns = set(first) if isinstance(first, dict) else set()
    missing = [aliases for aliases in fields.values() if not any(alias in columns for alias in aliases)]
    if missing:
        raise DataError(
            f"{path}: its rows lack the column(s) {', '.join('/'.join(a) for a in missing)} "
            f"(it has {', '.join(sorted(map(str, columns))) or 'no columns'}); pass the data files explicitly "
            "or move this one out of the folder"
        )
    return None


def find_data_files(
    path: str | os.PathLike, fields: dict[str, tuple[str, ...]], *, exclude: Sequence[Path] = ()
) -> tuple[list[Path], list[str]]:
    """The data files of an input, each read once to check it: the file itself, or the JSON/JSONL/parquet
    files under a folder.

    In a folder, hidden files, ``exclude`` (this run's own outputs) and JSON files that hold one object
    rather than rows (a dataset card's metadata) are skipped; each skip is returned, never silent.

    Returns:
        The data files, and one ``"<file> (<why>)"`` note per skipped file.

    Raises:
        DataError: If the path does not exist, a folder holds no data file, a data file is malformed
            (naming the file and line), or a folder's file has rows without the expected columns.
    """
    path = Path(path)
    if path.is_file():
        reason = _check_data_file(path, fields)
        if reason:
            raise DataError(f"{path}: {reason}")
        return [path], []
    if not path.is_dir():
        raise DataError(f"input not found: {path}")
    excluded = {p.resolve() for p in exclude}
    found, skipped = [], []
    for candidate in sorted(p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file()):
        if any(part.startswith(".") for part in candidate.relative_to(path).parts):
            continue
        if candidate.resolve() in excluded:
            skipped.append(f"{candidate} (an output of this run)")
            continue
        reason = _check_data_file(candidate, fields)
        if reason:
            skipped.append(f"{candidate} ({reason})")
            print(f"skipping {candidate}: {reason}", file=sys.stderr)
        else:
            found.append(candidate)
    if not found:
        raise DataError(f"no data file (.json, .jsonl, .parquet with columns {_describe(fields)}) under {path}")
    return found, skipped


def _describe(fields: dict[str, tuple[str, ...]]) -> str:
    return ", ".join("/".join(aliases) for aliases in fields.values())


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _describe_value(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _text(row: dict, aliases: Sequence[str], *, numbers: bool = False) -> str:
    """The first present alias's value, stripped: a string (or, with ``numbers``, an int or float as text).

    Raises:
        _RowError: Naming the column, when the value has another type (a list, a bool, an object, ...).
    """
    for key in aliases:
        value = row.get(key)
        if _missing(value):
            continue
        if isinstance(value, str):
            return value.strip()
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # a parquet float column (JSON's NaN / Infinity are refused on reading)
                raise _RowError(key, f"must be a finite number, got {value}")
            return str(value)
        kinds = "a string or a number" if numbers else "a string"
        raise _RowError(key, f"must be {kinds}, got {_describe_value(value)}")
    return ""


def _row_id(row: dict) -> tuple[str, str | int] | None:
    """``(column, id)`` of an ``rl`` row that carries an id, else None."""
    for key in ID_FIELDS:
        value = row.get(key)
        if _missing(value):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _RowError(key, f"must be a string or an integer, got {_describe_value(value)}")
        return key, value
    return None


def _image_sources(row: dict) -> list[str | bytes]:
    """The row's images: paths (str) or embedded bytes (``{"bytes": ...}`` as Hugging Face stores images).

    The first image column present is used; an empty string or list means no image.

    Raises:
        _RowError: Naming the column, when an entry is neither a path, bytes, nor a ``{"bytes", "path"}`` struct.
    """

    def source(key: str, value: Any) -> str | bytes | None:
        if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
            data, path = value.get("bytes"), value.get("path")
            if data is not None and not isinstance(data, bytes):
                raise _RowError(key, f"'bytes' must be bytes, got {_describe_value(data)}")
            if path is not None and not isinstance(path, str):
                raise _RowError(key, f"'path' must be a string, got {_describe_value(path)}")
            value = data or path
            if not value:
                return None
        if isinstance(value, bytes) and value:
            return value
        if isinstance(value, str):
            return value.strip() or None
        raise _RowError(
            key, f"must be an image path, a list of them, or {{'bytes', 'path'}}, got {_describe_value(value)}"
        )

    for key in IMAGE_FIELDS:
        value = row.get(key)
        if _missing(value):
            continue
        values = value if isinstance(value, list | tuple) else [value]
        return [s for s in (source(key, v) for v in values) if s is not None]
    return []


# ------------------------------------------------------------------------------------------------- images


@contextmanager
def _pixel_limit(max_image_pixels: int | None) -> Iterator[None]:
    """Temporarily set Pillow's decompression-bomb limit (never disable it)."""
    saved = Image.MAX_IMAGE_PIXELS
    if max_image_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@dataclass(frozen=True)
class ImageGuard:
    """How image files and embedded images are read, by data preparation and by ``sophiavl-verl audit`` alike.

    A path is taken relative to ``root``, resolved (``..`` collapsed, symlinks followed) and refused outside
    ``root`` unless ``allow_outside_root``; its size on disk is checked before it is read. The bytes are then
    verified and fully decoded by Pillow with its decompression-bomb guard on: an image above
    ``PIL.Image.MAX_IMAGE_PIXELS`` is refused (Pillow itself only warns up to twice that limit).

    Args:
        root: The image root.
        allow_outside_root: Read paths anywhere (absolute paths, ``..``, symlinks out of the root).
        max_bytes: Largest image file or embedded image.
    """

    root: Path
    allow_outside_root: bool = False
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def read(self, source: str | os.PathLike | bytes) -> tuple[bytes, str]:
        """The image's bytes and its Pillow format (``PNG``, ``JPEG``, ...), after every check.

        Raises:
            ImageError: Naming the file (or "embedded image") and why it is refused.
        """
        if isinstance(source, bytes):
            where, data = "embedded image", source
            if len(data) > self.max_bytes:
                raise ImageError("oversized", f"image too large: {where}: {len(data)} bytes, over {self.max_bytes}")
        else:
            path = self.root / source
            where = str(path)
            resolved = path.resolve()
            if not self.allow_outside_root and not resolved.is_relative_to(self.root.resolve()):
                root = self.root.resolve()
                raise ImageError(
                    "outside_root", f"image path {str(source)!r} resolves to {resolved}, outside the image root {root}"
                )
            if not resolved.is_file():
                raise ImageError("missing", f"image not found: {path}")
            size = resolved.stat().st_size
            if size > self.max_bytes:
                raise ImageError("oversized", f"image too large: {where}: {size} bytes on disk, over {self.max_bytes}")
            try:
                data = resolved.read_bytes()
            except OSError as exc:
                raise ImageError("unreadable", f"unreadable image: {where}: {exc.strerror or exc}") from None
        try:
            with warnings.catch_warnings():
                # Above MAX_IMAGE_PIXELS Pillow only warns (it raises at twice the limit): make both errors.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    return data, image.format
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError("oversized", f"image too large: {where}: {exc}") from None
        except Exception as exc:  # Pillow raises many types for corrupt files
            # Pillow names the stream by its repr ("<_io.BytesIO object at 0x7f...>"): not reproducible.
            detail = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<image data>", str(exc))
            raise ImageError("unreadable", f"unreadable image: {where}: {type(exc).__name__}: {detail}") from None


def _load_image(source: str | bytes, guard: ImageGuard, field_name: str) -> dict:
    """One image as ``{"bytes": png_or_jpeg_bytes}`` (other formats re-encoded as PNG)."""
    try:
        data, image_format = guard.read(source)
    except ImageError as exc:
        raise _RowError(field_name, exc.reason, exc.kind) from None
    if image_format not in ("PNG", "JPEG"):
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
    return {"bytes": data}


def _load_images(row: dict, guard: ImageGuard) -> list[dict]:
    field_name = next((key for key in IMAGE_FIELDS if not _missing(row.get(key))), "path")
    return [_load_image(source, guard, field_name) for source in _image_sources(row)]


def _with_placeholders(text: str, num_images: int, field_name: str) -> str:
    """Put one ``<image>`` per image in front of ``text``, unless the text already places them all."""
    present = text.count(IMAGE_PLACEHOLDER)
    if present == 0:
        return IMAGE_PLACEHOLDER * num_images + text
    if present != num_images:
        raise _RowError(field_name, f"has {present} {IMAGE_PLACEHOLDER} placeholder(s) for {num_images} image(s)")
    return text


# ------------------------------------------------------------------------------------------------ records


def build_rl_prompt(question: str, problem_type: str, num_images: int = 0) -> str:
    """The user message of an RL row: image placeholders, question, reasoning template, answer instruction.

    Args:
        question: The question (with its options for multiple choice).
        problem_type: One of :data:`sophiavl_verl.rewards.PROBLEM_TYPES`.
        num_images: Number of images; one ``<image>`` each goes in front of the question, unless the
            question already contains them.

    Raises:
        ValueError: If the question has ``<image>`` placeholders but not ``num_images`` of them, or the
            problem type is unknown.
    """
    question = _with_placeholders(question, num_images, "problem")
    return QUESTION_TEMPLATE.format(Question=question) + TYPE_TEMPLATE[canonical_problem_type(problem_type)]


def _rl_record(
    row: dict, index: int, guard: ImageGuard, data_source: str, system_prompt: str | None
) -> tuple[dict, str]:
    question = _text(row, RL_FIELDS["question"])
    if not question:
        raise _RowError("problem", "empty question")
    raw_type = _text(row, RL_FIELDS["problem_type"])
    try:
        problem_type = canonical_problem_type(raw_type)
    except ValueError as exc:
        raise _RowError("problem_type", str(exc)) from None
    answer = unwrap_answer(_text(row, RL_FIELDS["answer"], numbers=True))
    if not answer:
        raise _RowError("solution", "empty answer")
    data_type = _text(row, ("data_type",)).lower()
    if data_type == "video":
        raise _RowError("data_type", "video rows are not supported")
    options = row.get("options")
    if not _missing(options) and not (
        isinstance(options, list | tuple)
        and all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)
    ):
        raise _RowError("options", f"must be a list of strings, got {_describe_value(options)}")
    has_images = bool(_image_sources(row))  # types checked for every row, images read only for image rows
    images = [] if data_type == "text" else _load_images(row, guard)
    if data_type == "image" and not has_images:
        raise _RowError("path", "data_type is 'image' but the row has no image path", "missing")
    if problem_type == "multiple choice" and options:
        # The reference appends the options to the question (many questions already contain them).
        question = f"{question}\n" + "; ".join(map(str, options))
    record = {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": system_prompt}] * bool(system_prompt)
        + [{"role": "user", "content": build_rl_prompt(question, problem_type, len(images))}],
        "images": images,
        "ability": problem_type,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "problem_type": problem_type,
            "question": question.replace(IMAGE_PLACEHOLDER, "").strip(),
            "index": index,
            "data_type": "image" if images else "text",
            SPLIT_KEY: None,  # "train" / "val" once --val-size splits the rows (see _finalize)
        },
    }
    return record, problem_type


def _trm_record(row: dict, index: int, guard: ImageGuard) -> tuple[dict, None]:
    question = _text(row, TRM_FIELDS["question"])
    if not question:
        raise _RowError("question", "empty question")
    response = _text(row, TRM_FIELDS["response"])
    if not response:
        raise _RowError("response", "empty response")
    raw_score = _text(row, TRM_FIELDS["score"], numbers=True)
    try:
        score = float(unwrap_answer(raw_score))
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 1.0:
        raise _RowError("score", f"score must be a number in [0, 1], got {raw_score!r}" if raw_score else "empty score")
    images = _load_images(row, guard)
    from sophiavl_verl.thinking_reward import TRM_SYSTEM_PROMPT, build_trm_prompt  # aiohttp: not for --help

    # Same layout as ThinkingRewardClient's requests: images first, then the Table-4 prompt.
    prompt = IMAGE_PLACEHOLDER * len(images) + build_trm_prompt(question.replace(IMAGE_PLACEHOLDER, ""), response)
    messages = [
        {"role": "system", "content": TRM_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": f"<answer>{score}</answer>"},
    ]
    return {"messages": messages, "images": images, "extra_info": {"index": index}}, None


# ------------------------------------------------------------------------------------------------ writing


class _Sink:
    """Streams records to a parquet file in row groups, so that image bytes never pile up in memory."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = 256):
        self.writer = pq.ParquetWriter(path, schema)
        self.schema, self.rows_per_group, self.pending = schema, rows_per_group, []

    def add(self, record: dict) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _val_count(val_size: float, rows: int) -> int:
    count = int(val_size) if val_size >= 1 else round(val_size * rows)
    if count >= rows > 0:
        raise DataError(f"--val-size {val_size} leaves no training rows: only {rows} rows were written")
    return count


def _with_split(table: pa.Table, split: str | None) -> pa.Table:
    """``table`` with ``extra_info.split`` set to ``split`` (``None``: unchanged, or no such field)."""
    extra_info = table.column("extra_info").combine_chunks()
    if split is None or extra_info.type.get_field_index(SPLIT_KEY) < 0:
        return table
    children = [
        pa.array([split] * len(table), pa.string()) if f.name == SPLIT_KEY else extra_info.field(f.name)
        for f in extra_info.type
    ]
    column = pa.StructArray.from_arrays(children, fields=list(extra_info.type))
    return table.set_column(table.schema.get_field_index("extra_info"), "extra_info", column)


def _finalize(tmp: Path, outputs: list[Path], val_rows: set[int], keep_images: bool) -> None:
    """Move the streamed file into place: split off the val rows, drop ``images`` if no row has one.

    With a split, RL rows get ``extra_info.split`` = ``train`` / ``val`` (the reward manager never makes a
    validation sample wait for its group).
    """
    if not val_rows and keep_images:
        os.replace(tmp, outputs[0])
        return
    source = pq.ParquetFile(tmp)
    schema = source.schema_arrow
    if not keep_images:
        schema = schema.remove(schema.get_field_index("images"))
    writers = [pq.ParquetWriter(path, schema) for path in outputs]
    start = 0
    for batch in source.iter_batches(batch_size=256):
        table = pa.Table.from_batches([batch]).select(schema.names)
        in_val = [start + i in val_rows for i in range(len(table))]
        train_split = "train" if val_rows else None
        writers[0].write_table(_with_split(table.filter(pa.array([not v for v in in_val])), train_split))
        if len(writers) > 1:
            writers[1].write_table(_with_split(table.filter(pa.array(in_val)), "val"))
        start += len(table)
    for writer in writers:
        writer.close()
    tmp.unlink()


def _default_paths(output: Path, val_output: str | os.PathLike | None) -> tuple[Path, Path]:
    """The validation parquet (``train.parquet`` -> ``val.parquet``, else ``<stem>_val.parquet``) and the report."""
    if val_output:
        val = Path(val_output)
    else:
        val = output.with_name("val.parquet" if output.stem == "train" else f"{output.stem}_val.parquet")
    return val, output.with_name(f"{output.stem}_rejected.jsonl")


def _convert_files(
    files: list[Path],
    convert: Callable[[dict, int, ImageGuard], tuple[dict, str | None]],
    guard: ImageGuard,
    sink: _Sink,
    summary: Summary,
    strict: bool,
    check_ids: bool,
) -> None:
    """Convert every row of ``files`` into ``sink``, counting into ``summary``; ``index`` runs over all files."""
    index = 0
    first_seen: dict[str | int, str] = {}
    for file in files:
        total, rows = _rows_of(file)
        for file_row, row in enumerate(tqdm(rows, total=total, desc=f"{summary.command}: {file.name}", unit="row")):
            summary.rows_read += 1
            try:
                if not isinstance(row, dict):
                    raise _RowError("row", f"expected an object, got {type(row).__name__}")
                row_id = _row_id(row) if check_ids else None
                if row_id is not None and row_id[1] in first_seen:
                    raise _RowError(row_id[0], f"duplicate id {row_id[1]!r}: first at {first_seen[row_id[1]]}")
                record, problem_type = convert(row, index, guard)
                if row_id is not None:
                    first_seen[row_id[1]] = f"row {file_row} of {file}"
            except _RowError as exc:
                if strict:
                    raise DataError(f"row {file_row} of {file}: field '{exc.field}': {exc.reason}", path=str(file),
                                    row=file_row, field=exc.field) from None
                if exc.image_problem:
                    summary.count_image_problem(exc.image_problem)
                summary.rejected.append(Rejection(file_row, str(file), exc.field, exc.reason))
            else:
                sink.add(record)
                summary.rows_written += 1
                summary.images_embedded += len(record["images"])
                if problem_type:
                    summary.per_type[problem_type] += 1
            index += 1


def _check_options(
    output: Path, val_path: Path, val_size: float, seed: int, max_image_pixels: int | None, max_image_bytes: int
) -> None:
    """Every option's value, before any input is read; errors name the flag."""
    if output.suffix != ".parquet":
        raise DataError(f"--output must be a .parquet file, got {output}")
    if val_path.suffix != ".parquet" or val_path.resolve() == output.resolve():
        raise DataError(f"--val-output must be a .parquet file other than --output, got {val_path}")
    for path, flag in ((output, "--output"), (val_path, "--val-output")):
        if path.is_dir():
            raise DataError(f"{flag} {path} is a folder; give a .parquet file name")
    if not (isinstance(val_size, (int, float)) and math.isfinite(val_size) and val_size >= 0) or (
        val_size >= 1 and val_size != int(val_size)
    ):
        raise DataError(f"--val-size must be a fraction in [0, 1) or a whole count of rows, got {val_size}")
    if not (isinstance(seed, int) and seed >= 0):
        raise DataError(f"--seed must be an integer >= 0, got {seed}")
    for value, flag in ((max_image_pixels, "--max-image-pixels"), (max_image_bytes, "--max-image-bytes")):
        if value is not None and not (isinstance(value, int) and value > 0):
            raise DataError(f"{flag} must be a positive integer, got {value}")


def _prepare(
    command: str,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    convert: Callable[[dict, int, ImageGuard], tuple[dict, str | None]],
    fields: dict[str, tuple[str, ...]],
    schema: pa.Schema,
    *,
    image_root: str | os.PathLike | None = None,
    allow_outside_image_root: bool = False,
    val_size: float = 0,
    val_output: str | os.PathLike | None = None,
    strict: bool = False,
    seed: int = 0,
    max_image_pixels: int | None = None,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Summary:
    output = Path(output)
    val_path, report_path = _default_paths(output, val_output)
    _check_options(output, val_path, val_size, seed, max_image_pixels, max_image_bytes)
    if image_root is None:
        first = Path(inputs[0])
        image_root = first if first.is_dir() else first.parent
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise DataError(f"--image-root {image_root} is not a folder")
    guard = ImageGuard(image_root, allow_outside_root=allow_outside_image_root, max_bytes=max_image_bytes)
    files, skipped = [], []
    for path in inputs:
        found, skipped_here = find_data_files(path, fields, exclude=(output, val_path, report_path))
        files += found
        skipped += skipped_here
    summary = Summary(command=command, files=[str(f) for f in files], skipped_files=skipped)

    # Everything is written under a temporary name and moved into place at the end: a failed or interrupted
    # run leaves no file behind.
    finals = [output, val_path, report_path]
    staged = {path: path.with_name(f".{path.name}.partial") for path in finals}
    stream = output.with_name(f".{output.name}.stream.partial")
    try:
        for path in {output.parent, val_path.parent}:
            path.mkdir(parents=True, exist_ok=True)
        sink = _Sink(stream, schema)
    except OSError as exc:
        raise DataError(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    try:
        try:
            with _pixel_limit(max_image_pixels):
                _convert_files(files, convert, guard, sink, summary, strict, check_ids=command == "rl")
        except BaseException:
            sink.writer.close()
            raise
        sink.close()
        val_rows: set[int] = set()
        if val_size:
            import numpy as np

            count = _val_count(val_size, summary.rows_written)
            generator = np.random.default_rng(seed)
            val_rows = set(generator.choice(summary.rows_written, size=count, replace=False).tolist())
        summary.rows_val = len(val_rows)
        outputs = [output] + ([val_path] if val_rows else [])
        _finalize(stream, [staged[p] for p in outputs], val_rows, keep_images=summary.images_embedded > 0)
        with open(staged[report_path], "w", encoding="utf-8") as f:
            for rejection in summary.rejected:
                f.write(json.dumps(asdict(rejection), ensure_ascii=False) + "\n")
        for path in [*outputs, report_path]:
            os.replace(staged[path], path)
    except OSError as exc:
        raise DataError(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    finally:
        for path in [stream, *staged.values()]:
            path.unlink(missing_ok=True)
    summary.outputs = [str(p) for p in outputs]
    summary.report = str(report_path)
    return summary


def prepare_rl(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    data_source: str = "sophiavl_r1",
    system_prompt: str | None = None,
    **options: Any,
) -> Summary:
    """Convert SophiaVL-R1-130k rows into verl RL parquet.

    Args:
        inputs: Data files (JSON list, JSONL, parquet) or folders holding them.
        output: The output parquet (the train split when ``val_size`` is set).
        data_source: Value of the ``data_source`` column.
        system_prompt: A system message put before each row's user message (none by default).
        **options: Shared with :func:`prepare_trm`:

            * ``image_root``: folder the rows' image paths are relative to; default: the first input's folder.
              Image paths that resolve outside it (absolute, ``..``, symlinks) are rejected unless
              ``allow_outside_image_root`` (False) is set; see :class:`ImageGuard`.
            * ``val_size`` (0): rows held out for validation, a count (>= 1) or a fraction (< 1); 0 = no split.
            * ``val_output``: validation parquet; default ``val.parquet`` next to a ``train.parquet`` output,
              else ``<output stem>_val.parquet``.
            * ``strict`` (False): raise :class:`DataError` at the first bad row instead of skipping it.
            * ``seed`` (0): seed of the validation draw.
            * ``max_image_pixels``: Pillow's decompression-bomb limit for this run (default: Pillow's own).
            * ``max_image_bytes``: largest image file or embedded image (64 MiB), checked before reading it.

    Returns:
        The run's :class:`Summary`; the rejected rows are also in ``<output stem>_rejected.jsonl``.
    """
    convert = functools.partial(_rl_record, data_source=data_source, system_prompt=system_prompt)
    return _prepare("rl", inputs, output, convert, RL_FIELDS, RL_SCHEMA, **options)


def prepare_trm(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, **options: Any) -> Summary:
    """Convert (question, image, response, score) rows into verl SFT parquet for the thinking reward model.

    Each row becomes ``messages`` = system, user (``<image>`` placeholders + the Table-4 prompt of
    :func:`sophiavl_verl.thinking_reward.build_trm_prompt`), assistant ``<answer>score</answer>``.
    Arguments as :func:`prepare_rl`.
    """
    return _prepare("trm", inputs, output, _trm_record, TRM_FIELDS, TRM_SCHEMA, **options)

