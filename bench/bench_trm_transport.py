"""The TRM client's HTTP transport: aiohttp (what it uses) against httpx (and the openai SDK, if installed).

    python bench/bench_trm_transport.py [--n 2000] [--concurrency 64] [--repeats 5]

What the thinking reward client does on the wire is one ``POST /v1/chat/completions`` per response with its
image inlined (a base64 ``data:`` URL), on a pool of keep-alive connections (at most ``max_concurrency``),
reading the reply in chunks up to ``max_reply_bytes``. Only that part would change if the transport were built on
another library: per-item deadline, breaker, failure kinds and the image cache stay ours. So this bench measures
exactly that part, per library, in the client's process:

* a loopback OpenAI-compatible server (aiohttp, a child process, so its CPU is not counted) answers every chat
  completion at once with a chat completion whose content is ``<answer>0.5</answer>``;
* each library sends ``--n`` such requests, ``--concurrency`` in flight, on one pool of that many keep-alive
  connections, streaming the reply up to 1 MiB, for two request sizes: a 64 KiB and a 1 MiB image payload
  (the embedded sample's PNGs are 5–40 KiB; dataset photos 0.1–2 MiB);
* runs alternate between the libraries (``--repeats`` rounds), each in a fresh event loop and pool;
* printed: the client process's CPU per request (``time.process_time``), median and range over rounds, and each
  library's ratio to aiohttp measured in the same rounds.

Decision rule (issue 19): adopt a maintained client library for the transport if it costs at most 10 % more
reward-worker CPU per response than today's. The reward worker spends about 15 ms of CPU per response in verl
(``bench/bench_trm_client.py``); the last column projects each library's extra transport CPU onto that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import AsyncIterator

from bench_trm_client import serve, wait_for_port

from sophiavl_verl.integration.cpu_backend.transformers_serve import free_port

#: CPU per response of verl's reward worker with the sophiavl manager, today's client (bench_trm_client.py, n=4096).
WORKER_CPU_PER_RESPONSE_S = 0.0151
MAX_REPLY_BYTES = 2**20
READ_CHUNK = 2**16
def request_body(image_bytes: int) -> bytes:
    """A chat completion request as the client builds it: system message, image data URL, the prompt."""
    image = base64.b64encode(os.urandom(image_bytes)).decode()
    return json.dumps({
        "model": "trm", "temperature": 0.0, "max_tokens": 32,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": [
                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                         {"type": "text", "text": "Question: ... Response: ... Your response format: ..."}]}],
    }).encode()


async def _read_completion(chunks: AsyncIterator[bytes]) -> None:
    """Read a reply as the client does, at most ``MAX_REPLY_BYTES``, and check that it is a chat completion."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_REPLY_BYTES:
            raise RuntimeError("reply too large")
    assert json.loads(body)["choices"][0]["message"]["content"]


async def _with_aiohttp(url: str, body: bytes, n: int, concurrency: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60.0)
    headers = {"Authorization": "Bearer key", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots, session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=60)) as response:
                await _read_completion(response.content.iter_chunked(READ_CHUNK))

        await asyncio.gather(*(one() for _ in range(n)))


async def _with_httpx(url: str, body: bytes, n: int, concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=60.0)
    headers = {"Authorization": "Bearer key", "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60.0) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots, client.stream("POST", url, content=body) as response:
                await _read_completion(response.aiter_bytes(READ_CHUNK))

        await asyncio.gather(*(one() for _ in range(n)))


async def _with_openai(url: str, body: bytes, n: int, concurrency: int) -> None:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=60.0)
    request = json.loads(body)
    async with openai.AsyncOpenAI(base_url=url.rsplit("/chat/completions", 1)[0], api_key="key", max_retries=0,
                                  http_client=httpx.AsyncClient(limits=limits, timeout=60.0)) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                completion = await client.chat.completions.create(**request)
                assert completion.choices[0].message.content

        await asyncio.gather(*(one() for _ in range(n)))


CLIENTS = {"aiohttp": _with_aiohttp, "httpx": _with_httpx, "openai": _with_openai}


def cpu_per_request(name: str, url: str, body: bytes, n: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per request of ``n`` requests with library ``name``, in a fresh loop and pool."""
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(CLIENTS[name](url, body, n, concurrency))
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight and pooled connections")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each runs every library once")
    args = parser.parse_args()
    names = ["aiohttp", "httpx"]
    try:
        import openai  # noqa: F401
        names.append("openai")
    except ImportError:
        print("openai is not installed: its SDK is built on httpx, so it costs at least httpx's figure")
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, 0.0, args.concurrency), daemon=True)
    server.start()
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for image_kib in (64, 1024):
            body = request_body(image_kib * 1024)
            for name in names:  # warm-up: imports, first connections
                cpu_per_request(name, url, body, 64, args.concurrency)
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(args.repeats):
                for name in names:
                    cpu[name].append(cpu_per_request(name, url, body, args.n, args.concurrency)[0])
            base = statistics.median(cpu["aiohttp"])
            print(f"\nrequest body {len(body) / 1024:.0f} KiB, n={args.n}, concurrency {args.concurrency}, "
                  f"{args.repeats} rounds")
            print(f"{'library':<8} {'CPU ms/request: median [min, max]':>36} {'vs aiohttp':>11} "
                  f"{'reward worker CPU/response':>27}")
            for name in names:
                median = statistics.median(cpu[name])
                projected = (WORKER_CPU_PER_RESPONSE_S + median - base) / WORKER_CPU_PER_RESPONSE_S
                print(f"{name:<8} {median * 1e3:>17.3f} [{min(cpu[name]) * 1e3:.3f}, {max(cpu[name]) * 1e3:.3f}]"
                      f" {median / base:>10.2f}x {projected:>26.2f}x")
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
