"""The connection pool: one per client and event loop, the concurrency cap, its closing."""

from __future__ import annotations

import asyncio

import pytest

from sophiavl_verl.thinking_reward import ThinkingRewardClient

from support.fault_injection import FaultInjectionServer
from support.trm import FAST, ITEM, hang, make_client, score_each, score_once, wait_until

pytestmark = pytest.mark.timeout(600)


def test_concurrency_cap_is_respected():
    items = [ITEM] * 40
    with FaultInjectionServer(hang(0.05)) as server:
        scores, _, seconds = score_once(server.base_url, items, max_concurrency=5)
        assert server.max_in_flight == 5
    assert scores == [0.5] * 40
    assert seconds < 40 * 0.05 / 2  # concurrent, not one at a time


def test_concurrency_cap_holds_across_concurrent_calls():
    """verl's reward loop scores one sample per call, many calls at once: the cap is the client's, not the call's."""
    with FaultInjectionServer(hang(0.05)) as server:
        client = make_client(server.base_url, "trm", max_concurrency=3, **FAST)
        assert asyncio.run(score_each(client, [ITEM] * 20)) == [[0.5]] * 20
        assert server.max_in_flight == 3
        assert asyncio.run(score_each(client, [ITEM] * 20)) == [[0.5]] * 20  # a new event loop gets its own cap


def test_single_item_calls_share_one_pool_of_kept_alive_connections():
    """verl's reward loop makes one score() call per response: they must reuse connections, not open one each."""
    with FaultInjectionServer(hang(0.01)) as server:
        client = make_client(server.base_url, "trm", max_concurrency=4, **FAST)
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(score_each(client, [ITEM] * 200)) == [[0.5]] * 200
            assert loop.run_until_complete(score_each(client, [ITEM] * 100)) == [[0.5]] * 100  # a later step
        finally:
            client.close()
            loop.close()
        assert server.requests == 300 and server.max_in_flight == 4
        assert server.connections <= 4 and client.stats.connections == server.connections
    assert client.stats.summary()["trm/connections"] == server.connections


def test_pool_closes_when_the_loop_shuts_down_or_on_close():
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        client = ThinkingRewardClient(server.base_url, "trm", **FAST)
        assert asyncio.run(client.score([ITEM] * 3)) == [0.5] * 3  # asyncio.run shuts its loop down
        assert wait_until(lambda: server.open_connections == 0)
        assert client.score_sync([ITEM]) == [0.5]  # verl's long-lived loop: the pool stays open ...
        assert server.open_connections == 1
        client.close()  # ... until the client is closed (or the interpreter exits)
        assert wait_until(lambda: server.open_connections == 0)
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
            "from sophiavl_verl.thinking_reward import _transport\n"
            "print(len(_transport._OPEN_POOLS))\n"
            "del dropped; gc.collect()\n"  # a client collected with its pool open ...
            "print(loop.run_until_complete(client.score([item])))\n"  # ... which this loop's next call closes
            "print(len(_transport._OPEN_POOLS))\n"
        )
        done = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["[0.5]", "[0.5]", "[0.5]", "2", "[0.5]", "1"]
        assert "Unclosed" not in done.stderr and "never awaited" not in done.stderr, done.stderr
        assert wait_until(lambda: server.open_connections == 0)
