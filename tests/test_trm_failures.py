"""Failures by kind: retries, Retry-After, the deadline, the circuit breaker, permanent errors, verl's router."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import pytest
from aiohttp import web

from sophiavl_verl.thinking_reward import ThinkingRewardItem, TRMFailure

from support.fault_injection import VLLM_NO_MODEL, VLLM_TOO_LONG, FaultInjectionServer
from support.net import free_port
from support.trm import FAST, ITEM, hang, make_client, question_of, score_once, status

pytestmark = pytest.mark.timeout(600)


FAILURES = [
    ("500 forever", status(500), dict(max_retries=3), "http_5xx", 4, 2.0),
    ("503 forever", status(503), dict(max_retries=2), "http_5xx", 3, 2.0),
    ("429 forever", status(429), dict(max_retries=3), "http_429", 4, 2.0),
    ("400, not retried", status(400, "bad request"), dict(max_retries=5), "http_4xx", 1, 1.0),
    ("401, not retried", status(401, "no key"), dict(max_retries=5), "http_4xx", 1, 1.0),
    ("garbage reply text", lambda n, b: "lorem ipsum dolor", dict(max_retries=5), "unparseable", 1, 1.0),
    ("garbage body", lambda n, b: web.Response(text="<html>oops</html>"), dict(max_retries=5), "bad_response", 2, 1.0),
    ("empty body", lambda n, b: web.Response(body=b""), dict(max_retries=5), "bad_response", 2, 1.0),
    ("no choices", lambda n, b: web.json_response({"choices": []}), dict(max_retries=5), "bad_response", 2, 1.0),
    ("null content", lambda n, b: web.json_response({"choices": [{"message": {"content": None}}]}),
     dict(max_retries=5), "bad_response", 2, 1.0),
    ("hang past the timeout", hang(3.0), dict(timeout_s=0.3, max_retries=1), "timeout", 2, 1.5),
]


@pytest.mark.parametrize("name, script, kwargs, kind, requests, bound_s", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_scores_nan_and_is_counted(name, script, kwargs, kind, requests, bound_s):
    with FaultInjectionServer(script) as server:
        (score,), client, seconds = score_once(server.base_url, **kwargs)
        assert server.requests == requests
    assert math.isnan(score)
    assert seconds < bound_s
    assert client.stats.failed == 1 and dict(client.stats.failures) == {kind: 1}
    assert client.stats.requests == requests and client.stats.retries == requests - 1
    summary = client.stats.summary()
    assert summary["trm/failed"] == 1 and summary[f"trm/failed_{kind}"] == 1
    assert math.isnan(summary["trm/latency_p50_s"])


def test_every_failure_kind_is_declared_once_with_its_meaning_and_retry_rule():
    values = [kind.value for kind in TRMFailure]
    assert len(values) == len(set(values)) and all(kind.meaning and kind.retried for kind in TRMFailure)
    assert {kind for *_, kind, _, _ in FAILURES} | {kind for _, _, kind, _ in SHARED_POOL_FAULTS} <= set(values)
    assert TRMFailure("http_429") is TRMFailure.HTTP_429 and TRMFailure.HTTP_429 == "http_429"


def test_refused_connection_is_retried_then_nan():
    port = free_port()  # nothing listens there
    (score,), client, seconds = score_once(f"http://127.0.0.1:{port}/v1", max_retries=3)
    assert math.isnan(score) and seconds < 2.0
    assert dict(client.stats.failures) == {"connection": 1} and client.stats.requests == 4


def test_429_then_success_is_retried():
    def script(n, body):
        return web.Response(status=429, text="slow down") if n == 0 else "<answer>0.7</answer>"

    with FaultInjectionServer(script) as server:
        (score,), client, _ = score_once(server.base_url, max_retries=3)
        assert server.requests == 2
    assert score == pytest.approx(0.7)
    assert client.stats.failed == 0 and client.stats.retries == 1 and client.stats.errors == {"http_429": 1}


@pytest.mark.parametrize(("retry_after", "backoff_max_s", "within_s"), [
    ("0.4", 1.0, 1.5),
    ("1.2", 0.05, math.inf),  # beyond the backoff cap
], ids=["within the backoff cap", "beyond the backoff cap"])
def test_retry_after_is_honoured(retry_after, backoff_max_s, within_s):
    def script(n, body):
        return web.Response(status=503, headers={"Retry-After": retry_after}) if n == 0 else "<answer>0.3</answer>"

    with FaultInjectionServer(script) as server:
        (score,), _, seconds = score_once(server.base_url, backoff_max_s=backoff_max_s)
    assert score == pytest.approx(0.3) and float(retry_after) <= seconds < within_s


def test_retry_after_past_the_deadline_fails_at_once():
    with FaultInjectionServer(status(429, headers={"Retry-After": "30"})) as server:
        (score,), client, seconds = score_once(server.base_url, deadline_s=3.0)
        assert server.requests == 1
    assert math.isnan(score) and dict(client.stats.failures) == {"http_429": 1} and seconds < 1.0


def test_total_deadline_bounds_an_item():
    with FaultInjectionServer(hang(3.0)) as server:
        (score,), client, seconds = score_once(server.base_url, timeout_s=0.3, max_retries=50, deadline_s=1.0)
    assert math.isnan(score) and seconds < 1.4
    assert client.stats.failed == 1 and set(client.stats.failures) <= {"timeout", "deadline"}


def test_deadline_bounds_a_whole_call_including_waiting_for_a_slot():
    with FaultInjectionServer(hang(1.0)) as server:  # answers, but slowly: one at a time takes 1 s each
        scores, client, seconds = score_once(server.base_url, [ITEM] * 6, max_concurrency=1, timeout_s=5,
                                             deadline_s=2.5)
    assert scores[:2] == [0.5, 0.5] and all(math.isnan(s) for s in scores[2:])
    assert dict(client.stats.failures) == {"deadline": 4} and seconds < 2.5 + 0.5


def test_out_of_range_reply_is_missing_and_counted_unless_clipping_is_asked():
    replies = {"high": "1.7", "low": "<answer>-1</answer>", "fine": "<answer>0.3</answer>"}
    items = [ThinkingRewardItem(name, "r") for name in replies]

    def script(n, body):
        return replies[question_of(body)]

    with FaultInjectionServer(script) as server:
        scores, client, _ = score_once(server.base_url, items)
        clipped, clipping, _ = score_once(server.base_url, items, clip_scores=True)
        assert server.requests == 6  # not retried: the same prompt at temperature 0 gives the same reply
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2] == pytest.approx(0.3)
    assert dict(client.stats.failures) == {"out_of_range": 2} and client.stats.clipped == 0
    assert client.stats.summary()["trm/failed_out_of_range"] == 2
    assert clipped == [1.0, 0.0, pytest.approx(0.3)] and clipping.stats.clipped == 2 and clipping.stats.failed == 0


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
        return _finishing(*replies[question_of(body)])

    items = [ThinkingRewardItem(name, "r") for name in replies]
    with FaultInjectionServer(script) as server:
        scores, client, _ = score_once(server.base_url, items, max_retries=3)
        assert server.requests == len(replies)  # not retried: the same prompt is cut the same way
    assert [math.isnan(s) for s in scores] == [True, True, True, False, False]
    assert scores[3:] == [0.6, 0.8] and dict(client.stats.failures) == {"truncated": 3}
    assert client.stats.summary()["trm/failed_truncated"] == 3


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
        scores, client, _ = score_once(server.base_url, items, max_concurrency=16)
    for k, score in enumerate(scores):
        if k % 7 == 3:
            assert math.isnan(score), k
        else:
            assert score == pytest.approx(k % 11 / 10), k
    assert client.stats.failed == sum(k % 7 == 3 for k in range(60))
    assert client.stats.scored == len(items) - client.stats.failed


SHARED_POOL_FAULTS = [  # (case, script, kind, requests with max_retries=2)
    ("500", status(500), "http_5xx", 3),
    ("429", status(429), "http_429", 3),
    ("400", status(400, "bad request"), "http_4xx", 1),
    ("garbage", lambda n, b: "lorem ipsum", "unparseable", 1),
    ("empty", lambda n, b: web.Response(body=b""), "bad_response", 2),
    ("hang", hang(30.0), "timeout", 3),
    ("out of range", lambda n, b: "<answer>7</answer>", "out_of_range", 1),
]


def test_every_fault_ends_on_time_nan_and_counted_on_one_shared_pool():
    cases = {case: script for case, script, _, _ in SHARED_POOL_FAULTS}

    def script(n, body):
        question = question_of(body)
        return cases[question](n, body) if question in cases else "<answer>0.9</answer>"

    with FaultInjectionServer(script) as server:
        client = make_client(server.base_url, "trm", max_concurrency=2, timeout_s=0.3, max_retries=2, **FAST)
        for case, _, kind, requests in SHARED_POOL_FAULTS:
            before, failed_before = server.requests, dict(client.stats.failures)
            start = time.monotonic()
            (score,) = client.score_sync([ThinkingRewardItem(case, "r")])
            assert time.monotonic() - start < 3 * 0.3 + 1.0, case
            assert math.isnan(score) and server.requests - before == requests, case
            assert client.stats.failures[kind] == failed_before.get(kind, 0) + 1, case
        # the pool survives all of it: concurrent healthy calls still go through
        assert client.score_sync([ThinkingRewardItem("fine", "r")] * 6) == [0.9] * 6
        client.close()
    assert "circuit_open" not in client.stats.failures
    assert client.stats.failed == len(SHARED_POOL_FAULTS)


def test_server_dropping_kept_alive_connections_costs_no_retry_and_no_score():
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>", drop_keep_alive=True) as server:
        client = make_client(server.base_url, "trm", max_retries=0, **FAST)
        scores = [client.score_sync([ITEM]) for _ in range(10)]
        client.close()
        assert server.dropped == 9 and server.requests == 10
    assert scores == [[0.5]] * 10  # with max_retries=0: a dropped pooled connection is not a failed attempt
    assert client.stats.errors == {"stale_connection": 9} and client.stats.retries == 0


def test_circuit_breaker_fails_fast_on_a_hanging_trm_then_probes_and_recovers():
    healthy = threading.Event()

    async def script(n, body):
        if not healthy.is_set():
            await asyncio.sleep(60)  # accepts connections, never answers
        return "<answer>0.8</answer>"

    loop = asyncio.new_event_loop()  # a reward worker's loop: it keeps running between calls
    with FaultInjectionServer(script) as server:
        client = make_client(server.base_url, "trm", max_concurrency=4, timeout_s=0.4, max_retries=3,
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


@pytest.mark.parametrize(("status", "error", "kind"), [
    (400, VLLM_TOO_LONG, "context_length"),
    (404, VLLM_NO_MODEL, "unknown_model"),
    (500, {"error": VLLM_TOO_LONG}, "context_length"),  # a proxy that wraps the upstream's 400 in a 500
])
def test_permanent_errors_are_named_and_not_retried(status, error, kind):
    with FaultInjectionServer(lambda n, body: web.json_response(error, status=status)) as server:
        (score,), client, _ = score_once(server.base_url, max_retries=5)
        assert server.requests == 1
    assert math.isnan(score) and dict(client.stats.failures) == {kind: 1}


def test_mode_a_router_500_for_a_refused_request_fails_fast(verl_router):
    """verl's router turns the upstream's 400 (context too long) into its bodiless 500: two tries, not six."""

    async def script(n, body):
        if question_of(body).startswith("too long"):
            await asyncio.sleep(0.3)  # the others are answered first
            return web.json_response(VLLM_TOO_LONG, status=400)
        return "<answer>0.7</answer>"

    address, server = verl_router(script)
    url = f"http://{address}/v1"
    items = [ThinkingRewardItem(f"fine {k}", "r") for k in range(6)] + [ThinkingRewardItem("too long", "r")] * 2
    scores, client, _ = score_once(url, items, max_retries=5, max_concurrency=8)
    assert scores[:6] == [0.7] * 6 and math.isnan(scores[6]) and math.isnan(scores[7])
    assert dict(client.stats.failures) == {"upstream_rejected": 2}
    assert server.requests == 6 + 2 * 2 and client.stats.errors["router_500"] == 4


def test_mode_a_unknown_model_behind_the_router_fails_fast(verl_router):
    def script(n, body):
        if body["model"] != FaultInjectionServer.model:
            return web.json_response(VLLM_NO_MODEL, status=404)
        return "<answer>0.7</answer>"

    address, server = verl_router(script)
    scores, client, _ = score_once(f"http://{address}/v1", [ITEM] * 10, max_retries=5, max_concurrency=2)
    assert all(math.isnan(s) for s in scores)
    assert dict(client.stats.failures) == {"unknown_model": 10}
    assert server.requests <= 2 and server.models_requests == 1  # the first wave; then nothing is sent
