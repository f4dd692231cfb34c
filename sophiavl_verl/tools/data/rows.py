"""One input row's fields: the accepted column names, typed values, the row id and the image sources; a bad field
raises :class:`_RowError`, which rejects the row."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

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


class _RowError(ValueError):
    """A bad row: the field to blame, why, and which image count it adds to (missing/unreadable/oversized)."""

    def __init__(self, field: str, reason: str, image_problem: str | None = None):
        super().__init__(reason)
        self.field, self.reason, self.image_problem = field, reason, image_problem


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _describe_value(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _present(row: dict, keys: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of each of ``keys`` that the row has a value for (not None, not NaN), in order."""
    return ((key, row[key]) for key in keys if not _missing(row.get(key)))


def _text(row: dict, aliases: Sequence[str], *, numbers: bool = False) -> str:
    """The first present alias's value, stripped: a string (or, with ``numbers``, an int or float as text).

    Raises:
        _RowError: Naming the column, when the value has another type (a list, a bool, an object, ...).
    """
    for key, value in _present(row, aliases):
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
    for key, value in _present(row, ID_FIELDS):
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

    for key, value in _present(row, IMAGE_FIELDS):
        values = value if isinstance(value, list | tuple) else [value]
        return [s for s in (source(key, v) for v in values) if s is not None]
    return []
