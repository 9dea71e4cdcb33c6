"""hashkd.models.complexity's measured throughput: images_per_second on a fake clock, and the
encode throughput of a real model."""

from __future__ import annotations

import pytest

from hashkd.models import build_model, complexity
from tests.conftest import TINY_CNN


class FakeClock:
    """perf_counter that only moves when a step runs: each step takes exactly `step_s`."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s, self.calls = 100.0, step_s, 0

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.calls += 1
        self.now += self.step_s


def test_images_per_second_counts_timed_calls_after_one_warm_up(monkeypatch):
    clock = FakeClock(step_s=0.25)
    monkeypatch.setattr(complexity.time, "perf_counter", clock.perf_counter)
    # warm-up (untimed), then 4 timed calls of 0.25 s fill the 1 s: 4 x 8 images in 1 s
    assert complexity.images_per_second(clock.step, batch=8, seconds=1.0) == pytest.approx(32.0)
    assert clock.calls == 5
    # a budget shorter than one call still times one call
    clock2 = FakeClock(step_s=0.5)
    monkeypatch.setattr(complexity.time, "perf_counter", clock2.perf_counter)
    assert complexity.images_per_second(clock2.step, batch=10, seconds=0.0) == pytest.approx(20.0)
    assert clock2.calls == 2


@pytest.mark.parametrize("batch, seconds", [(0, 1.0), (4, -1.0)])
def test_images_per_second_refuses_bad_arguments(batch, seconds):
    with pytest.raises(ValueError, match="batch="):
        complexity.images_per_second(lambda: None, batch=batch, seconds=seconds)


def test_encode_throughput_runs_the_model_in_eval_mode_and_restores_its_mode():
    from hashkd.models.hash_model import ModelConfig

    model = build_model(ModelConfig(bits=16, img_size=16, **TINY_CNN))
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, tuple(i[0].shape))))
    model.train()
    rate = complexity.encode_images_per_second(model, batch=4, seconds=0.05)
    assert rate > 0 and model.training  # the mode is restored
    assert seen and all(mode is False and shape == (4, 3, 16, 16) for mode, shape in seen)
