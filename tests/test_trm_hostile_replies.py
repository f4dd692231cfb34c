"""Whatever a reply holds, the worst it does is fail its own item: size caps, hostile bodies, redirect loops."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from aiohttp import web

from sophiavl_verl.thinking_reward import ThinkingRewardItem

from support.fault_injection import FaultInjectionServer
from support.trm import FAST, ITEM, make_client, question_of, score_once

pytestmark = pytest.mark.timeout(600)


def _gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip body that inflates to ``inflated_bytes`` of spaces (about a thousandth of that on the wire)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    block = b" " * 2**20
    return b"".join(packer.compress(block) for _ in range(inflated_bytes // len(block))) + packer.flush()


def _peak_traced_bytes(function):
    """``function()`` and the peak of Python allocations while it ran (the server thread's included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_fails_its_item_only_with_bounded_memory():
    bomb = _gzip_bomb(256 * 2**20)
    assert len(bomb) < 2**20  # a small body on the wire, 256 MiB once inflated

    def script(n, body):
        if question_of(body) == "bomb":
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        return "<answer>0.4</answer>"

    items = [ThinkingRewardItem("bomb", "r"), ITEM]
    with FaultInjectionServer(script) as server:
        ((scores, client, seconds), peak) = _peak_traced_bytes(lambda: score_once(server.base_url, items, timeout_s=30))
        assert server.requests == 2  # not retried
    assert math.isnan(scores[0]) and scores[1] == pytest.approx(0.4)
    assert dict(client.stats.failures) == {"bad_response": 1} and client.options.max_reply_bytes == 2**20
    assert peak < 32 * 2**20, peak  # the cap (1 MiB) and a few chunks, not 256 MiB
    assert seconds < 10


def test_an_endless_body_fails_at_the_size_cap_not_at_the_timeout():
    async def endless():
        while True:
            yield b" " * 2**16
            await asyncio.sleep(0.001)

    with FaultInjectionServer(lambda n, body: web.Response(body=endless())) as server:
        ((scores, client, seconds), peak) = _peak_traced_bytes(
            lambda: score_once(server.base_url, timeout_s=3.0, max_reply_bytes=256 * 1024))
        assert server.requests == 1
    assert math.isnan(scores[0]) and dict(client.stats.failures) == {"bad_response": 1}
    assert seconds < 2.0 and peak < 16 * 2**20, (seconds, peak)


def test_max_reply_bytes_caps_what_is_read_after_decompression():
    padded = json.dumps({"choices": [{"message": {"content": "<answer>0.5</answer>"}}], "pad": " " * 4000})
    with FaultInjectionServer(lambda n, body: web.Response(text=padded, content_type="application/json")) as server:
        (fits,), _, _ = score_once(server.base_url, max_reply_bytes=len(padded))
        (over,), client, _ = score_once(server.base_url, max_reply_bytes=len(padded) - 1)
        compressed = web.Response(body=__import__("gzip").compress(padded.encode()),
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        server.script = lambda n, body: compressed
        (zipped,), zipped_client, _ = score_once(server.base_url, max_reply_bytes=1000)  # 100 bytes on the wire
    assert fits == 0.5 and math.isnan(over) and dict(client.stats.failures) == {"bad_response": 1}
    assert math.isnan(zipped) and dict(zipped_client.stats.failures) == {"bad_response": 1}
    with pytest.raises(ValueError, match="max_reply_bytes"):
        make_client("http://127.0.0.1:1/v1", "trm", max_reply_bytes=0)


HOSTILE_BODIES = {  # name -> the whole body of a 200 reply
    "deep array": b"[" * 200000,
    "deep object": b'{"a":' * 100000,
    "choices a number": b'{"choices": 5}',
    "choice a number": b'{"choices": [5]}',
    "message a list": b'{"choices": [{"message": [1]}]}',
    "content a list": b'{"choices": [{"message": {"content": ["<answer>0.5</answer>"]}}]}',
    "content a number": b'{"choices": [{"message": {"content": 0.5}}]}',
    "null": b"null",
    "a string": b'"<answer>0.5</answer>"',
    "invalid UTF-8": b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
    "NaN": b"NaN",
    "huge number": b"1" * 5000,
}


def test_no_reply_body_escapes_its_item():
    """Whatever the body, the worst it does is fail its own item (``bad_response``); the others are scored."""
    names = list(HOSTILE_BODIES)

    def script(n, body):
        question = question_of(body)
        if question in HOSTILE_BODIES:
            return web.Response(body=HOSTILE_BODIES[question], content_type="application/json")
        return "<answer>0.3</answer>"

    items = [ThinkingRewardItem(name, "r") for name in names] + [ITEM]
    with FaultInjectionServer(script) as server:
        client = make_client(server.base_url, "trm", max_retries=0, **FAST)
        results = asyncio.run(client.score_results(items))
    assert [r.failure for r in results] == ["bad_response"] * len(names) + [None]
    assert all(math.isnan(r.score) for r in results[:-1]) and results[-1].score == pytest.approx(0.3)


def test_hostile_bodies_fail_only_their_responses_in_the_audit(tmp_path, capsys):
    from sophiavl_verl.tools.cli import main

    bodies = list(HOSTILE_BODIES.values())

    def script(n, body):
        if n % 2:
            return "<answer>0.5</answer>"
        return web.Response(body=bodies[n // 2 % len(bodies)], content_type="application/json")

    with FaultInjectionServer(script) as server:
        rc = main(["audit", "--trm-url", server.base_url, "--trm-model", server.model, "--out", str(tmp_path),
                   "--max-retries", "0", "--no-progress", "--limit", "4"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["trm"]["failures"] == {"bad_response": report["trm"]["failed"]}
    assert 0 < report["trm"]["failed"] < report["trm"]["requested"]


def test_a_redirect_loop_is_a_bad_response_not_retried():
    def loop(n, body):
        return web.Response(status=307, headers={"Location": "/v1/chat/completions"})

    with FaultInjectionServer(loop) as server:
        (score,), client, seconds = score_once(server.base_url, max_retries=5)
        assert server.requests == 10  # aiohttp gives up at its 10th redirect: one request, not six with retries
    assert math.isnan(score) and dict(client.stats.failures) == {"bad_response": 1} and client.stats.retries == 0
