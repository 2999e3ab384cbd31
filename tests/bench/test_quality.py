"""Tests for ftlab.bench.quality: the bench's paths trained from several seeds."""

import math

import pytest

from ftlab.bench import quality as bench_quality


def test_unknown_paths_are_refused():
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
