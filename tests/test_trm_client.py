"""The client as an object: its options, its API key and base URL never shown, pickling, its stats."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest
from aiohttp import web

from sophiavl_verl.thinking_reward import API_KEY_ENV, ThinkingRewardClient

from support.fault_injection import FaultInjectionServer
from support.trm import FAST, ITEM, SECRET, make_client, score_once

pytestmark = pytest.mark.timeout(600)


def test_api_key_is_sent_but_never_shown(caplog, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    caplog.set_level(logging.DEBUG)
    def echo(n, body):
        return web.Response(status=500 if n < 2 else 400, text=f"denied key {SECRET}")

    with FaultInjectionServer(echo) as server:
        client = make_client(server.base_url, "trm", api_key=SECRET, max_retries=1, **FAST)
        (score,) = client.score_sync([ITEM])
        assert math.isnan(score) and server.headers[0]["Authorization"] == f"Bearer {SECRET}"
        monkeypatch.setenv(API_KEY_ENV, SECRET)
        from_env = make_client(server.base_url, "trm", max_retries=0, **FAST)
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
        score_once(server.base_url)
        assert "Authorization" not in server.headers[0]


def test_client_pickles_for_ray_workers():
    import pickle

    client = pickle.loads(pickle.dumps(ThinkingRewardClient("http://127.0.0.1:1/v1", "trm", api_key=SECRET)))
    assert client._api_key.value == SECRET and client.options.max_concurrency == 64
    with FaultInjectionServer(lambda n, body: "<answer>0.4</answer>") as server:
        copy = pickle.loads(pickle.dumps(ThinkingRewardClient(server.base_url, "trm")))
        assert copy.score_sync([ITEM]) == [0.4]


def test_client_rejects_bad_settings():
    for kwargs in (dict(max_concurrency=0), dict(timeout_s=0), dict(max_retries=-1), dict(deadline_s=0)):
        with pytest.raises(ValueError):
            make_client("http://127.0.0.1:1/v1", "trm", **kwargs)


def test_stats_reset_and_empty_input():
    with FaultInjectionServer(lambda n, body: "<answer>0.2</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", **FAST)
        assert client.score_sync([]) == [] and client.stats.requests == 0
        assert asyncio.run(client.score([ITEM, ITEM])) == [0.2, 0.2]
    assert client.stats.summary()["trm/requests"] == 2 and len(client.stats.latencies_s) == 2
    client.stats.reset()
    assert client.stats.summary()["trm/requests"] == 0 and not client.stats.latencies_s


def test_the_one_quantile_is_numpys_linear_interpolation():
    """``quantile`` (the client's, the estimator's and the audit's latency percentiles) equals numpy's default."""
    import numpy as np

    from sophiavl_verl.thinking_reward import quantile

    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)), abs=1e-12)
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input
    assert math.isnan(quantile([], 0.5))
