"""The thinking-reward client against the real embedded TRM behind `transformers serve`."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sophiavl_verl.errors import ServerStartError
from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
from sophiavl_verl.thinking_reward import ThinkingRewardItem, build_trm_prompt
from sophiavl_verl.tools.tiny_vl import synthetic_trm_examples

from support.trm import ITEM, b64, make_client, png_bytes, rgb_image, score_each

pytestmark = pytest.mark.timeout(600)


def test_embedded_trm_server_scores_items_with_images(embedded_trm_server):
    examples = synthetic_trm_examples(9, seed=1234)
    items = [ThinkingRewardItem(q, r, images) for q, r, images in examples]
    assert any(len(item.images) == 0 for item in items) and any(len(item.images) == 2 for item in items)
    client = make_client(embedded_trm_server.base_url, embedded_trm_server.model, max_concurrency=4, timeout_s=120)
    scores = client.score_sync(items)
    assert client.stats.failed == 0, client.stats
    assert all(0.0 <= s <= 1.0 for s in scores)  # what it judges is tested in test_trm_sft.py
    summary = client.stats.summary()
    assert summary["trm/requests"] == 9 and summary["trm/failed"] == 0
    assert 0 < summary["trm/latency_p50_s"] <= summary["trm/latency_p95_s"]


def test_embedded_trm_server_takes_several_images_of_every_kind(embedded_trm_server, tmp_path):
    path = tmp_path / "blue.png"
    rgb_image((20, 20, 220)).save(path)
    images = (rgb_image(), png_bytes(), str(path))
    item = ThinkingRewardItem("Which image is blue?", "<think>The third one is blue because it looks blue.</think>"
                              "<answer>3</answer>", images)
    client = make_client(embedded_trm_server.base_url, embedded_trm_server.model, timeout_s=120)
    (score,) = client.score_sync([item])
    assert 0.0 <= score <= 1.0 and client.stats.failed == 0


def test_embedded_trm_server_sees_the_images(embedded_trm_server):
    """The server turns every image_url into image tokens: the prompt grows with each image."""

    async def prompt_tokens(n_images: int) -> int:
        url = f"data:image/png;base64,{b64(png_bytes())}"
        content = [{"type": "image_url", "image_url": {"url": url}}] * n_images
        content.append({"type": "text", "text": build_trm_prompt("How many?", "<think>2</think><answer>2</answer>")})
        body = {"model": embedded_trm_server.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 8}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{embedded_trm_server.base_url}/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["usage"]["prompt_tokens"]

    base, two = asyncio.run(prompt_tokens(0)), asyncio.run(prompt_tokens(2))
    assert two - base >= 2 * 3  # per image: vision start/end and at least one image token


def test_embedded_trm_server_sees_few_connections_for_many_calls(embedded_trm_server):
    """The real `transformers serve` (uvicorn) logs each request's client address: count distinct ports."""
    import re

    before = embedded_trm_server.log_path.read_text(errors="replace")
    client = make_client(embedded_trm_server.base_url, embedded_trm_server.model, max_concurrency=2, timeout_s=120)
    scores = asyncio.run(score_each(client, [ITEM] * 12))
    assert client.stats.failed == 0 and all(0.0 <= s <= 1.0 for (s,) in scores)
    new = embedded_trm_server.log_path.read_text(errors="replace")[len(before):]
    ports = re.findall(r"127\.0\.0\.1:(\d+) - \"POST /v1/chat/completions", new)
    assert len(ports) == 12
    assert len(set(ports)) <= 2 and client.stats.connections == len(set(ports))


def test_server_that_cannot_start_reports_its_log(tmp_path):
    model_dir = tmp_path / "not_a_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    server = LocalOpenAIServer(model_dir, startup_timeout_s=120, log_path=tmp_path / "serve.log")
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    assert "Traceback" in str(info.value) and str(tmp_path / "serve.log") in str(info.value)
    assert not server.running
