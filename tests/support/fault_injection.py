"""A fake OpenAI chat endpoint that injects faults (the only fake the tests use; it is named as such)."""

from __future__ import annotations

import asyncio
import json
import threading
import weakref

from aiohttp import web

#: vLLM's OpenAI-server error bodies (``ErrorResponse``) for a prompt over the context length and an unknown model.
VLLM_TOO_LONG = {"object": "error", "message": "This model's maximum context length is 32768 tokens. However, you "
                 "requested 40000 tokens (39968 in the messages, 32 in the completion).", "type": "BadRequestError",
                 "param": None, "code": 400}
VLLM_NO_MODEL = {"object": "error", "message": "The model `trm` does not exist.", "type": "NotFoundError",
                 "param": None, "code": 404}


def _completion(content: str) -> dict:
    message = {"role": "assistant", "content": content}
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


class FaultInjectionServer:
    """A fake OpenAI chat endpoint on 127.0.0.1 (aiohttp, background thread) that injects faults.

    ``script(n, body)`` decides the reply to the n-th request (0-based): an ``aiohttp.web.Response``, or a
    string that becomes the assistant message. It may be a coroutine function (to sleep, e.g. to hang).
    Records every request body (parsed, and as the bytes received) and header set, the most requests ever
    in flight at once, the TCP connections that carried requests, and ``GET /v1/models`` calls. With
    ``drop_keep_alive`` it drops a kept-alive connection when a second request arrives on it (no reply), as
    servers and proxies that close idle connections do when a client reuses one. ``bytes_received`` sums the
    request bodies. ``models(request)``, when given, replies to ``GET /v1/models`` instead of the model list
    (it may be a coroutine function); ``models_headers`` records the headers of those requests.
    """

    model = "fault-injection-trm"

    def __init__(self, script, *, drop_keep_alive: bool = False, models=None):
        self.script = script
        self.models = models
        self.models_headers: list[dict] = []
        self.drop_keep_alive = drop_keep_alive
        self.bodies: list[dict] = []
        self.raw_bodies: list[bytes] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.dropped = 0
        self.models_requests = 0
        self._transports: weakref.WeakSet = weakref.WeakSet()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    @property
    def bytes_received(self) -> int:
        return sum(len(raw) for raw in list(self.raw_bodies))

    @property
    def open_connections(self) -> int:
        return sum(not transport.is_closing() for transport in list(self._transports))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport not in self._transports:
            self._transports.add(transport)
            self.connections += 1
        elif self.drop_keep_alive:
            self.dropped += 1
            transport.abort()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        n = len(self.bodies)
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            self.raw_bodies.append(raw)
            body = json.loads(raw)
            self.bodies.append(body)
            reply = self.script(n, body)
            if asyncio.iscoroutine(reply):
                reply = await reply
            return web.json_response(_completion(reply)) if isinstance(reply, str) else reply
        finally:
            self.in_flight -= 1

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.models_requests += 1
        self.models_headers.append(dict(request.headers))
        if self.models is None:
            return web.json_response({"object": "list", "data": [{"id": self.model}]})
        reply = self.models(request)
        return await reply if asyncio.iscoroutine(reply) else reply

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        pending = asyncio.all_tasks(self._loop)  # handlers still hanging on purpose
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def __enter__(self) -> FaultInjectionServer:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fault-injection server did not start"
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
