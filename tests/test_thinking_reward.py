"""The thinking-reward-model client: a real OpenAI-compatible server, injected faults, the prompt, the parser."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import random
import time

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from fault_injection import FaultInjectionServer
from sophiavl_verl.local_server import LocalOpenAIServer, ServerStartError, free_port
from sophiavl_verl.thinking_reward import (
    API_KEY_ENV,
    TRM_INSTRUCTION,
    ThinkingRewardClient,
    ThinkingRewardItem,
    build_trm_prompt,
    parse_score,
)
from sophiavl_verl.tiny_vl import synthetic_trm_examples, toy_score

pytestmark = pytest.mark.timeout(600)

SECRET = "sk-test-0123456789-SECRET"
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05)  # retries without waiting in tests


def _image(color=(200, 30, 30), side=64) -> Image.Image:
    return Image.new("RGB", (side, side), color)


def _png_bytes(color=(30, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    _image(color).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def real_server(embedded_trm_server):
    """``transformers serve`` on 127.0.0.1 serving the fine-tuned tiny Qwen2.5-VL TRM (tests/conftest.py)."""
    return embedded_trm_server


def test_real_server_scores_items_with_images(real_server):
    examples = synthetic_trm_examples(9, seed=1234)
    items = [ThinkingRewardItem(q, r, images) for q, r, images, _ in examples]
    assert any(len(item.images) == 0 for item in items) and any(len(item.images) == 2 for item in items)
    client = ThinkingRewardClient(real_server.base_url, real_server.model, max_concurrency=4, timeout_s=120)
    scores = client.score_sync(items)
    assert client.stats.failed == 0, client.stats
    assert all(0.0 <= s <= 1.0 for s in scores)
    # Not a constant: the tiny model learned (the ``because`` half of) its keyword rule.
    because = [s for s, (_, r, _, _) in zip(scores, examples) if toy_score(r) == 0.9]
    others = [s for s, (_, r, _, _) in zip(scores, examples) if toy_score(r) != 0.9]
    assert because == [0.9] * 3 and max(others) < 0.9, scores
    summary = client.stats.summary()
    assert summary["trm/requests"] == 9 and summary["trm/failed"] == 0
    assert 0 < summary["trm/latency_p50_s"] <= summary["trm/latency_p95_s"]


def test_real_server_takes_several_images_of_every_kind(real_server, tmp_path):
    path = tmp_path / "blue.png"
    _image((20, 20, 220)).save(path)
    images = (_image(), _png_bytes(), str(path))
    item = ThinkingRewardItem("Which image is blue?", "<think>The third one is blue because it looks blue.</think>"
                              "<answer>3</answer>", images)
    client = ThinkingRewardClient(real_server.base_url, real_server.model, timeout_s=120)
    (score,) = client.score_sync([item])
    assert 0.0 <= score <= 1.0 and client.stats.failed == 0


def test_real_server_sees_the_images(real_server):
    """The server turns every image_url into image tokens: the prompt grows with each image."""

    async def prompt_tokens(n_images: int) -> int:
        url = f"data:image/png;base64,{_b64(_png_bytes())}"
        content = [{"type": "image_url", "image_url": {"url": url}}] * n_images
        content.append({"type": "text", "text": build_trm_prompt("How many?", "<think>2</think><answer>2</answer>")})
        body = {"model": real_server.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 8}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{real_server.base_url}/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["usage"]["prompt_tokens"]

    base, two = asyncio.run(prompt_tokens(0)), asyncio.run(prompt_tokens(2))
    assert two - base >= 2 * 3  # per image: vision start/end and at least one image token


def test_server_that_cannot_start_reports_its_log(tmp_path):
    model_dir = tmp_path / "not_a_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    server = LocalOpenAIServer(model_dir, startup_timeout_s=120, log_path=tmp_path / "serve.log")
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    assert "Traceback" in str(info.value) and str(tmp_path / "serve.log") in str(info.value)
    assert not server.running


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------ injected faults


def _status(code: int, text: str = "injected fault", headers: dict | None = None):
    return lambda n, body: web.Response(status=code, text=text, headers=headers)


def _hang(seconds: float):
    async def reply(n, body):
        await asyncio.sleep(seconds)
        return "<answer>0.5</answer>"

    return reply


ITEM = ThinkingRewardItem("What is 2 + 2?", "<think>2 + 2 = 4 because addition.</think><answer>4</answer>")


def _score(server_url: str, items=(ITEM,), **kwargs):
    """Score with a fresh client; returns (scores, client, seconds)."""
    client = ThinkingRewardClient(server_url, "trm", **{**FAST, **kwargs})
    start = time.monotonic()
    scores = client.score_sync(list(items))
    return scores, client, time.monotonic() - start


# (name, script, client kwargs, expected failure kind, requests the server sees, time bound in s)
FAILURES = [
    ("500 forever", _status(500), dict(max_retries=3), "http_5xx", 4, 2.0),
    ("503 forever", _status(503), dict(max_retries=2), "http_5xx", 3, 2.0),
    ("429 forever", _status(429), dict(max_retries=3), "http_429", 4, 2.0),
    ("400, not retried", _status(400, "bad request"), dict(max_retries=5), "http_4xx", 1, 1.0),
    ("401, not retried", _status(401, "no key"), dict(max_retries=5), "http_4xx", 1, 1.0),
    ("garbage reply text", lambda n, b: "lorem ipsum dolor", dict(max_retries=5), "unparseable", 1, 1.0),
    ("garbage body", lambda n, b: web.Response(text="<html>oops</html>"), dict(max_retries=5), "bad_response", 2, 1.0),
    ("empty body", lambda n, b: web.Response(body=b""), dict(max_retries=5), "bad_response", 2, 1.0),
    ("no choices", lambda n, b: web.json_response({"choices": []}), dict(max_retries=5), "bad_response", 2, 1.0),
    ("null content", lambda n, b: web.json_response({"choices": [{"message": {"content": None}}]}),
     dict(max_retries=5), "bad_response", 2, 1.0),
    ("hang past the timeout", _hang(3.0), dict(timeout_s=0.3, max_retries=1), "timeout", 2, 1.5),
]


@pytest.mark.parametrize("name, script, kwargs, kind, requests, bound_s", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_scores_nan_and_is_counted(name, script, kwargs, kind, requests, bound_s):
    with FaultInjectionServer(script) as server:
        (score,), client, seconds = _score(server.base_url, **kwargs)
        assert server.requests == requests
    assert math.isnan(score)
    assert seconds < bound_s
    assert client.stats.failed == 1 and dict(client.stats.failures) == {kind: 1}
    assert client.stats.requests == requests and client.stats.retries == requests - 1
    summary = client.stats.summary()
    assert summary["trm/failed"] == 1 and summary[f"trm/failed_{kind}"] == 1
    assert math.isnan(summary["trm/latency_p50_s"])


def test_refused_connection_is_retried_then_nan():
    port = free_port()  # nothing listens there
    (score,), client, seconds = _score(f"http://127.0.0.1:{port}/v1", max_retries=3)
    assert math.isnan(score) and seconds < 2.0
    assert dict(client.stats.failures) == {"connection": 1} and client.stats.requests == 4


def test_429_then_success_is_retried():
    script = lambda n, body: web.Response(status=429, text="slow down") if n == 0 else "<answer>0.7</answer>"
    with FaultInjectionServer(script) as server:
        (score,), client, _ = _score(server.base_url, max_retries=3)
        assert server.requests == 2
    assert score == pytest.approx(0.7)
    assert client.stats.failed == 0 and client.stats.retries == 1 and client.stats.errors == {"http_429": 1}


def test_retry_after_is_honoured():
    def script(n, body):
        return web.Response(status=503, headers={"Retry-After": "0.4"}) if n == 0 else "<answer>0.3</answer>"

    with FaultInjectionServer(script) as server:
        (score,), _, seconds = _score(server.base_url, backoff_max_s=1.0)
    assert score == pytest.approx(0.3) and 0.4 <= seconds < 1.5


def test_total_deadline_bounds_an_item():
    with FaultInjectionServer(_hang(3.0)) as server:
        (score,), client, seconds = _score(server.base_url, timeout_s=0.3, max_retries=50, deadline_s=1.0)
    assert math.isnan(score) and seconds < 1.4
    assert client.stats.failed == 1 and set(client.stats.failures) <= {"timeout", "deadline"}


def test_out_of_range_score_is_clipped_and_counted():
    with FaultInjectionServer(lambda n, body: "1.7") as server:
        (score,), client, _ = _score(server.base_url)
    assert score == 1.0 and client.stats.clipped == 1 and client.stats.failed == 0


def test_bad_image_fails_only_its_item(tmp_path):
    items = [ITEM, ThinkingRewardItem("q", "r", (str(tmp_path / "missing.png"),)), ITEM]
    with FaultInjectionServer(lambda n, body: "<answer>0.4</answer>") as server:
        scores, client, _ = _score(server.base_url, items)
        assert server.requests == 2
    assert scores[0] == scores[2] == pytest.approx(0.4) and math.isnan(scores[1])
    assert dict(client.stats.failures) == {"bad_input": 1}


def test_mixed_batch_keeps_order_and_fails_only_the_bad_items():
    """Replies arrive shuffled (random delays); scores come back in item order, NaN exactly where it failed."""
    rng = random.Random(0)

    async def script(n, body):
        text = body["messages"][-1]["content"][-1]["text"]
        k = int(text.split("Question: item ")[1].split("\n")[0])
        await asyncio.sleep(rng.uniform(0, 0.05))
        if k % 7 == 3:
            return web.Response(status=400, text="injected")
        return f"<answer>{k % 11 / 10:.1f}</answer>"

    items = [ThinkingRewardItem(f"item {k}", f"<think>{k}</think><answer>{k}</answer>") for k in range(60)]
    with FaultInjectionServer(script) as server:
        scores, client, _ = _score(server.base_url, items, max_concurrency=16)
    for k, score in enumerate(scores):
        if k % 7 == 3:
            assert math.isnan(score), k
        else:
            assert score == pytest.approx(k % 11 / 10), k
    assert client.stats.failed == sum(k % 7 == 3 for k in range(60))
    assert client.stats.scored == len(items) - client.stats.failed


def test_concurrency_cap_is_respected():
    async def script(n, body):
        await asyncio.sleep(0.05)
        return "<answer>0.5</answer>"

    items = [ITEM] * 40
    with FaultInjectionServer(script) as server:
        scores, _, seconds = _score(server.base_url, items, max_concurrency=5)
        assert server.max_in_flight == 5
    assert scores == [0.5] * 40
    assert seconds < 40 * 0.05 / 2  # concurrent, not one at a time


def test_concurrency_cap_holds_across_concurrent_calls():
    """verl's reward loop scores one sample per call, many calls at once: the cap is the client's, not the call's."""

    async def script(n, body):
        await asyncio.sleep(0.05)
        return "<answer>0.5</answer>"

    async def many_calls(client):
        return await asyncio.gather(*(client.score([ITEM]) for _ in range(20)))

    with FaultInjectionServer(script) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=3, **FAST)
        assert asyncio.run(many_calls(client)) == [[0.5]] * 20
        assert server.max_in_flight == 3
        assert asyncio.run(many_calls(client)) == [[0.5]] * 20  # a new event loop gets its own cap


def test_request_shape_images_first_then_the_table_4_prompt(tmp_path):
    path = tmp_path / "img.png"
    _image().save(path)
    images = (_image(), _png_bytes(), str(path))
    item = ThinkingRewardItem("How many cubes?", "<think>3 cubes</think><answer>3</answer>", images)
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        _score(server.base_url, [item], max_tokens=16)
        (body,) = server.bodies
    assert body["model"] == "trm" and body["temperature"] == 0 and body["max_tokens"] == 16
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    *image_parts, text = user["content"]
    assert [part["type"] for part in image_parts] == ["image_url"] * 3  # every image, not only the first
    assert all(part["image_url"]["url"].startswith("data:image/png;base64,") for part in image_parts)
    assert text == {"type": "text", "text": build_trm_prompt(item.question, item.response)}


def test_api_key_is_sent_but_never_shown(caplog, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    caplog.set_level(logging.DEBUG)
    echo = lambda n, body: web.Response(status=500 if n < 2 else 400, text=f"denied key {SECRET}")
    with FaultInjectionServer(echo) as server:
        client = ThinkingRewardClient(server.base_url, "trm", api_key=SECRET, max_retries=1, **FAST)
        (score,) = client.score_sync([ITEM])
        assert math.isnan(score) and server.headers[0]["Authorization"] == f"Bearer {SECRET}"
        monkeypatch.setenv(API_KEY_ENV, SECRET)
        from_env = ThinkingRewardClient(server.base_url, "trm", max_retries=0, **FAST)
        from_env.score_sync([ITEM])
        assert server.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    shown_anywhere = (repr(client), str(client), repr(vars(client)), repr(from_env), repr(client.stats),
                      json.dumps(client.stats.summary()), caplog.text)
    for shown in shown_anywhere:
        assert SECRET not in shown
    assert "***" in repr(client) and "denied key" in caplog.text  # the reply was logged, redacted
    with pytest.raises(RuntimeError) as info:
        asyncio.run(_inside_loop(client))
    assert SECRET not in str(info.value)


async def _inside_loop(client: ThinkingRewardClient):
    client.score_sync([ITEM])


def test_no_key_sends_no_authorization_header(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        _score(server.base_url)
        assert "Authorization" not in server.headers[0]


def test_stats_reset_and_empty_input():
    with FaultInjectionServer(lambda n, body: "<answer>0.2</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", **FAST)
        assert client.score_sync([]) == [] and client.stats.requests == 0
        assert asyncio.run(client.score([ITEM, ITEM])) == [0.2, 0.2]
    assert client.stats.summary()["trm/requests"] == 2 and len(client.stats.latencies_s) == 2
    client.stats.reset()
    assert client.stats.summary()["trm/requests"] == 0 and not client.stats.latencies_s


# ----------------------------------------------------------------------------- prompt and parser


def test_prompt_is_table_4_with_question_and_response():
    prompt = build_trm_prompt("What is {x}?", "<think>x = 2</think><answer>2</answer>")
    assert prompt.startswith(TRM_INSTRUCTION)
    for wording in (
        "You are an expert reasoning evaluator. I will give you a multimodal question and an answer.",
        "You should focus on whether the reasoning process is good rather than whether the final answer is correct.",
        "1. Logical Soundness: Does each step follow logically from the previous one?",
        "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?",
        "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?",
        "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality",
        "(e.g., 0.3 for significant flaws, 0.7 for minor errors)",
        "Be strict, reward the good process and punish the bad one.",
        "You should only output the score without any explanation.",
    ):
        assert wording in prompt
    assert "Question: What is {x}?\nReasoning process: <think>x = 2</think><answer>2</answer>\n" in prompt
    assert prompt.endswith("Your response format: <answer>your_score</answer>")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>0.7</answer>", 0.7),
        ("<answer> 1 </answer>", 1.0),
        ("<ANSWER>0.30</ANSWER>", 0.3),
        ("<answer>0.75</answer>", 0.75),  # not snapped to the 0.1 grid
        ("\\boxed{0.3}", 0.3),
        ("\\box{1}", 1.0),
        ("The score is \\boxed{0.4}.", 0.4),
        ("<think>solid</think> 0.6", 0.6),
        ("<think>solid</think><answer>0.6</answer>", 0.6),
        ("Score: 0.9", 0.9),
        ("0.8", 0.8),
        ("**0.8**", 0.8),
        ("0.8.", 0.8),
        ("0.8\nThe reasoning is fine.", 0.8),
        (".5", 0.5),
        ("1.7", 1.0),  # clipped like the reference
        ("<answer>-0.2</answer>", 0.0),
        ("<answer>x</answer>", None),
        ("lorem ipsum", None),
        ("I think step 3 is wrong", None),  # no score shape: unparseable, not 1.0
        ("", None),
        ("   ", None),
        ("<answer>nan</answer>", None),
    ],
)
def test_parse_score(text, expected):
    value = parse_score(text)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_client_pickles_for_ray_workers():
    import pickle

    client = pickle.loads(pickle.dumps(ThinkingRewardClient("http://127.0.0.1:1/v1", "trm", api_key=SECRET)))
    assert client._api_key.value == SECRET and client.max_concurrency == 64
    with FaultInjectionServer(lambda n, body: "<answer>0.4</answer>") as server:
        copy = pickle.loads(pickle.dumps(ThinkingRewardClient(server.base_url, "trm")))
        assert copy.score_sync([ITEM]) == [0.4]


def test_client_rejects_bad_settings():
    for kwargs in (dict(max_concurrency=0), dict(timeout_s=0), dict(max_retries=-1), dict(deadline_s=0)):
        with pytest.raises(ValueError):
            ThinkingRewardClient("http://127.0.0.1:1/v1", "trm", **kwargs)
