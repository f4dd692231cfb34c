"""Reading the input files: JSON lists, JSONL and parquet rows, non-finite JSON numbers refused, the data files of
a folder found and checked before any image is read."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sophiavl_verl.errors import DataError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


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
