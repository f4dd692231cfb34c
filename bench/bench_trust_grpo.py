"""Time our full trust_grpo advantage against verl's own GRPO advantage on the same batch (CPU).

    python bench/bench_trust_grpo.py [--batch 16384 --length 512 --group 8 --repeats 5]

Ours = trust weights (Eq. 1-5) + group normalisation (Eq. 6), i.e. everything the registered
estimator does per step; the baseline is ``verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage``
(verl's default ``grpo``, which loops in Python per response). Both see the same token-level rewards,
mask and uid array; they run in turns and the medians of ``--repeats`` runs are compared. Target: ratio <= 0.15.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from sophiavl_verl.integration.estimator import compute_trust_grpo_advantage
from sophiavl_verl.keys import OUTCOME_KEY, THINKING_KEY


def make_batch(batch: int, length: int, group: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    uids = np.array([str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(batch // group)], dtype=object)
    index = np.repeat(uids, group)
    lengths = torch.from_numpy(rng.integers(1, length + 1, size=batch))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    outcome = rng.integers(0, 2, size=batch).astype(np.float32)
    token_level = torch.zeros(batch, length)
    token_level[torch.arange(batch), lengths - 1] = torch.from_numpy(outcome)
    thinking = np.round(rng.random(batch), 1)
    thinking[rng.random(batch) < 0.05] = np.nan  # a few TRM failures
    return token_level, mask, index, {OUTCOME_KEY: outcome.astype(float), THINKING_KEY: thinking}


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each function, run in turns (ABAB...) so background load hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc="timing (interleaved)"):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    token_level, mask, index, extra = make_batch(args.batch, args.length, args.group)
    algorithm = OmegaConf.create({"adv_estimator": "trust_grpo", "trust_grpo": {"alpha": 0.3, "anneal_steps": 1500}})

    def ours():
        compute_trust_grpo_advantage(
            token_level, mask, index, algorithm, non_tensor_batch=extra, global_step=100, total_training_steps=1500
        )

    def verl_grpo():
        compute_grpo_outcome_advantage(token_level, mask, index)

    ours()  # warm-up (allocator, lazy imports)
    medians = interleaved_medians({"ours": ours, "verl": verl_grpo}, args.repeats)
    t_ours, t_verl = medians["ours"], medians["verl"]
    print(f"batch={args.batch} length={args.length} group={args.group} threads={torch.get_num_threads()}")
    print(f"verl compute_grpo_outcome_advantage: {t_verl * 1e3:9.1f} ms (median of {args.repeats})")
    print(f"sophiavl trust_grpo (weights + norm): {t_ours * 1e3:9.1f} ms (median of {args.repeats})")
    print(f"ratio ours/verl = {t_ours / t_verl:.3f}  (target <= 0.15)")


if __name__ == "__main__":
    main()
