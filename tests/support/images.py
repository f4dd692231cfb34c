"""Images as bytes, and the check that a written figure is a real PNG."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    """``image`` saved in ``image_format`` (e.g. "PNG", "JPEG"; ``options`` as ``Image.save`` takes them)."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def assert_png(path: Path, min_bytes: int) -> None:
    """``path`` is a PNG file of more than ``min_bytes`` that Pillow reads back (a drawn figure, not a stub)."""
    assert path.is_file() and path.stat().st_size > min_bytes, path
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG"
