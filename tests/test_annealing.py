"""Annealing schedules: values, the registry, and the schedule reaching the estimator by name."""

from __future__ import annotations

import math

import pytest

from sophiavl_verl.annealing import available_schedules, get_schedule, register_schedule


@pytest.mark.parametrize(
    ("name", "step", "total", "expected"),
    [
        ("exp", 0, 1500, 1.0),
        ("exp", 1500, 1500, math.exp(-1)),
        ("exp", 300, 12000, math.exp(-300 / 12000)),  # the authors' released T
        ("linear", 0, 100, 1.0),
        ("linear", 25, 100, 0.75),
        ("linear", 150, 100, 0.0),  # stays at 0 past T
        ("cosine", 0, 100, 1.0),
        ("cosine", 50, 100, 0.5),
        ("cosine", 100, 100, 0.0),
        ("cosine", 200, 100, 0.0),
        ("constant", 10**6, 10, 1.0),
    ],
)
def test_schedule_values(name, step, total, expected):
    assert get_schedule(name)(step, total) == pytest.approx(expected, abs=1e-12)


def test_third_parties_register_schedules_by_name():
    @register_schedule("test_step_half")
    def step_half(step: int, total_steps: int) -> float:
        return 1.0 if step < total_steps // 2 else 0.0

    assert get_schedule("test_step_half") is step_half
    assert "test_step_half" in available_schedules()
    assert register_schedule("test_step_half")(step_half) is step_half  # re-registering the same is fine
    with pytest.raises(ValueError, match="'test_step_half' is already registered"):
        register_schedule("test_step_half")(lambda step, total: 1.0)


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown annealing schedule 'expo'; "
                                         r"registered: \[.*'constant', 'cosine', 'exp', 'linear'"):
        get_schedule("expo")
