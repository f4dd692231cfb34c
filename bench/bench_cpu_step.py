"""Time a training step of the CPU recipe with the CPU backend's speed-ups against the same run without them.

    python bench/bench_cpu_step.py [--steps 6 --out DIR]

Both arms are the quick start's `main_ppo` run (`sophiavl_verl.tools.train_cpu`, no resume, no audit, the TRM in
hosting mode B, lr 1e-3, validation every 3 steps) in the same invocation, one after the other:

- baseline: the rollout server generates one request at a time (`actor_rollout_ref.rollout.max_num_seqs=1`) and the
  v1 trainer's replay buffer polls every 2 s (verl's own, `trainer.v1.sampler.custom_sampler` unset): the backend
  as it was before batching;
- current: the CPU recipe as shipped (all pending requests in one batched `generate`, a 50 ms poll).

Prints the medians of verl's `timing_s/step`, `timing_s/gen` and `timing_s/testing` over the steps after the first
(which includes warm-up) and the ratios current / baseline. The runs share the machine with whatever else runs on it:
compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("actor_rollout_ref.rollout.max_num_seqs=1", "trainer.v1.sampler.custom_sampler.path=null",
            "trainer.v1.sampler.custom_sampler.name=null")
KEYS = ("timing_s/step", "timing_s/gen", "timing_s/testing")


def run(out: Path, steps: int, overrides: tuple[str, ...]) -> dict[str, float]:
    """One quick-start run; the medians of :data:`KEYS` over its steps after the first."""
    command = [sys.executable, "-m", "sophiavl_verl.tools.train_cpu", "--out", str(out), "--steps", str(steps),
               "--resume-steps", "0", "--no-audit", "--trm-hosting", "B", "--", "actor_rollout_ref.actor.optim.lr=1e-3",
               "trainer.test_freq=3", *overrides]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {key: statistics.median(row[key] for row in rows[1:] if key in row) for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="folder for the two runs (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_cpu_step_"))
    results = {}
    for name, overrides in (("baseline", BASELINE), ("current", ())):
        print(f"[bench] {name}: {args.steps} steps ({out / name})", flush=True)
        results[name] = run(out / name, args.steps, overrides)
    print(f"{'median over steps 2..':24s} {'baseline':>9s} {'current':>9s} {'ratio':>6s}")
    for key in KEYS:
        base, current = results["baseline"][key], results["current"][key]
        print(f"{key:24s} {base:8.2f}s {current:8.2f}s {current / base:6.2f}")


if __name__ == "__main__":
    main()
