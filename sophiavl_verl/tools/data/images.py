"""The image guard (:class:`ImageGuard`, also the audit's) and a row's images read through it."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sophiavl_verl.config import DEFAULT_MAX_IMAGE_BYTES
from sophiavl_verl.errors import ImageError
from sophiavl_verl.tools.data.rows import IMAGE_FIELDS, _image_sources, _present, _RowError


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
    field_name = next((key for key, _ in _present(row, IMAGE_FIELDS)), "path")
    return [_load_image(source, guard, field_name) for source in _image_sources(row)]
