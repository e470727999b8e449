"""MARS combination: source registry, running statistics, adaptive normalisation, weights."""

from __future__ import annotations

import random
import statistics

import pytest

from duomind.rewards.config import RewardConfig
from duomind.rewards.mars import Mars, RunningStat
from duomind.rewards.sources import SOURCES, Component, register_source


def test_registry_rejects_duplicates():
    assert {"math", "code", "format", "repetition", "length"} <= set(SOURCES)
    with pytest.raises(ValueError, match="already registered"):
        register_source("math", lambda r, c: Component(1.0))
    with pytest.raises(ValueError, match="already registered"):
        register_source("judge", lambda r, c: Component(1.0))


def test_running_stat_is_exact_within_the_window():
    xs = [random.Random(0).gauss(3, 2) for _ in range(200)]
    rng = random.Random(1)
    xs = [rng.gauss(3, 2) for _ in range(200)]
    s = RunningStat()
    for x in xs:
        s.update(x, window=1000)
    assert s.mean == pytest.approx(statistics.fmean(xs))
    assert s.std == pytest.approx(statistics.pstdev(xs))


def test_running_stat_follows_a_shift_after_the_window():
    s = RunningStat()
    for _ in range(500):
        s.update(0.0, window=50)
    for _ in range(500):
        s.update(1.0, window=50)
    assert s.mean > 0.99  # an all-time mean would say 0.5


def test_weights_without_normalisation():
    cfg = RewardConfig(normalize=False)
    reward, norm = Mars(cfg).combine("math", {"math": 1.0, "format": 0.0, "repetition": -0.5, "length": None})
    assert reward == pytest.approx(1.0 * 1.0 + 0.2 * 0.0 + 0.2 * -0.5)
    assert "length" not in norm  # a source that could not score contributes nothing


def test_normalisation_starts_after_warmup_and_is_clipped():
    cfg = RewardConfig(norm_warmup=4, norm_min_std=0.1, norm_clip=3.0)
    mars = Mars(cfg)
    for v in (1.0, 0.0, 1.0, 0.0):
        _, norm = mars.combine("math", {"math": v})
        assert norm["math"] == v  # raw during warm-up
    _, norm = mars.combine("math", {"math": 1.0})
    assert norm["math"] == pytest.approx((1.0 - 0.5) / 0.5)
    for _ in range(50):  # format always 1: its std collapses, then one violation would explode
        mars.combine("math", {"format": 1.0})
    _, norm = mars.combine("math", {"format": 0.0})
    assert norm["format"] == -3.0


def test_same_order_same_rewards_and_state_round_trip():
    cfg = RewardConfig(norm_warmup=2)
    values = [{"math": float(i % 2), "format": 1.0} for i in range(20)]
    a, b = Mars(cfg), Mars(cfg)
    assert [a.combine("math", v) for v in values] == [b.combine("math", v) for v in values]
    c = Mars(cfg)
    c.load_state_dict(a.state_dict())
    assert c.combine("math", {"math": 1.0}) == a.combine("math", {"math": 1.0})
    assert "math/math" in a.state_dict()
