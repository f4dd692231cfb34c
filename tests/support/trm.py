"""Helpers of the thinking-reward-client tests (tests/test_trm_*.py): clients, images, fault-injection scripts."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time

from aiohttp import web
from PIL import Image

from sophiavl_verl.config import SophiaVLRewardConfig
from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem

from support.images import encoded

SECRET = "sk-test-0123456789-SECRET"
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05)  # retries without waiting in tests
ITEM = ThinkingRewardItem("What is 2 + 2?", "<think>2 + 2 = 4 because addition.</think><answer>4</answer>")

#: The reward manager's options (``SophiaVLRewardConfig``), which :func:`make_client` takes as keywords.
OPTIONS = frozenset(f.name for f in dataclasses.fields(SophiaVLRewardConfig) if not f.name.startswith("_"))


def make_client(base_url: str, model: str, **kwargs) -> ThinkingRewardClient:
    """A client; keywords that name reward-manager options (``max_retries=0``) go into its
    ``SophiaVLRewardConfig``, the others (``api_key``, ``backoff_base_s``, ...) to the client itself."""
    options = SophiaVLRewardConfig(**{name: kwargs.pop(name) for name in list(kwargs) if name in OPTIONS})
    return ThinkingRewardClient(base_url, model, options, **kwargs)


def score_once(server_url: str, items=(ITEM,), **kwargs):
    """Score with a fresh client that retries without waiting; returns (scores, client, seconds)."""
    client = make_client(server_url, "trm", **{**FAST, **kwargs})
    start = time.monotonic()
    scores = client.score_sync(list(items))
    return scores, client, time.monotonic() - start


def rgb_image(color=(200, 30, 30), side=64) -> Image.Image:
    return Image.new("RGB", (side, side), color)


def png_bytes(color=(30, 200, 30)) -> bytes:
    return encoded(rgb_image(color), "PNG")


def jpeg_bytes(color=(10, 120, 240), size=(96, 64)) -> bytes:
    return encoded(Image.new("RGB", size, color), "JPEG", quality=90)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def score_each(client: ThinkingRewardClient, items) -> list[list[float]]:
    """One ``score([item])`` call per item, all at once, as verl's reward loop makes them (one per response)."""
    return await asyncio.gather(*(client.score([item]) for item in items))


def status(code: int, text: str = "injected fault", headers: dict | None = None):
    """A server script that answers ``code`` to every request."""
    return lambda n, body: web.Response(status=code, text=text, headers=headers)


def hang(seconds: float):
    """A server script that answers a score after ``seconds``."""

    async def reply(n, body):
        await asyncio.sleep(seconds)
        return "<answer>0.5</answer>"

    return reply


def question_of(body: dict) -> str:
    """The question of a request made by the client (the line after "Question: " in its text part)."""
    text = next(part["text"] for part in body["messages"][-1]["content"] if part["type"] == "text")
    return text.split("Question: ", 1)[1].split("\n", 1)[0]


def sent_image_urls(server) -> list[str]:
    """Every image_url (a data URL) the server received, in order."""
    return [part["image_url"]["url"] for body in server.bodies for part in body["messages"][-1]["content"]
            if part["type"] == "image_url"]


def sent_images(server) -> list[bytes]:
    """The decoded bytes of every image_url the server received, in order."""
    return [base64.b64decode(url.split(",", 1)[1]) for url in sent_image_urls(server)]


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
