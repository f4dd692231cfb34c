"""verl's sync replay buffer, polling for finished rollouts every 50 ms instead of every 2 s.

The v1 trainer takes a step's batch from its replay buffer, which looks for finished trajectories every
``poll_interval`` seconds (verl's default 2 s). On a GPU cluster a rollout takes minutes and 2 s is noise; with
a tiny model on CPU the whole rollout takes about a second, so the default rounds every step's generation up to
2 or 4 s. The CPU recipe plugs this class in through verl's own extension point
(``trainer.v1.sampler.custom_sampler``); it changes nothing but the interval.
"""

from __future__ import annotations

from typing import Any

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

__all__ = ["POLL_INTERVAL_S", "FastPollReplayBuffer"]

#: Seconds between two looks for finished trajectories.
POLL_INTERVAL_S = 0.05


class FastPollReplayBuffer(ReplayBuffer):
    """:class:`verl.trainer.ppo.v1.replay_buffer.ReplayBuffer` with ``poll_interval`` :data:`POLL_INTERVAL_S`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("poll_interval", POLL_INTERVAL_S)
        super().__init__(*args, **kwargs)
