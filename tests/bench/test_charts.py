"""Tests for ftlab.bench.charts: each bar shows the number it stands for."""

import pytest

from ftlab.bench import charts
from ftlab.bench.run import recorded


def _widths(ax):
    return [round(bar.get_width(), 6) for bar in ax.patches]


def test_padding_chart_splits_each_way_into_tokens_and_padding_and_names_its_shapes():
    study = {
        "pad to max_length": {"positions": 400, "padding": 300, "shapes": 1},
        "buckets": {"positions": 150, "padding": 50, "shapes": 3},
    }
    ax = charts.padding_chart(study).axes[0]
    # drawn bottom-up: tokens of each way, then padding of each way
    assert _widths(ax) == [100, 100, 50, 300]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["buckets", "pad to max_length"]
    assert [text.get_text().strip() for text in ax.texts] == ["3 shapes", "1 shape"]
    with pytest.raises(ValueError, match="study must map"):
        charts.padding_chart({})


def _profiled(wall, host, busy):
    profile = {"wall_ms_per_step": wall, "host_op_ms_per_step": host,
               "device_busy_ms_per_step": busy}  # fmt: skip
    return {"profile": profile}


def test_step_time_chart_splits_the_wall_time_and_marks_device_busy_only_on_a_gpu():
    cpu = {"machine": {"device_name": "CPU"}, "text": {"paths": {
        "plain_fp32": _profiled(10.0, 6.0, 0.0), "ftlab_fit_fast": _profiled(4.0, 5.0, 0.0),
        "trainer_default": {"samples_per_s": 1.0},  # not profiled: left out
    }}}  # fmt: skip
    ax = charts.step_time_chart(cpu).axes[0]
    # inside torch ops, then the rest (never below 0 when the host ops overlap the wall)
    assert _widths(ax) == [5.0, 6.0, 0.0, 4.0]
    assert not ax.collections  # no device-busy marks on a CPU
    gpu = {"machine": {"device_name": "GPU"}, "text": {"paths": {"x": _profiled(10, 8, 2.5)}}}
    (marks,) = charts.step_time_chart(gpu).axes[0].collections
    assert marks.get_offsets()[0][0] == 2.5
    with pytest.raises(ValueError, match="profile=True"):
        charts.step_time_chart({"text": {"paths": {"x": {"samples_per_s": 1.0}}}})


def test_speed_chart_draws_each_paths_ratio_to_trainer_per_task():
    cold = recorded()["h100_2026-11-23_cold_cache"]
    text_ax, vision_ax = charts.speed_chart(cold).axes
    text, vision = cold["text"]["paths"], cold["vision"]["paths"]
    steady = [round(path["ratio_to_trainer"], 6) for path in text.values()][::-1]
    end_to_end = [round(path["projected_ratio_to_trainer"], 6) for path in text.values()][::-1]
    assert _widths(text_ax) == steady + end_to_end  # text: both, one bar each per path
    assert _widths(vision_ax) == [round(p["ratio_to_trainer"], 6) for p in vision.values()][::-1]
    assert text_ax.get_title() == "text" and vision_ax.get_title() == "vision"
    with pytest.raises(ValueError, match="no path"):
        charts.speed_chart({"machine": {"device_name": "CPU"}})
