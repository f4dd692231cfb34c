"""Throughput of ThinkingRewardClient against a loopback server that takes a fixed time per request.

    python bench/bench_trm_client.py [--n 1024] [--latency-ms 50] [--concurrency 64] [--sequential-n 64]

The server (aiohttp, in a child process so it does not share the client's GIL) answers every chat completion
after ``--latency-ms``. The script times:

* our client scoring ``--n`` items with ``--concurrency`` requests in flight (best of ``--repeats`` runs);
* a one-request-at-a-time client (the same client with ``max_concurrency=1``, as the reference code sends
  requests) on ``--sequential-n`` items, extrapolated linearly to ``--n`` items;
* the ideal time, ``n * latency / concurrency``.

Items are grouped by 8 responses sharing one 64x64 PNG image, as a GRPO group shares its prompt's image.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

from PIL import Image

from sophiavl_verl.local_server import free_port
from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem


def serve(port: int, latency_s: float) -> None:
    """The loopback server: every completion answers ``<answer>0.5</answer>`` after ``latency_s``."""
    from aiohttp import web

    reply = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                 "content": "<answer>0.5</answer>"}}]}

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency_s)
        return web.json_response(reply)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"bench server did not open port {port}")


def make_items(n: int) -> list[ThinkingRewardItem]:
    items = []
    for g in range((n + 7) // 8):
        image = Image.new("RGB", (64, 64), (g % 256, 80, 160))
        for k in range(8):
            response = f"<think>Step {k}: reading the figure, the value is {g + k}.</think><answer>{g + k}</answer>"
            items.append(ThinkingRewardItem(f"Question {g}: what is the value?", response, (image,)))
    return items[:n]


def timed(client: ThinkingRewardClient, items: list[ThinkingRewardItem]) -> float:
    start = time.perf_counter()
    scores = client.score_sync(items)
    seconds = time.perf_counter() - start
    assert scores == [0.5] * len(items) and client.stats.failed == 0, client.stats.summary()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential-n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    if args.serve is not None:
        serve(args.serve, latency_s)
        return

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency-ms", str(args.latency_ms)])
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1"
        items = make_items(args.n)
        timed(ThinkingRewardClient(url, "bench"), items[:64])  # warm-up

        ours = []
        for _ in range(args.repeats):
            client = ThinkingRewardClient(url, "bench", max_concurrency=args.concurrency)
            ours.append(timed(client, items))
        best = min(ours)
        p50, p95 = client.stats.summary()["trm/latency_p50_s"], client.stats.summary()["trm/latency_p95_s"]

        sequential_part = timed(ThinkingRewardClient(url, "bench", max_concurrency=1), items[: args.sequential_n])
        sequential = sequential_part * args.n / args.sequential_n
        ideal = args.n * latency_s / args.concurrency
    finally:
        server.terminate()
        server.wait(10)

    print(f"items: {args.n}, server latency: {args.latency_ms:.0f} ms, max_concurrency: {args.concurrency}")
    print(f"ours:       {best:7.3f} s  (best of {args.repeats}: {', '.join(f'{t:.3f}' for t in ours)}; "
          f"request latency p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms)")
    print(f"sequential: {sequential:7.3f} s  (one request at a time: {sequential_part:.3f} s for "
          f"{args.sequential_n} items, extrapolated x{args.n / args.sequential_n:g})")
    print(f"ideal:      {ideal:7.3f} s  (n * latency / concurrency)")
    print(f"speed-up over sequential: {sequential / best:.1f}x (target >= 40x)")
    print(f"ours / ideal: {best / ideal:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
