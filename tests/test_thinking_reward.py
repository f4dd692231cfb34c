"""The thinking-reward-model client: a real OpenAI-compatible server, injected faults, the prompt, the parser."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import random
import threading
import time

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from sophiavl_verl.thinking_reward import (
    API_KEY_ENV,
    TRM_INSTRUCTION,
    ThinkingRewardClient,
    ThinkingRewardItem,
    build_trm_prompt,
    parse_score,
)
from sophiavl_verl.tools.local_server import LocalOpenAIServer, ServerStartError, free_port
from sophiavl_verl.tools.tiny_vl import synthetic_trm_examples

from support.fault_injection import VLLM_NO_MODEL, VLLM_TOO_LONG, FaultInjectionServer

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
    items = [ThinkingRewardItem(q, r, images) for q, r, images in examples]
    assert any(len(item.images) == 0 for item in items) and any(len(item.images) == 2 for item in items)
    client = ThinkingRewardClient(real_server.base_url, real_server.model, max_concurrency=4, timeout_s=120)
    scores = client.score_sync(items)
    assert client.stats.failed == 0, client.stats
    assert all(0.0 <= s <= 1.0 for s in scores)  # what it judges is tested in test_trm_sft.py
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
    def script(n, body):
        return web.Response(status=429, text="slow down") if n == 0 else "<answer>0.7</answer>"

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


def test_out_of_range_reply_is_missing_and_counted_unless_clipping_is_asked():
    replies = {"high": "1.7", "low": "<answer>-1</answer>", "fine": "<answer>0.3</answer>"}
    items = [ThinkingRewardItem(name, "r") for name in replies]

    def script(n, body):
        return replies[_question_of(body)]

    with FaultInjectionServer(script) as server:
        scores, client, _ = _score(server.base_url, items)
        clipped, clipping, _ = _score(server.base_url, items, clip_scores=True)
        assert server.requests == 6  # not retried: the same prompt at temperature 0 gives the same reply
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2] == pytest.approx(0.3)
    assert dict(client.stats.failures) == {"out_of_range": 2} and client.stats.clipped == 0
    assert client.stats.summary()["trm/failed_out_of_range"] == 2
    assert clipped == [1.0, 0.0, pytest.approx(0.3)] and clipping.stats.clipped == 2 and clipping.stats.failed == 0


def _question_of(body: dict) -> str:
    """The question of a request made by the client (the line after "Question: " in its text part)."""
    text = next(part["text"] for part in body["messages"][-1]["content"] if part["type"] == "text")
    return text.split("Question: ", 1)[1].split("\n", 1)[0]


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


# The two request layouts, written out from the paper (Table 4) and from the authors' get_process_reward
# (kxfan2002/SophiaVL-R1 a818494, verl/workers/reward/custom.py), for LAYOUT_ITEM.
LAYOUT_ITEM_IMAGES = (_image((10, 20, 30)), _png_bytes((40, 50, 60)))
LAYOUT_ITEM = ThinkingRewardItem(
    " How many cubes, at $2 each? ", "<think>I count $3$ cubes {so 3}.</think><answer>3</answer>\n", LAYOUT_ITEM_IMAGES
)
PAPER_TEXT = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is to "
    "judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning process is "
    "good rather than whether the final answer is correct.\nEvaluation Criteria:\n"
    "1. Logical Soundness: Does each step follow logically from the previous one?\n"
    "2. Correct Reasoning: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?\n"
    "4. Language Consistency: Is the reasoning process conducted in a single, consistent language without mixing "
    "different languages?\n"
    "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?\n"
    "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality, where:\n"
    "- 0: Completely flawed reasoning.\n- 1: Perfectly sound reasoning.\n"
    "- Intermediate: Reflect partial correctness or minor errors (e.g., 0.3 for significant flaws, 0.7 for minor "
    "errors).\nBe strict, reward the good process and punish the bad one. You should only output the score "
    "without any explanation.\n"
    "Question: How many cubes, at $2 each?\n"
    "Reasoning process: <think>I count $3$ cubes {so 3}.</think><answer>3</answer>\n"
    "Your response format: <answer>your_score</answer>"
)
REFERENCE_TEXT = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is to "
    "judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning process is "
    "good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without "
    "mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without any "
    "explanation.\n"
    "    Question: <image>  How many cubes, at $2 each? \n"
    "    Reasoning process: <think>I count 3 cubes {so 3}.</think><answer>3</answer>\n\n"
    "    Your response format: <answer>your_score</answer>\n    "
)


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + _b64(buffer.getvalue())


@pytest.mark.parametrize("layout", ["paper", "reference"])
def test_request_body_byte_for_byte(layout):
    """The exact JSON body the client POSTs to a server on 127.0.0.1, in each layout."""
    urls = [_png_data_url(LAYOUT_ITEM_IMAGES[0]), "data:image/png;base64," + _b64(LAYOUT_ITEM_IMAGES[1])]
    system = {"role": "system", "content": "You are a helpful assistant."}
    if layout == "paper":  # every image, then Table 4; max_tokens bounds the reply
        content = [*({"type": "image_url", "image_url": {"url": url}} for url in urls),
                   {"type": "text", "text": PAPER_TEXT}]
        expected = {"model": "trm", "messages": [system, {"role": "user", "content": content}],
                    "temperature": 0.0, "max_tokens": 32}
    else:  # the authors' text, then their one image; no max_tokens
        content = [{"type": "text", "text": REFERENCE_TEXT}, {"type": "image_url", "image_url": {"url": urls[0]}}]
        expected = {"model": "trm", "messages": [system, {"role": "user", "content": content}], "temperature": 0.0}
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        scores, _, _ = _score(server.base_url, [LAYOUT_ITEM], prompt=layout)
    assert scores == [0.6]
    assert server.raw_bodies == [json.dumps(expected).encode()]


def test_api_key_is_sent_but_never_shown(caplog, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    caplog.set_level(logging.DEBUG)
    def echo(n, body):
        return web.Response(status=500 if n < 2 else 400, text=f"denied key {SECRET}")

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


@pytest.mark.parametrize("url", ["http://user:hunter2-pass@127.0.0.1:8000/v1", "http://hunter2-pass@127.0.0.1/v1",
                                 "https://user:hunter2-pass@trm.example/v1/"])
def test_a_base_url_with_credentials_is_refused_without_echoing_them(url, caplog):
    """aiohttp refused such a URL with an API key on every request, inside verl's reward worker; without a key the
    password would show in every message and repr that names the URL."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="credentials") as info:
        ThinkingRewardClient(url, "trm", api_key=SECRET)
    shown = str(info.value) + repr(info.value) + caplog.text
    assert "hunter2" not in shown and "-pass" not in shown and SECRET not in shown


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
        # more than one distinct number after the reasoning, or another scale: ambiguous, so unparseable
        ("The final score is 1 out of 10.", None),
        ("Score: 0.8/10", None),
        ("Score: 0-1 scale, I give 0.3", None),
        ("8/10", None),
        ("Score: 1/1", None),
        ("<answer>0.7</answer><answer>0.2</answer>", None),
        ("<answer>0.7</answer>\nStep 3 is weak.", None),
        ("Score: 0.8 (step 2 is weak)", None),
        ("1. Logical soundness: fine\n2. Redundancy: some\nScore: 0.7", None),
        # the reasoning's own numbers are no candidates; one number, stated as a score, is
        ("<think>Steps 1 and 2 hold, step 3 does not.</think><answer>0.6</answer>", 0.6),
        ("Step 2 misreads the chart.</think>\n<answer>0.4</answer>", 0.4),  # no opening tag (Qwen's template)
        ("<think>Step 1 is wrong</think> 0.6", 0.6),
        ("**Score:** 0.7", 0.7),
        ("<answer>0.7</answer> <answer>0.70</answer>", 0.7),  # the same value twice
        ("1" * 500, None),  # not a finite number
    ],
)
def test_parse_score(text, expected):
    value = parse_score(text)
    assert value == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("text", ["1" + " " * 2**16 + "x", "score" + " " * 2**16 + "*" * 2**16 + "x",
                                  "**" * 2**16, "<answer>" + " " * 2**16, "\\boxed{" + " " * 2**16, "1 " * 2**16,
                                  "1" + " *" * 2**16 + "x"], ids=lambda text: repr(text[:10]))
def test_parsing_a_hostile_reply_takes_linear_time(text):
    """The patterns cannot backtrack on a megabyte of spaces (the bare-number one took 5 s on 1000 spaces, cubic)."""
    start = time.perf_counter()
    assert parse_score(text) is None
    assert time.perf_counter() - start < 1.0


def _grid_replies() -> list[str]:
    """The replies the paper's and the reference's prompts ask for, every grid value in every accepted shape."""
    values = ["0", "1", "1.0", *(f"0.{k}" for k in range(10))]
    shapes = ("<answer>{}</answer>", "<answer> {} </answer>",
              "<think>Steps one and two hold.</think><answer>{}</answer>", "<think>ok</think>\n<answer>{}</answer>",
              "\\boxed{{{}}}", "\\box{{{}}}", "\\boxes{{{}}}", "{}", "**{}**", "{}.", "{}\nThe reasoning is sound.",
              "Score: {}", "The score is {}", "<think>ok</think> {}")
    return [shape.format(value) for shape in shapes for value in values]


def test_the_authors_replies_parse_as_their_parser_reads_them():
    """The peer check against the authors' own parser: every reply in the requested shapes gets the score theirs
    reads; where theirs takes the wrong number of an ambiguous reply, this parser finds none."""
    from support.paper_reference import authors_score

    for reply in _grid_replies():
        assert parse_score(reply) is not None and parse_score(reply) == pytest.approx(authors_score(reply)), reply
    for reply, theirs in (("The final score is 1 out of 10.", 1.0), ("Score: 0.8/10", 0.8),
                          ("Score: 0-1 scale, I give 0.3", 0.0), ("Score: 0.3, not 1", 0.3)):
        assert authors_score(reply) == theirs and parse_score(reply) is None, reply


def _finishing(content: str, finish_reason: str):
    message = {"role": "assistant", "content": content}
    return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]})


def test_a_reply_cut_at_max_tokens_is_truncated_never_a_score():
    replies = {
        "cut": ("<think>Score: 1 would be too generous: step 2 misreads the", "length"),
        "cut bare": ("0.", "length"),
        "cut box": ("\\boxed{0.7} because the chart", "length"),  # only a complete <answer> survives a cut
        "complete": ("<answer>0.6</answer>", "length"),  # cut after the answer was complete
        "stopped": ("0.8", "stop"),
    }

    def script(n, body):
        return _finishing(*replies[_question_of(body)])

    items = [ThinkingRewardItem(name, "r") for name in replies]
    with FaultInjectionServer(script) as server:
        scores, client, _ = _score(server.base_url, items, max_retries=3)
        assert server.requests == len(replies)  # not retried: the same prompt is cut the same way
    assert [math.isnan(s) for s in scores] == [True, True, True, False, False]
    assert scores[3:] == [0.6, 0.8] and dict(client.stats.failures) == {"truncated": 3}
    assert client.stats.summary()["trm/failed_truncated"] == 3


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


# ---------------------------------------------------------------------------------- malformed items


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
    good = ThinkingRewardItem("fine", "r", (_png_bytes(),))
    items = [good, *bad, good]
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        scores, client, _ = _score(server.base_url, items)
        assert server.requests == 2  # only the good items were sent
        sent = [part["image_url"]["url"] for body in server.bodies for part in body["messages"][-1]["content"]
                if part["type"] == "image_url"]
    assert scores[0] == scores[-1] == pytest.approx(0.6)
    assert all(math.isnan(s) for s in scores[1:-1])
    assert dict(client.stats.failures) == {"bad_input": len(bad)}
    assert sent == [f"data:image/png;base64,{_b64(_png_bytes())}"] * 2


# --------------------------------------------------------------------------- the pool and the images


def _jpeg_bytes(color=(10, 120, 240), size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _sent_images(server) -> list[bytes]:
    """The decoded bytes of every image_url the server received, in order."""
    out = []
    for body in server.bodies:
        for part in body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                out.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
    return out


def test_single_item_calls_share_one_pool_of_kept_alive_connections():
    """verl's reward loop makes one score() call per response: they must reuse connections, not open one each."""

    async def script(n, body):
        await asyncio.sleep(0.01)
        return "<answer>0.5</answer>"

    async def one_call_per_response(client, n):
        return await asyncio.gather(*(client.score([ITEM]) for _ in range(n)))

    with FaultInjectionServer(script) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=4, **FAST)
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(one_call_per_response(client, 200)) == [[0.5]] * 200
            assert loop.run_until_complete(one_call_per_response(client, 100)) == [[0.5]] * 100  # a later step
        finally:
            client.close()
            loop.close()
        assert server.requests == 300 and server.max_in_flight == 4
        assert server.connections <= 4 and client.stats.connections == server.connections
    assert client.stats.summary()["trm/connections"] == server.connections


def test_real_server_sees_few_connections_for_many_calls(real_server):
    """The real `transformers serve` (uvicorn) logs each request's client address: count distinct ports."""
    import re

    before = real_server.log_path.read_text(errors="replace")
    client = ThinkingRewardClient(real_server.base_url, real_server.model, max_concurrency=2, timeout_s=120)

    async def calls():
        return await asyncio.gather(*(client.score([ITEM]) for _ in range(12)))

    scores = asyncio.run(calls())
    assert client.stats.failed == 0 and all(0.0 <= s <= 1.0 for (s,) in scores)
    new = real_server.log_path.read_text(errors="replace")[len(before):]
    ports = re.findall(r"127\.0\.0\.1:(\d+) - \"POST /v1/chat/completions", new)
    assert len(ports) == 12
    assert len(set(ports)) <= 2 and client.stats.connections == len(set(ports))


def test_pool_closes_when_the_loop_shuts_down_or_on_close():
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", **FAST)
        assert asyncio.run(client.score([ITEM] * 3)) == [0.5] * 3  # asyncio.run shuts its loop down
        assert _wait_until(lambda: server.open_connections == 0)
        assert client.score_sync([ITEM]) == [0.5]  # verl's long-lived loop: the pool stays open ...
        assert server.open_connections == 1
        client.close()  # ... until the client is closed (or the interpreter exits)
        assert _wait_until(lambda: server.open_connections == 0)
        assert client.score_sync([ITEM]) == [0.5]  # and a closed client opens a new pool when used again
        client.close()


def test_pool_is_closed_at_interpreter_exit_without_warnings(tmp_path):
    """A reward worker never closes its client: the pool is closed at exit, without aiohttp's unclosed errors."""
    import subprocess
    import sys

    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        code = (
            "import asyncio, gc\n"
            "from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem\n"
            "loop = asyncio.new_event_loop()\n"  # like verl's get_event_loop(): never closed
            f"client = ThinkingRewardClient({server.base_url!r}, 'trm')\n"
            "item = ThinkingRewardItem('q', 'r')\n"
            "print(loop.run_until_complete(client.score([item])))\n"
            f"dropped = ThinkingRewardClient({server.base_url!r}, 'trm')\n"
            "print(asyncio.run(dropped.score([item])), loop.run_until_complete(dropped.score([item])))\n"
            "from sophiavl_verl import thinking_reward\n"
            "print(len(thinking_reward._OPEN_POOLS))\n"
            "del dropped; gc.collect()\n"  # a client collected with its pool open ...
            "print(loop.run_until_complete(client.score([item])))\n"  # ... which this loop's next call closes
            "print(len(thinking_reward._OPEN_POOLS))\n"
        )
        done = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["[0.5]", "[0.5]", "[0.5]", "2", "[0.5]", "1"]
        assert "Unclosed" not in done.stderr and "never awaited" not in done.stderr, done.stderr
        assert _wait_until(lambda: server.open_connections == 0)


def _wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_groups_image_is_prepared_once_from_separately_deserialized_copies():
    """A group's 8 responses reach a reward worker as 8 unpickled copies of its image (equal, not identical)."""
    import pickle

    groups = {f"g{g}": _image((40 * g, 90, 160), side=48) for g in range(3)}
    items = [ThinkingRewardItem(uid, f"response {k}", (pickle.loads(pickle.dumps(image)),))
             for uid, image in groups.items() for k in range(8)]
    assert items[0].images[0] is not items[1].images[0]

    async def one_call_per_response(client):
        return await asyncio.gather(*(client.score([item]) for item in items))

    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=8, **FAST)
        assert asyncio.run(one_call_per_response(client)) == [[0.5]] * 24
        sent = _sent_images(server)
    assert client.stats.image_encodes == 3 and client.stats.images_prepared == 3
    assert client.stats.image_cache_hits == 21
    expected = {}
    for uid, image in groups.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        expected[uid] = buffer.getvalue()
    assert sorted(sent) == sorted(png for png in expected.values() for _ in range(8))


def test_original_bytes_are_sent_as_they_are_and_never_re_encoded(tmp_path):
    jpeg, png = _jpeg_bytes(), _png_bytes()
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg)
    items = [ThinkingRewardItem("q", f"r{k}", (bytes(bytearray(jpeg)), png)) for k in range(4)]
    items.append(ThinkingRewardItem("q", "from a file", (str(path),)))
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        scores, client, _ = _score(server.base_url, items)
        urls = [part["image_url"]["url"] for body in server.bodies for part in body["messages"][-1]["content"]
                if part["type"] == "image_url"]
        sent = _sent_images(server)
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
            image = _jpeg_bytes(color=(step, 255 - step, 7 * step % 256), size=(160, 120))
            assert client.score_sync([ThinkingRewardItem("q", "r", (image,))] * 2) == [0.5, 0.5]
            sizes.append((len(client._images), client._images.nbytes))
            # Least recently used out first: the newest images whose JSON data URLs fit in the budget.
            kept.append(len(b'"data:image/jpeg;base64,"') + len(base64.b64encode(image)))
            while sum(kept) > budget:
                kept.pop(0)
            expected.append((len(kept), sum(kept)))
        client.close()
    assert client.stats.images_prepared == 60 and client.stats.image_cache_hits == 60
    assert sizes == expected
    assert 1 < sizes[-1][0] < 60  # it keeps recent images, not all of them


def test_downscaling_to_max_image_pixels_follows_the_reference_rule():
    big = _jpeg_bytes(size=(300, 100))  # 30000 pixels
    small = _jpeg_bytes(size=(50, 40))  # 2000 pixels: under the cap, sent as it is
    items = [ThinkingRewardItem("q", "r", (big,)), ThinkingRewardItem("q", "r", (small,))]
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        _, client, _ = _score(server.base_url, items, max_image_pixels=12000)
        sent = _sent_images(server)
    factor = math.sqrt(12000 / 30000)  # EasyR1's process_image: sides scaled by sqrt(max / (w * h)), truncated
    shrunk = next(Image.open(io.BytesIO(data)) for data in sent if data != small)
    assert shrunk.format == "PNG" and shrunk.size == (int(300 * factor), int(100 * factor)) == (189, 63)
    assert small in sent
    assert client.stats.images_downscaled == 1 and client.stats.image_encodes == 1


# ------------------------------------------------------------------------------ faults on one pool


SHARED_POOL_FAULTS = [  # (case, script, kind, requests with max_retries=2)
    ("500", _status(500), "http_5xx", 3),
    ("429", _status(429), "http_429", 3),
    ("400", _status(400, "bad request"), "http_4xx", 1),
    ("garbage", lambda n, b: "lorem ipsum", "unparseable", 1),
    ("empty", lambda n, b: web.Response(body=b""), "bad_response", 2),
    ("hang", _hang(30.0), "timeout", 3),
    ("out of range", lambda n, b: "<answer>7</answer>", "out_of_range", 1),
]


def test_every_fault_ends_on_time_nan_and_counted_on_one_shared_pool():
    cases = {case: script for case, script, _, _ in SHARED_POOL_FAULTS}

    def script(n, body):
        question = _question_of(body)
        return cases[question](n, body) if question in cases else "<answer>0.9</answer>"

    with FaultInjectionServer(script) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=2, timeout_s=0.3, max_retries=2, **FAST)
        for case, _, kind, requests in SHARED_POOL_FAULTS:
            before, failed_before = server.requests, dict(client.stats.failures)
            start = time.monotonic()
            (score,) = client.score_sync([ThinkingRewardItem(case, "r")])
            assert time.monotonic() - start < 3 * 0.3 + 1.0, case
            assert math.isnan(score) and server.requests - before == requests, case
            assert client.stats.failures[kind] == failed_before.get(kind, 0) + 1, case
        # the pool survives all of it: concurrent healthy calls still go through, on at most 2 (+1) connections
        assert client.score_sync([ThinkingRewardItem("fine", "r")] * 6) == [0.9] * 6
        client.close()
    assert "circuit_open" not in client.stats.failures
    assert client.stats.failed == len(SHARED_POOL_FAULTS)


def test_server_dropping_kept_alive_connections_costs_no_retry_and_no_score():
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>", drop_keep_alive=True) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_retries=0, **FAST)
        scores = [client.score_sync([ITEM]) for _ in range(10)]
        client.close()
        assert server.dropped == 9 and server.requests == 10
    assert scores == [[0.5]] * 10  # with max_retries=0: a dropped pooled connection is not a failed attempt
    assert client.stats.errors == {"stale_connection": 9} and client.stats.retries == 0


# ------------------------------------------------------------------------------------ outages


def test_deadline_bounds_a_whole_call_including_waiting_for_a_slot():
    with FaultInjectionServer(_hang(1.0)) as server:  # answers, but slowly: one at a time takes 1 s each
        scores, client, seconds = _score(server.base_url, [ITEM] * 6, max_concurrency=1, timeout_s=5, deadline_s=2.5)
    assert scores[:2] == [0.5, 0.5] and all(math.isnan(s) for s in scores[2:])
    assert dict(client.stats.failures) == {"deadline": 4} and seconds < 2.5 + 0.5


def test_retry_after_is_honoured_beyond_the_backoff_cap():
    def script(n, body):
        return web.Response(status=503, headers={"Retry-After": "1.2"}) if n == 0 else "<answer>0.3</answer>"

    with FaultInjectionServer(script) as server:
        (score,), _, seconds = _score(server.base_url, backoff_max_s=0.05)
    assert score == pytest.approx(0.3) and seconds >= 1.2


def test_retry_after_past_the_deadline_fails_at_once():
    with FaultInjectionServer(_status(429, headers={"Retry-After": "30"})) as server:
        (score,), client, seconds = _score(server.base_url, deadline_s=3.0)
        assert server.requests == 1
    assert math.isnan(score) and dict(client.stats.failures) == {"http_429": 1} and seconds < 1.0


def test_circuit_breaker_fails_fast_on_a_hanging_trm_then_probes_and_recovers():
    healthy = threading.Event()

    async def script(n, body):
        if not healthy.is_set():
            await asyncio.sleep(60)  # accepts connections, never answers
        return "<answer>0.8</answer>"

    loop = asyncio.new_event_loop()  # a reward worker's loop: it keeps running between calls
    with FaultInjectionServer(script) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=4, timeout_s=0.4, max_retries=3,
                                      breaker_failures=4, breaker_cooldown_s=1.0, **FAST)
        try:
            start = time.monotonic()
            scores = loop.run_until_complete(client.score([ITEM] * 40))
            seconds = time.monotonic() - start
            first_wave = server.requests
            assert all(math.isnan(s) for s in scores)
            assert 4 <= first_wave <= 8  # the first wave, not 40 items x 4 attempts
            assert client.stats.failures["circuit_open"] >= 32 and seconds < 3.0
            assert all(math.isnan(s) for s in loop.run_until_complete(client.score([ITEM] * 5)))  # cooling down
            assert server.requests == first_wave and client.stats.probes == 0
            healthy.set()
            time.sleep(1.1)  # the cool-down passes: the next call fails fast and starts a probe in the background
            assert all(math.isnan(s) for s in loop.run_until_complete(client.score([ITEM] * 3)))
            state = client._loops[loop]
            loop.run_until_complete(asyncio.wait_for(state.probe, 10))
            assert client.stats.probes == 1 and not state.breaker.is_open
            assert loop.run_until_complete(client.score([ITEM] * 3)) == [0.8] * 3
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()


# ------------------------------------------------------------------------------ permanent errors

@pytest.mark.parametrize(("status", "error", "kind"), [
    (400, VLLM_TOO_LONG, "context_length"),
    (404, VLLM_NO_MODEL, "unknown_model"),
    (500, {"error": VLLM_TOO_LONG}, "context_length"),  # a proxy that wraps the upstream's 400 in a 500
])
def test_permanent_errors_are_named_and_not_retried(status, error, kind):
    with FaultInjectionServer(lambda n, body: web.json_response(error, status=status)) as server:
        (score,), client, _ = _score(server.base_url, max_retries=5)
        assert server.requests == 1
    assert math.isnan(score) and dict(client.stats.failures) == {kind: 1}


def test_mode_a_router_500_for_a_refused_request_fails_fast(verl_router):
    """verl's router turns the upstream's 400 (context too long) into its bodiless 500: two tries, not six."""

    async def script(n, body):
        if _question_of(body).startswith("too long"):
            await asyncio.sleep(0.3)  # the others are answered first
            return web.json_response(VLLM_TOO_LONG, status=400)
        return "<answer>0.7</answer>"

    address, server = verl_router(script)
    url = f"http://{address}/v1"
    items = [ThinkingRewardItem(f"fine {k}", "r") for k in range(6)] + [ThinkingRewardItem("too long", "r")] * 2
    scores, client, _ = _score(url, items, max_retries=5, max_concurrency=8)
    assert scores[:6] == [0.7] * 6 and math.isnan(scores[6]) and math.isnan(scores[7])
    assert dict(client.stats.failures) == {"upstream_rejected": 2}
    assert server.requests == 6 + 2 * 2 and client.stats.errors["router_500"] == 4


def test_mode_a_unknown_model_behind_the_router_fails_fast(verl_router):
    def script(n, body):
        if body["model"] != FaultInjectionServer.model:
            return web.json_response(VLLM_NO_MODEL, status=404)
        return "<answer>0.7</answer>"

    address, server = verl_router(script)
    scores, client, _ = _score(f"http://{address}/v1", [ITEM] * 10, max_retries=5, max_concurrency=2)
    assert all(math.isnan(s) for s in scores)
    assert dict(client.stats.failures) == {"unknown_model": 10}
    assert server.requests <= 2 and server.models_requests == 1  # the first wave; then nothing is sent


def test_responses_waiting_for_their_groups_image_hold_no_thread(monkeypatch):
    """While one thread encodes a group's image, the other responses await it without blocking executor threads
    (verl's manager decodes responses and computes outcome rewards on the same default executor)."""
    import concurrent.futures

    from sophiavl_verl import thinking_reward

    encoding, encoded = threading.Event(), threading.Event()
    encode = thinking_reward._encode_pil

    def slow_encode(image, max_pixels):
        encoding.set()
        time.sleep(1.0)
        try:
            return encode(image, max_pixels)
        finally:
            encoded.set()

    monkeypatch.setattr(thinking_reward, "_encode_pil", slow_encode)

    async def group_and_other_work(client):
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=3))
        image = _image()
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
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        _, client, _ = _score(server.base_url, items, max_concurrency=1)
        sent = _sent_images(server)
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
            client = ThinkingRewardClient(server.base_url, "trm", max_concurrency=16, max_retries=0, **FAST)
            items = [ThinkingRewardItem("q", ITEM.response, (image,)) for _ in range(16)]
            assert asyncio.run(client.score(items)) == [0.5] * 16, client.stats.summary()
            assert client.stats.image_encodes == 1
def test_the_one_quantile_is_numpys_linear_interpolation():
    """``quantile`` (the client's, the estimator's and the audit's latency percentiles) equals numpy's default."""
    import numpy as np

    from sophiavl_verl.thinking_reward import quantile

    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)), abs=1e-12)
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input
    assert math.isnan(quantile([], 0.5))


# ------------------------------------------------------------------------------- hostile replies


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
        if _question_of(body) == "bomb":
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        return "<answer>0.4</answer>"

    items = [ThinkingRewardItem("bomb", "r"), ITEM]
    with FaultInjectionServer(script) as server:
        ((scores, client, seconds), peak) = _peak_traced_bytes(lambda: _score(server.base_url, items, timeout_s=30))
        assert server.requests == 2  # not retried
    assert math.isnan(scores[0]) and scores[1] == pytest.approx(0.4)
    assert dict(client.stats.failures) == {"bad_response": 1} and client.max_reply_bytes == 2**20
    assert peak < 32 * 2**20, peak  # the cap (1 MiB) and a few chunks, not 256 MiB
    assert seconds < 10


def test_an_endless_body_fails_at_the_size_cap_not_at_the_timeout():
    async def endless():
        while True:
            yield b" " * 2**16
            await asyncio.sleep(0.001)

    with FaultInjectionServer(lambda n, body: web.Response(body=endless())) as server:
        ((scores, client, seconds), peak) = _peak_traced_bytes(
            lambda: _score(server.base_url, timeout_s=3.0, max_reply_bytes=256 * 1024))
        assert server.requests == 1
    assert math.isnan(scores[0]) and dict(client.stats.failures) == {"bad_response": 1}
    assert seconds < 2.0 and peak < 16 * 2**20, (seconds, peak)


def test_max_reply_bytes_caps_what_is_read_after_decompression():
    padded = json.dumps({"choices": [{"message": {"content": "<answer>0.5</answer>"}}], "pad": " " * 4000})
    with FaultInjectionServer(lambda n, body: web.Response(text=padded, content_type="application/json")) as server:
        (fits,), _, _ = _score(server.base_url, max_reply_bytes=len(padded))
        (over,), client, _ = _score(server.base_url, max_reply_bytes=len(padded) - 1)
        compressed = web.Response(body=__import__("gzip").compress(padded.encode()),
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        server.script = lambda n, body: compressed
        (zipped,), zipped_client, _ = _score(server.base_url, max_reply_bytes=1000)  # 100 bytes on the wire
    assert fits == 0.5 and math.isnan(over) and dict(client.stats.failures) == {"bad_response": 1}
    assert math.isnan(zipped) and dict(zipped_client.stats.failures) == {"bad_response": 1}
    with pytest.raises(ValueError, match="max_reply_bytes"):
        ThinkingRewardClient("http://127.0.0.1:1/v1", "trm", max_reply_bytes=0)


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
        question = _question_of(body)
        if question in HOSTILE_BODIES:
            return web.Response(body=HOSTILE_BODIES[question], content_type="application/json")
        return "<answer>0.3</answer>"

    items = [ThinkingRewardItem(name, "r") for name in names] + [ITEM]
    with FaultInjectionServer(script) as server:
        client = ThinkingRewardClient(server.base_url, "trm", max_retries=0, **FAST)
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
        (score,), client, seconds = _score(server.base_url, max_retries=5)
        assert server.requests == 10  # aiohttp gives up at its 10th redirect: one request, not six with retries
    assert math.isnan(score) and dict(client.stats.failures) == {"bad_response": 1} and client.stats.retries == 0
