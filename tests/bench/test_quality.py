"""Tests for ftlab.bench.quality: the bench's paths trained from several seeds; the noise rule."""

import math

import pytest

from ftlab.bench import quality as bench_quality


def spread_of(**losses):
    return {name: {"eval_loss": values, "eval_accuracy": [1.0] * len(values)}
            for name, values in losses.items()}  # fmt: skip


def test_paths_whose_gap_is_below_the_seed_spread_are_within_noise():
    spread = spread_of(fast=[0.10, 0.30, 0.20], plain=[0.15, 0.25, 0.35])
    assert bench_quality.within_noise(spread, "fast", "plain")
    assert bench_quality.within_noise(spread, "fast", "plain", "eval_accuracy")  # all equal


def test_a_path_that_learns_worse_than_the_seeds_vary_is_not_within_noise():
    spread = spread_of(fast=[0.10, 0.12, 0.11], broken=[0.69, 0.70, 0.69])
    assert not bench_quality.within_noise(spread, "fast", "broken")
    assert not bench_quality.within_noise(spread, "broken", "fast")


def test_one_seed_cannot_tell_noise_and_unknown_paths_are_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        bench_quality.within_noise(spread_of(a=[0.1], b=[0.2]), "a", "b")
    with pytest.raises(ValueError, match="unknown paths.*choose from"):
        bench_quality.seed_spread("text", seeds=(0,), device="cpu", size="tiny", paths=("fast",))


def test_seed_spread_trains_each_path_from_each_seed():
    spread = bench_quality.seed_spread(
        "text", seeds=(0, 1), device="cpu", size="tiny", paths=("plain_fp32", "ftlab_fit_fast")
    )
    assert set(spread) == {"plain_fp32", "ftlab_fit_fast"}
    for values in spread.values():
        assert len(values["eval_loss"]) == len(values["eval_accuracy"]) == 2
        assert all(math.isfinite(loss) for loss in values["eval_loss"])
        assert all(0.0 <= accuracy <= 1.0 for accuracy in values["eval_accuracy"])
        assert values["eval_loss"][0] != values["eval_loss"][1]  # each seed its own run
    table = bench_quality.spread_summary(spread)
    assert "plain_fp32" in table and " ± " in table and table.count("\n") == 2
