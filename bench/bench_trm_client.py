"""The thinking reward where verl drives it: verl's reward-loop worker with the sophiavl manager, per response.

    python bench/bench_trm_client.py [--n 4096] [--n-small 512] [--latency-ms 50] [--concurrency 64]

What runs, all on this machine:

* A loopback OpenAI-compatible server (aiohttp, in a child process) that answers every chat completion after
  ``--latency-ms`` with bounded capacity (``--concurrency`` requests at a time; the rest queue), and counts TCP
  connections, requests and request bytes.
* verl's ``RewardLoopWorker`` as a Ray actor, with ``reward.reward_manager.name=sophiavl``, fed as verl's agent
  loop feeds it: one ``compute_score.remote(data)`` per response, ``data`` built as
  ``AgentLoopWorker._compute_score`` builds it, at most ``--window`` responses outstanding. Each response's row
  carries its prompt's image the way verl's ``RLHFDataset`` makes it from a stored image (``{"bytes", "path"}``
  plus the decoded ``"image"``); Ray delivers every response its own copy.
* Groups of 8 responses (rollout.n = 8); half the groups mixed (correct and wrong answers), a quarter all
  correct, a quarter all wrong. One distinct image per group: 70% photo-like JPEGs, 30% chart-like PNGs, sizes
  0.15 to 4.0 MP.
* Query policies ``all`` and ``skip_uniform`` (the board is the named Ray actor).
* Today's path, measured in the same run: the manager and client of commit ``--old-commit`` (before the pooled
  client), loaded from git into the worker as the manager ``sophiavl_legacy`` (its encoding function wrapped to
  count calls). It re-encodes every response's image as PNG, so it runs on ``--n-small`` responses only;
  the new path runs on both sizes.

Printed per run: wall time and its ratio to the ideal (TRM requests x latency / concurrency), TCP connections
the server accepted, image encodes (decode + PNG) and preparations, request bytes, CPU seconds and peak RSS of
the reward-worker process (a fresh process per run). Then the board's latency per response with all ``--n``
responses arriving at once, verl's worker by itself (every group uniform under ``skip_uniform``: no TRM request;
Ray moving each response's row, decoded image included, is most of what is left), and the client alone (no
verl, no Ray) on the same images.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import types
import weakref
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GROUP_SIZE = 8
SIZES = [(448, 336), (640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (2048, 1536), (2304, 1728)]
CORRECT = "<think>The two bars read 3 and 4, so the sum is 3 + 4 = 7.</think><answer>7</answer>"
WRONG = "<think>The bars look like about 4 and 5, so roughly 9.</think><answer>9</answer>"


# ------------------------------------------------------------------------------------------- server


def serve(port: int, latency_s: float, capacity: int) -> None:
    """The loopback TRM: answers ``<answer>0.5</answer>`` after ``latency_s``, ``capacity`` requests at a time."""
    import json

    from aiohttp import web

    reply = {"object": "chat.completion",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "<answer>0.5</answer>"}}]}
    counters = {"connections": 0, "requests": 0, "bytes": 0}
    seen: weakref.WeakSet = weakref.WeakSet()  # one transport object per TCP connection
    slots = asyncio.Semaphore(capacity)

    async def chat(request: web.Request) -> web.Response:
        if request.transport not in seen:
            seen.add(request.transport)
            counters["connections"] += 1
        counters["requests"] += 1
        counters["bytes"] += len(await request.read())
        async with slots:
            await asyncio.sleep(latency_s)
        return web.json_response(reply)

    async def stats(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(counters))

    async def reset(request: web.Request) -> web.Response:
        counters.update(connections=0, requests=0, bytes=0)
        seen.clear()
        return web.Response(text="{}")

    app = web.Application(client_max_size=256 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def server_call(port: int, method: str, path: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)) as resp:
        return json.loads(resp.read())


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"bench server did not open port {port}")


# ------------------------------------------------------------------------------------------- images


def make_images(n_groups: int, seed: int = 0) -> list[bytes]:
    """One distinct encoded image per group: photo-like JPEGs (q90) and chart-like PNGs, 0.15 to 4 MP."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bases = {}
    for w, h in SIZES:  # smooth random fields plus sensor-like noise (JPEG ~0.2 byte/pixel, like photos)
        field = Image.fromarray(rng.integers(0, 255, (h // 48 + 2, w // 48 + 2, 3), dtype=np.uint8))
        noise = rng.normal(0, 4, (h, w, 3))
        bases[w, h] = np.clip(np.asarray(field.resize((w, h), Image.BICUBIC)) + noise, 0, 255).astype(np.uint8)
    images = []
    for g in range(n_groups):
        w, h = SIZES[g % len(SIZES)]
        buffer = io.BytesIO()
        if g % 10 < 7:
            pixels = np.roll(bases[w, h], shift=(37 * g) % h, axis=0)
            pixels[:16, :16] = (g % 256, (g // 256) % 256, 99)  # distinct content per group
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        else:
            chart = Image.new("RGB", (w, h), "white")
            draw = ImageDraw.Draw(chart)
            for k in range(8):
                top = int(h * rng.uniform(0.1, 0.8))
                draw.rectangle((k * w // 9 + 10, top, (k + 1) * w // 9, h - 20), fill=tuple(rng.integers(0, 200, 3)))
            draw.text((10, 10), f"chart {g}", fill="black")
            chart.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


# ------------------------------------------------------------------------------ verl's worker, fed per response


def verl_config(tokenizer_dir: Path, base_url: str, policy: str, concurrency: int, manager: str):
    import verl
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={tokenizer_dir}", f"actor_rollout_ref.rollout.n={GROUP_SIZE}",
            f"reward.reward_manager.name={manager}", f"+reward.reward_kwargs.trm_base_url={base_url}",
            "+reward.reward_kwargs.trm_model=bench", f"+reward.reward_kwargs.query_policy={policy}",
            f"+reward.reward_kwargs.max_concurrency={concurrency}", "+reward.reward_kwargs.group_wait_s=600",
        ])


def install_legacy(sources: dict[str, str]) -> None:
    """Load the old client and manager (git sources) as modules; the manager registers as ``sophiavl_legacy``."""
    client = types.ModuleType("sophiavl_legacy_thinking_reward")
    sys.modules[client.__name__] = client  # dataclasses look their module up while the source runs
    exec(compile(sources["thinking_reward"], "legacy/thinking_reward.py", "exec"), client.__dict__)
    encode = client.image_to_data_url
    client.ENCODES = 0

    def counted(image):
        client.ENCODES += 1
        return encode(image)

    client.image_to_data_url = counted
    manager_source = sources["reward_manager"]
    # The old manager's own imports, pointed at the old client and at where the other names live today.
    for old, new in (("from sophiavl_verl.thinking_reward import", f"from {client.__name__} import"),
                     ("from sophiavl_verl.trust_grpo import", "from sophiavl_verl.keys import"),
                     ("from sophiavl_verl.validation import", "from sophiavl_verl.integration.validation import"),
                     ("@register(REWARD_MANAGER_NAME)", '@register("sophiavl_legacy")')):
        assert manager_source.count(old) == 1, f"the old reward manager has no single {old!r}"
        manager_source = manager_source.replace(old, new)
    manager = types.ModuleType("sophiavl_legacy_reward_manager")
    sys.modules[manager.__name__] = manager
    exec(compile(manager_source, "legacy/reward_manager.py", "exec"), manager.__dict__)
    from sophiavl_verl.integration import group_board

    manager.GroupOutcomeBoard = group_board.GroupOutcomeBoard  # an importable class for the board's actor


def bench_worker_class():
    """verl's ``RewardLoopWorker`` plus read-outs for the bench (CPU, RSS, client counters, board timing)."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    class BenchRewardWorker(RewardLoopWorker):
        def __init__(self, config, legacy_sources=None):
            if legacy_sources:
                install_legacy(legacy_sources)
            super().__init__(config, reward_router_address=None)

        def usage(self) -> dict:
            own = resource.getrusage(resource.RUSAGE_SELF)
            return {"cpu_s": own.ru_utime + own.ru_stime, "max_rss_mb": own.ru_maxrss / 1024}

        def client_counters(self) -> dict:
            stats = self.reward_manager.client.stats
            legacy = sys.modules.get("sophiavl_legacy_thinking_reward")
            encodes = legacy.ENCODES if legacy is not None else stats.image_encodes
            return {"encodes": encodes, "prepared": getattr(stats, "images_prepared", encodes),
                    "requests": stats.requests, "failed": stats.failed}

        async def board_latency(self, prefix: str, n: int) -> dict:
            from sophiavl_verl.integration import group_board

            board = group_board.group_board()

            async def arrive(i: int) -> float:
                start = time.perf_counter()
                await board.arrive(f"{prefix}-{i // GROUP_SIZE}", float(i % 2), GROUP_SIZE, 600)
                return time.perf_counter() - start

            start = time.perf_counter()
            latencies = await asyncio.gather(*(arrive(i) for i in range(n)))
            return {"wall_s": time.perf_counter() - start, "p50_s": float(np.percentile(latencies, 50)),
                    "p95_s": float(np.percentile(latencies, 95)), "max_s": max(latencies)}

    return BenchRewardWorker


def group_rows(images: list[bytes], tokenizer, run: str, uniform: bool = False) -> list[tuple[dict, list[str]]]:
    """(row, responses) per group; the row's raw_prompt made by verl's ``RLHFDataset._build_messages``.

    ``uniform``: every group all correct (under ``skip_uniform`` no TRM request at all: verl's own cost).
    """
    from verl.utils.dataset.rl_dataset import RLHFDataset

    dataset = types.SimpleNamespace(image_key="images", video_key="videos", audio_key="audios", processor=object())
    groups = []
    for g, data in enumerate(images):
        question = f"What is the sum of the two bars? (chart {g})"
        example = {"prompt": [{"role": "user", "content": f"<image>{question}"}],
                   "images": [{"bytes": data, "path": None}]}
        raw_prompt = RLHFDataset._build_messages(dataset, example, "prompt")
        raw_prompt[0]["content"][0]["image"].load()  # decoded once, as a dataloader worker's copy is
        kind = 2 if uniform else g % 4  # mixed, mixed, all correct, all wrong
        responses = ([CORRECT] * 3 + [WRONG] * 5 if kind < 2 else [CORRECT] * GROUP_SIZE if kind == 2
                     else [WRONG] * GROUP_SIZE)
        row = {"uid": f"{run}-{g}", "data_source": "bench", "raw_prompt": raw_prompt,
               "reward_model": {"style": "rule", "ground_truth": "7"},
               "extra_info": {"problem_type": "numerical", "question": question}}
        groups.append((row, responses))
    return groups


def agent_loop_sample(tokenizer, row: dict, response: str):
    """One response as ``AgentLoopWorker._compute_score`` builds it (one output: n = 1)."""
    import torch
    from tensordict import TensorDict
    from verl import DataProto

    prompts = torch.tensor(tokenizer.encode(row["extra_info"]["question"]), dtype=torch.int64)
    responses = torch.tensor(tokenizer.encode(response), dtype=torch.int64)
    input_ids = torch.cat([prompts, responses])
    n = 1
    batch = TensorDict({"prompts": prompts[None], "responses": responses[None], "input_ids": input_ids[None],
                        "attention_mask": torch.ones_like(input_ids)[None],
                        "position_ids": torch.arange(len(input_ids))[None]}, batch_size=n)
    non_tensor = {**{k: np.array([v] * n) for k, v in row.items()}, "__num_turns__": np.array([2]),
                  "prompt_len": np.array([len(prompts)]), "response_len": np.array([len(responses)])}
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def run_worker(args, ray, worker_cls, tokenizer, tokenizer_dir, port, images, policy, path, legacy) -> dict:
    """One fresh reward-worker process, fed ``len(images) * 8`` responses; its measurements.

    ``path``: ``old`` (today's code), ``new``, or ``floor`` (the new code with every group uniform under
    ``skip_uniform``: no TRM request, what verl's worker costs by itself).
    """
    name = "sophiavl_legacy" if path == "old" else "sophiavl"
    config = verl_config(tokenizer_dir, f"http://127.0.0.1:{port}/v1", policy, args.concurrency, name)
    worker = ray.remote(worker_cls).remote(config, legacy if path == "old" else None)
    try:
        before = ray.get(worker.usage.remote())
        run = f"{path}-{policy}-{len(images)}"
        samples = [agent_loop_sample(tokenizer, row, response)
                   for row, responses in group_rows(images, tokenizer, run, uniform=path == "floor")
                   for response in responses]
        server_call(port, "POST", "/reset")
        outstanding, results = [], []
        start = time.perf_counter()
        for sample in samples:
            if len(outstanding) >= args.window:
                ready, outstanding = ray.wait(outstanding, num_returns=1)
                results += ray.get(ready)
            outstanding.append(worker.compute_score.remote(sample))  # Ray pickles it: a copy per response
        results += ray.get(outstanding)
        wall = time.perf_counter() - start
        after = ray.get(worker.usage.remote())
        counters = ray.get(worker.client_counters.remote())
        server = server_call(port, "GET", "/stats")
        queried = sum(r["reward_extra_info"]["sophiavl_trm_status"] != "skipped" for r in results)
        failed = sum(r["reward_extra_info"]["sophiavl_trm_status"] == "failed" for r in results)
        board = ray.get(worker.board_latency.remote(f"board-{run}", len(samples))) if policy != "all" else None
    finally:
        ray.kill(worker)
    ideal = max(queried, 1) * args.latency_ms / 1000 / args.concurrency
    return {"path": path, "policy": policy, "n": len(samples), "queried": queried, "failed": failed, "wall_s": wall,
            "ideal_s": ideal, "connections": server["connections"], "requests": server["requests"],
            "bytes": server["bytes"], "encodes": counters["encodes"], "prepared": counters["prepared"],
            "cpu_s": after["cpu_s"] - before["cpu_s"], "rss_mb": after["max_rss_mb"],
            "rss_start_mb": before["max_rss_mb"], "board": board}


# ------------------------------------------------------------------------------------------- client alone


def client_alone(args, port: int, images: list[bytes]) -> dict:
    """The new client without verl or Ray: one score() call per response, concurrently, on one loop."""
    from sophiavl_verl.config import SophiaVLRewardConfig
    from sophiavl_verl.thinking_reward import ThinkingRewardClient, ThinkingRewardItem

    items = [ThinkingRewardItem(f"question {g}", response, (bytes(data),))
             for g, data in enumerate(images) for response in [CORRECT] * 3 + [WRONG] * 5]

    async def run(client):
        return await asyncio.gather(*(client.score([item]) for item in items))

    client = ThinkingRewardClient(f"http://127.0.0.1:{port}/v1", "bench",
                                  SophiaVLRewardConfig(max_concurrency=args.concurrency))
    server_call(port, "POST", "/reset")
    cpu = time.process_time()
    start = time.perf_counter()
    scores = asyncio.run(run(client))
    wall = time.perf_counter() - start
    assert all(s == [0.5] for s in scores), client.stats.summary()
    server = server_call(port, "GET", "/stats")
    return {"n": len(items), "wall_s": wall, "ideal_s": len(items) * args.latency_ms / 1000 / args.concurrency,
            "cpu_s": time.process_time() - cpu, "connections": server["connections"],
            "encodes": client.stats.image_encodes, "prepared": client.stats.images_prepared}


# ------------------------------------------------------------------------------------------------ main


def report(r: dict) -> str:
    mb = r["bytes"] / 2**20
    return (f"{r['path']:>5} {r['policy']:<12} n={r['n']:<5} TRM requests {r['requests']:>5} "
            f"wall {r['wall_s']:7.2f} s = {r['wall_s'] / r['ideal_s']:5.2f}x ideal {r['ideal_s']:5.2f} s | "
            f"connections {r['connections']:>5} | encodes {r['encodes']:>5} (prepared {r['prepared']:>4}) | "
            f"sent {mb:8.1f} MiB | worker CPU {r['cpu_s']:7.1f} s = {1000 * r['cpu_s'] / r['n']:6.1f} ms/response | "
            f"peak RSS {r['rss_mb']:6.0f} MiB (at start {r['rss_start_mb']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="responses of the new path's large run")
    parser.add_argument("--n-small", type=int, default=512, help="responses of the runs of both paths")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64, help="client max_concurrency = server capacity")
    parser.add_argument("--window", type=int, default=128, help="responses outstanding at the reward worker")
    parser.add_argument("--old-commit", default="48265a7", help="today's path: the code of this commit")
    parser.add_argument("--policies", default="all,skip_uniform")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.latency_ms / 1000, args.concurrency)
        return
    for n in (args.n, args.n_small):
        if n % GROUP_SIZE:
            parser.error(f"response counts must be multiples of {GROUP_SIZE}, got {n}")

    import ray
    from verl.utils import hf_tokenizer

    from sophiavl_verl.integration.cpu_backend.transformers_serve import free_port
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl

    legacy = {name: subprocess.run(["git", "-C", str(REPO), "show", f"{args.old_commit}:sophiavl_verl/{name}.py"],
                                   check=True, capture_output=True, text=True).stdout
              for name in ("thinking_reward", "reward_manager")}
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency-ms", str(args.latency_ms),
                               "--concurrency", str(args.concurrency)])
    tmp = tempfile.TemporaryDirectory(prefix="bench_trm_")
    try:
        wait_for_port(port)
        start = time.perf_counter()
        images = make_images(args.n // GROUP_SIZE)
        pixels = [SIZES[g % len(SIZES)] for g in range(len(images))]
        print(f"{len(images)} distinct images, {np.mean([w * h for w, h in pixels]) / 1e6:.2f} MP and "
              f"{np.mean([len(b) for b in images]) / 2**20:.2f} MiB encoded on average (made in "
              f"{time.perf_counter() - start:.0f} s); server latency {args.latency_ms:g} ms, capacity and client "
              f"max_concurrency {args.concurrency}, window {args.window}", flush=True)
        tokenizer_dir = build_tiny_qwen2_5_vl(Path(tmp.name) / "tokenizer")
        tokenizer = hf_tokenizer(str(tokenizer_dir))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {
                     "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}})
        worker_cls = bench_worker_class()
        from sophiavl_verl.integration import group_board

        board = group_board.group_board()  # the named board, started (and owned) here once for every run
        ray.get(board._handle.pending_groups.remote())
        small = images[: args.n_small // GROUP_SIZE]
        results = []
        for policy in args.policies.split(","):
            for path, imgs in (("old", small), ("new", small), ("new", images)):
                if path == "new" and imgs is images and len(images) == len(small):
                    continue
                results.append(run_worker(args, ray, worker_cls, tokenizer, tokenizer_dir, port, imgs, policy, path,
                                          legacy))
                print(report(results[-1]), flush=True)
        floor = run_worker(args, ray, worker_cls, tokenizer, tokenizer_dir, port, images, "skip_uniform", "floor",
                           legacy)
        print(report(floor), flush=True)
        alone = client_alone(args, port, images)
    finally:
        server.terminate()
        server.wait(10)
        tmp.cleanup()
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()

    print()
    for policy in args.policies.split(","):
        old = next(r for r in results if r["policy"] == policy and r["path"] == "old")
        new = next(r for r in results if r["policy"] == policy and r["path"] == "new" and r["n"] == old["n"])
        big = max((r for r in results if r["policy"] == policy and r["path"] == "new"), key=lambda r: r["n"])
        print(f"{policy}: at n={old['n']}, worker CPU per response old/new = "
              f"{old['cpu_s'] / new['cpu_s']:.1f}x (target >= 5x); connections {old['connections']} -> "
              f"{new['connections']} (target <= {args.concurrency}); encodes {old['encodes']} -> {new['encodes']} "
              f"(distinct images: {old['n'] // GROUP_SIZE}); bytes sent {old['bytes'] / new['bytes']:.1f}x fewer; "
              f"at n={big['n']}: wall {big['wall_s'] / big['ideal_s']:.2f}x ideal (target <= 1.3)")
        if big["board"]:
            b = big["board"]
            print(f"  board ({big['n']} responses arriving at once): p50 {1000 * b['p50_s']:.1f} ms, "
                  f"p95 {1000 * b['p95_s']:.1f} ms, max {1000 * b['max_s']:.0f} ms per response; all in "
                  f"{b['wall_s']:.2f} s")
    big_all = max((r for r in results if r["path"] == "new"), key=lambda r: (r["n"], r["policy"] == "all"))
    print(f"verl's worker by itself (n={floor['n']}, every group uniform under skip_uniform: no TRM request): wall "
          f"{floor['wall_s']:.2f} s, CPU {1000 * floor['cpu_s'] / floor['n']:.1f} ms/response, peak RSS "
          f"{floor['rss_mb']:.0f} MiB; the new path ({big_all['policy']}, n={big_all['n']}): wall "
          f"{big_all['wall_s']:.2f} s, CPU {1000 * big_all['cpu_s'] / big_all['n']:.1f} ms/response")
    print(f"the client alone (no verl, no Ray), {alone['n']} single-item calls: wall {alone['wall_s']:.2f} s = "
          f"{alone['wall_s'] / alone['ideal_s']:.2f}x ideal {alone['ideal_s']:.2f} s; connections "
          f"{alone['connections']}; prepared {alone['prepared']}, encodes {alone['encodes']}; "
          f"CPU {alone['cpu_s']:.1f} s (client and driver in one process)")
    print(f"(the old path is run at n={args.n_small} only: it PNG-encodes every response's image, "
          f"{results[0]['cpu_s'] / results[0]['n'] * args.n / 60:.0f} min of worker CPU at n={args.n})")


if __name__ == "__main__":
    main()
