"""One run of ``data rl`` / ``data trm``: options checked, rows converted and streamed to parquet, the validation
split, the rejected-rows report, and the outputs moved into place only when the whole run succeeded."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sophiavl_verl.config import DEFAULT_MAX_IMAGE_BYTES, SPLIT_KEY
from sophiavl_verl.errors import DataError
from sophiavl_verl.rewards import PROBLEM_TYPES
from sophiavl_verl.tools.data.images import ImageGuard, _pixel_limit
from sophiavl_verl.tools.data.inputs import _rows_of, find_data_files
from sophiavl_verl.tools.data.rows import _row_id, _RowError


@dataclass(frozen=True)
class Rejection:
    """One skipped row, as written to the rejected-rows report."""

    row: int
    file: str
    field: str
    reason: str


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
