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

:func:`prepare_rl` and :func:`prepare_trm` read top to bottom as the stages, one module each:

    inputs.py   the data files of the inputs, read and checked (JSON, JSONL, parquet; finite numbers)
    rows.py     one row's fields: column aliases, typed values, ids, image sources
    images.py   :class:`ImageGuard` and a row's images read through it
    records.py  the RL and TRM output records (the RL prompt template) and their parquet schemas
    convert.py  the run: options, rows streamed to parquet, the validation split, the report, the outputs
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from sophiavl_verl.config import DEFAULT_MAX_IMAGE_BYTES
from sophiavl_verl.errors import DataError, ImageError
from sophiavl_verl.tools.data.convert import Rejection, Summary, _prepare
from sophiavl_verl.tools.data.images import ImageGuard
from sophiavl_verl.tools.data.inputs import describe_field, find_data_files, finite_json, non_finite_at
from sophiavl_verl.tools.data.records import (
    IMAGE_PLACEHOLDER,
    QUESTION_TEMPLATE,
    RL_SCHEMA,
    TRM_SCHEMA,
    TYPE_TEMPLATE,
    _rl_record,
    _trm_record,
    build_rl_prompt,
)
from sophiavl_verl.tools.data.rows import RL_FIELDS, TRM_FIELDS

__all__ = [
    "QUESTION_TEMPLATE",
    "TYPE_TEMPLATE",
    "DEFAULT_MAX_IMAGE_BYTES",
    "IMAGE_PLACEHOLDER",
    "DataError",
    "ImageError",
    "ImageGuard",
    "Rejection",
    "Summary",
    "build_rl_prompt",
    "describe_field",
    "find_data_files",
    "finite_json",
    "non_finite_at",
    "prepare_rl",
    "prepare_trm",
]


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
