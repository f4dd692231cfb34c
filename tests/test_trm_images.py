"""Images as request parts: malformed items, original bytes, the content-keyed cache, downscaling, threads."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading
import time

import pytest
from PIL import Image

from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem

from support.fault_injection import FaultInjectionServer
from support.images import encoded
from support.trm import (
    FAST,
    ITEM,
    b64,
    jpeg_bytes,
    make_client,
    png_bytes,
    rgb_image,
    score_each,
    score_once,
    sent_image_urls,
    sent_images,
)

pytestmark = pytest.mark.timeout(600)


def _score_and_collect_images(items, **options):
    """Score ``items`` once against a TRM answering 0.5; returns the client and the images the TRM received."""
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        _, client, _ = score_once(server.base_url, items, **options)
        return client, sent_images(server)


def test_bad_image_fails_only_its_item(tmp_path):
    items = [ITEM, ThinkingRewardItem("q", "r", (str(tmp_path / "missing.png"),)), ITEM]
    with FaultInjectionServer(lambda n, body: "<answer>0.4</answer>") as server:
        scores, client, _ = score_once(server.base_url, items)
        assert server.requests == 2
    assert scores[0] == scores[2] == pytest.approx(0.4) and math.isnan(scores[1])
    assert dict(client.stats.failures) == {"bad_input": 1}


def test_malformed_items_fail_alone_and_non_images_are_never_sent(tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image at all")
    bad = [
        ThinkingRewardItem(None, "r"),  # type: ignore[arg-type]
        ThinkingRewardItem("q", 42),  # type: ignore[arg-type]
        ThinkingRewardItem("q", "r", (b"plain text bytes, not an image",)),
        ThinkingRewardItem("q", "r", (b"",)),
        ThinkingRewardItem("q", "r", (str(text_file),)),
        ThinkingRewardItem("q", "r", ("data:text/plain;base64,aGVsbG8=",)),
        ThinkingRewardItem("q", "r", (12345,)),
        ThinkingRewardItem("q", "r", None),  # type: ignore[arg-type]
        {"question": "q", "response": "r"},
    ]
    good = ThinkingRewardItem("fine", "r", (png_bytes(),))
    items = [good, *bad, good]
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        scores, client, _ = score_once(server.base_url, items)
        assert server.requests == 2  # only the good items were sent
        sent = sent_image_urls(server)
    assert scores[0] == scores[-1] == pytest.approx(0.6)
    assert all(math.isnan(s) for s in scores[1:-1])
    assert dict(client.stats.failures) == {"bad_input": len(bad)}
    assert sent == [f"data:image/png;base64,{b64(png_bytes())}"] * 2


def test_a_groups_image_is_prepared_once_from_separately_deserialized_copies():
    """A group's 8 responses reach a reward worker as 8 unpickled copies of its image (equal, not identical)."""
    import pickle

    groups = {f"g{g}": rgb_image((40 * g, 90, 160), side=48) for g in range(3)}
    items = [ThinkingRewardItem(uid, f"response {k}", (pickle.loads(pickle.dumps(image)),))
             for uid, image in groups.items() for k in range(8)]
    assert items[0].images[0] is not items[1].images[0]

    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = make_client(server.base_url, "trm", max_concurrency=8, **FAST)
        assert asyncio.run(score_each(client, items)) == [[0.5]] * 24
        sent = sent_images(server)
    assert client.stats.image_encodes == 3 and client.stats.images_prepared == 3
    assert client.stats.image_cache_hits == 21
    expected = [encoded(image, "PNG") for image in groups.values()]
    assert sorted(sent) == sorted(png for png in expected for _ in range(8))


def test_original_bytes_are_sent_as_they_are_and_never_re_encoded(tmp_path):
    jpeg, png = jpeg_bytes(), png_bytes()
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg)
    items = [ThinkingRewardItem("q", f"r{k}", (bytes(bytearray(jpeg)), png)) for k in range(4)]
    items.append(ThinkingRewardItem("q", "from a file", (str(path),)))
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        scores, client, _ = score_once(server.base_url, items)
        urls = sent_image_urls(server)
        sent = sent_images(server)
    assert scores == [0.5] * 5
    assert sorted(sent) == sorted([jpeg, png] * 4 + [jpeg])  # byte for byte
    assert sorted({url.split(";")[0] for url in urls}) == ["data:image/jpeg", "data:image/png"]
    assert client.stats.image_encodes == 0 and client.stats.images_prepared == 3  # jpeg, png, the file


def test_image_cache_stays_bounded_over_a_long_run():
    budget = 64 * 1024
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", image_cache_bytes=budget, **FAST)
        sizes, expected, kept = [], [], []
        for step in range(60):
            image = jpeg_bytes(color=(step, 255 - step, 7 * step % 256), size=(160, 120))
            assert client.score_sync([ThinkingRewardItem("q", "r", (image,))] * 2) == [0.5, 0.5]
            sizes.append((len(client._images), client._images.nbytes))
            # Least recently used out first: the newest images whose JSON data URLs fit in the budget.
            kept.append(len(b'"data:image/jpeg;base64,"') + len(base64.b64encode(image)))
            while sum(kept) > budget:
                kept.pop(0)
            expected.append((len(kept), sum(kept)))
        assert client.stats.images_prepared == 60 and client.stats.image_cache_hits == 60
        assert sizes == expected
        first = jpeg_bytes(color=(0, 255, 0), size=(160, 120))
        last = jpeg_bytes(color=(59, 196, 7 * 59 % 256), size=(160, 120))
        client.score_sync([ThinkingRewardItem("q", "r", (last,))])  # still cached: a hit
        client.score_sync([ThinkingRewardItem("q", "r", (first,))])  # evicted long ago: prepared again
        client.close()
    assert client.stats.image_cache_hits == 61 and client.stats.images_prepared == 61


def test_downscaling_to_max_image_pixels_follows_the_reference_rule():
    big = jpeg_bytes(size=(300, 100))  # 30000 pixels
    small = jpeg_bytes(size=(50, 40))  # 2000 pixels: under the cap, sent as it is
    items = [ThinkingRewardItem("q", "r", (big,)), ThinkingRewardItem("q", "r", (small,))]
    client, sent = _score_and_collect_images(items, max_image_pixels=12000)
    factor = math.sqrt(12000 / 30000)  # EasyR1's process_image: sides scaled by sqrt(max / (w * h)), truncated
    shrunk = next(Image.open(io.BytesIO(data)) for data in sent if data != small)
    assert shrunk.format == "PNG" and shrunk.size == (int(300 * factor), int(100 * factor)) == (189, 63)
    assert small in sent
    assert client.stats.images_downscaled == 1 and client.stats.image_encodes == 1


def test_responses_waiting_for_their_groups_image_hold_no_thread(monkeypatch):
    """While one thread encodes a group's image, the other responses await it without blocking executor threads
    (verl's manager decodes responses and computes outcome rewards on the same default executor)."""
    import concurrent.futures

    from sophiavl_verl.thinking_reward import _images

    encoding, encoded = threading.Event(), threading.Event()
    encode = _images.encode_pil

    def slow_encode(image, max_pixels):
        encoding.set()
        time.sleep(1.0)
        try:
            return encode(image, max_pixels)
        finally:
            encoded.set()

    monkeypatch.setattr(_images, "encode_pil", slow_encode)

    async def group_and_other_work(client):
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=3))
        image = rgb_image()
        calls = [asyncio.ensure_future(client.score([ThinkingRewardItem("q", f"r{k}", (image.copy(),))]))
                 for k in range(8)]
        await loop.run_in_executor(None, encoding.wait)
        await asyncio.sleep(0.2)  # the other seven have asked for the image by now
        other_work_first = await loop.run_in_executor(None, lambda: not encoded.is_set())
        return await asyncio.gather(*calls), other_work_first

    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", **FAST)
        scores, other_work_first = asyncio.run(group_and_other_work(client))
    assert scores == [[0.5]] * 8 and client.stats.image_encodes == 1
    assert other_work_first  # a free executor thread ran it while the image was still being encoded


def test_palette_images_with_equal_indices_but_other_palettes_are_not_confused():
    red, blue = Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 0)
    red.putpalette([255, 0, 0] * 256)
    blue.putpalette([0, 0, 255] * 256)
    items = [ThinkingRewardItem("q", "r", (red,)), ThinkingRewardItem("q", "r", (blue,))]
    client, sent = _score_and_collect_images(items, max_concurrency=1)
    colors = sorted(Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) for data in sent)
    assert colors == [(0, 0, 255), (255, 0, 0)] and client.stats.image_encodes == 2


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_lazily_opened_image_shared_by_a_group_is_read_once_and_scored(tmp_path, suffix):
    """``Image.open`` reads the file on first access; the items of a group share the object, and their
    concurrent preparation must not decode it at once in several threads (it used to make them bad_input)."""
    import numpy as np

    path = tmp_path / f"photo{suffix}"
    Image.fromarray((np.random.default_rng(0).random((1200, 1600, 3)) * 255).astype("uint8")).save(path)
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        for _ in range(3):
            image = Image.open(path)  # lazy: not decoded yet
            client = make_client(server.base_url, "trm", max_concurrency=16, max_retries=0, **FAST)
            items = [ThinkingRewardItem("q", ITEM.response, (image,)) for _ in range(16)]
            assert asyncio.run(client.score(items)) == [0.5] * 16, client.stats.summary()
            assert client.stats.image_encodes == 1
