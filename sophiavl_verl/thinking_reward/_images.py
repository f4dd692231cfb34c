"""Images as request parts: recognised by signature, sent as their own bytes or encoded as PNG, downscaled on
request, prepared once per content (:class:`ImageCache`)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, NamedTuple

from sophiavl_verl.thinking_reward._failures import BadInput

#: The image cache's default budget per client (the JSON strings of prepared images, in bytes).
IMAGE_CACHE_BYTES = 256 * 2**20

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _mime_of(data: bytes) -> str | None:
    """The MIME type of encoded image bytes from their signature; ``None`` when they are no known image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


#: Modes PNG can store; an image in another mode (CMYK, YCbCr, ...) is converted to RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class Prepared(NamedTuple):
    """An image ready to send: the JSON string of its ``data:`` URL, spliced into request bodies as is."""

    url_json: bytes
    reencoded: bool  # decoded and encoded again as PNG (a PIL image, or a downscaled one)
    downscaled: bool


def _url_json(mime: str, data: bytes) -> bytes:
    return b'"data:' + mime.encode("ascii") + b";base64," + base64.b64encode(data) + b'"'


def _downscale(image: Any, max_pixels: int) -> Any:
    """Shrink an image to at most ``max_pixels`` pixels, keeping its aspect ratio, with the reference's rule.

    The authors' dataset (EasyR1's ``process_image``) scales both sides by sqrt(max_pixels / (w * h)),
    truncates them to integers, resizes with PIL's default filter and converts to RGB.
    """
    factor = math.sqrt(max_pixels / (image.width * image.height))
    image = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))))
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_pil(image: Any, max_pixels: int | None) -> Prepared:
    downscaled = max_pixels is not None and image.width * image.height > max_pixels
    if downscaled:
        image = _downscale(image, max_pixels)
    elif image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless, as the reference sends images
    return Prepared(_url_json("image/png", buffer.getvalue()), True, downscaled)


def _prepare_bytes(data: bytes, max_pixels: int | None, what: str) -> Prepared:
    mime = _mime_of(data)
    if mime is None:
        raise BadInput(f"{what} are not a PNG, JPEG, GIF, BMP or WebP image (they start with {data[:8]!r})")
    if max_pixels is not None:
        from PIL import Image

        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.width * image.height > max_pixels:
            return encode_pil(image, max_pixels)
    return Prepared(_url_json(mime, data), False, False)


#: Serialises the loading of PIL images: a lazily opened one (``Image.open``) reads its file on first access,
#: and two threads decoding the same image at once (the items of a group share it) corrupt each other's read.
_PIL_LOAD_LOCK = threading.Lock()


def _image_job(image: Any, max_pixels: int | None) -> tuple[Hashable, Callable[[], Prepared]]:
    """The content key of an image and the function that prepares it.

    Equal content gives equal keys whatever the object's identity: a group's responses reach a reward worker
    as separately deserialized copies of the same image. Hashing reads all of it, so this runs in a thread.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return ("bytes", hashlib.sha256(data).digest()), lambda: _prepare_bytes(data, max_pixels, "image bytes")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        stat = os.stat(path)
        key = ("file", os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
        return key, lambda: _prepare_bytes(Path(path).read_bytes(), max_pixels, f"the bytes of {path}")
    if hasattr(image, "tobytes") and hasattr(image, "save"):  # a PIL image, without importing PIL here
        with _PIL_LOAD_LOCK:
            image.load()
        digest = hashlib.sha256(image.tobytes())
        digest.update(bytes(image.getpalette() or ()))  # mode "P": the same indices with another palette differ
        return ("pixels", image.mode, image.size, digest.digest()), lambda: encode_pil(image, max_pixels)
    raise BadInput(f"an image is a {type(image).__name__}, not bytes, a PIL image, a path or a URL")


def url_part(image: Any) -> bytes | None:
    """The request part of an image given as a ``data:image/...`` or ``http(s)://`` URL, sent as it is; None for an
    image of another kind."""
    if not (isinstance(image, str) and image.startswith(("data:", "http://", "https://"))):
        return None
    if image.startswith("data:") and not image.startswith("data:image/"):
        raise BadInput(f"a data: URL that is not an image ({image[:30]!r})")
    return json.dumps(image).encode()


def _bad_input_on_error(function: Callable, *args: Any) -> Any:
    """``function(*args)``, any error raised as :class:`BadInput` (PIL raises many types on a broken image: the
    item fails, not the call)."""
    try:
        return function(*args)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"an image cannot be read: {type(exc).__name__}: {exc}") from None


class ImageCache:
    """Prepared images by content key, least recently used out first, at most ``max_bytes`` in all.

    Thread-safe. While one thread prepares a key, the others asking for it get that preparation's future to
    await instead of preparing it again (a group's responses arrive together) or blocking a thread. An image
    larger than the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._parts: OrderedDict[Hashable, Prepared] = OrderedDict()
        self._pending: dict[Hashable, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parts)

    def prepared(self, image: Any, max_pixels: int | None) -> tuple[Prepared | concurrent.futures.Future, bool]:
        """(in a worker thread) The request part of ``image`` from the cache, prepared here if missing, and whether
        this call prepared it.

        Raises:
            BadInput: When the image cannot be read or is no image.
        """
        key, prepare = _bad_input_on_error(_image_job, image, max_pixels)
        return self.get(key, lambda: _bad_input_on_error(prepare))

    def get(self, key: Hashable,
            prepare: Callable[[], Prepared]) -> tuple[Prepared | concurrent.futures.Future, bool]:
        """The prepared image of ``key`` (or the future of its preparation elsewhere), and whether this call
        prepared it."""
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                self._parts.move_to_end(key)
                return part, False
            if key in self._pending:
                return self._pending[key], False
            future = self._pending[key] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel it for the others
        try:
            part = prepare()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            future.set_exception(exc)
            raise
        with self._lock:
            size = len(part.url_json)
            if size <= self.max_bytes:
                self._parts[key] = part
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, evicted = self._parts.popitem(last=False)
                    self.nbytes -= len(evicted.url_json)
            del self._pending[key]
        future.set_result(part)
        return part, True

