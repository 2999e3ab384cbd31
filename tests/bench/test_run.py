"""Tests for ftlab.bench: every path runs at tiny sizes and the JSON holds what the README quotes.

Correctness only: no speed is asserted (numbers depend on the machine and its load); the one
timing check is a lower bound, that timing a loader counts the sleeps it was built with.
"""

import json
import math
import time

import pytest
import torch
from graph_tape import tape_capture

from ftlab.bench import data as bench_data
from ftlab.bench import paths as bench_paths
from ftlab.bench import run as bench
from ftlab.bench import timing as bench_timing
from ftlab.scaling import compile as compiling
from ftlab.scaling import vision

TEXT_PATHS = {"plain_fp32", "trainer_default", "ftlab_fit_fast"}
FIELDS = {
    "samples_per_s", "warmup_s", "steady_s", "total_s", "time_to_target_s", "first_loss",
    "final_loss", "eval_loss", "eval_accuracy", "peak_memory_mb", "peak_memory_kind",
    "ratio_to_trainer", "ratio_to_plain", "slow_steps_after_warmup", "graphs_compiled",
    "graphs_recorded", "loader_ms_per_batch",
}  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One tiny CPU run through the command line, single-threaded (the test machine is shared)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_every_path_ran_with_every_field(results):
    assert results["size"] == "tiny" and results["machine"]["device"] == "cpu"
    for task in ("text", "vision"):
        paths = results[task]["paths"]
        assert set(paths) == TEXT_PATHS, task  # CPU: no bf16 Trainer, no compile by default
        for name, path in paths.items():
            assert FIELDS <= set(path), (task, name, FIELDS - set(path))
            assert path["samples_per_s"] > 0 and path["steady_s"] > 0, (task, name)
            assert path["graphs_compiled"] == 0, (task, name)  # nothing asked for compilation
            assert path["graphs_recorded"] == 0, (task, name)  # nor for whole-step graphs
            assert path["loader_ms_per_batch"] > 0, (task, name)  # every path timed its loader
            assert 0 < path["warmup_s"] < path["total_s"], (task, name)
            assert 0.0 <= path["eval_accuracy"] <= 1.0 and math.isfinite(path["eval_loss"])
        skipped = {"trainer_bf16", "ftlab_fit_fast_compiled", "ftlab_fit_fast_cuda_graph"}
        assert set(results[task]["skipped"]) == skipped and results[task]["failed"] == {}


def test_ratios_are_computed_from_the_rates(results):
    for task in ("text", "vision"):
        paths = results[task]["paths"]
        trainer, plain = paths["trainer_default"], paths["plain_fp32"]
        assert trainer["ratio_to_trainer"] == 1.0 and plain["ratio_to_plain"] == 1.0
        for path in paths.values():
            assert path["ratio_to_trainer"] == pytest.approx(
                path["samples_per_s"] / trainer["samples_per_s"]
            )
            assert path["ratio_to_plain"] == pytest.approx(
                path["samples_per_s"] / plain["samples_per_s"]
            )
    for path in results["text"]["paths"].values():  # end-to-end 200k samples, projected
        assert path["projected_s"] > path["warmup_s"]
        assert path["projected_ratio_to_trainer"] > 0


def test_paths_train_the_same_model_from_the_same_start(results):
    for task in ("text", "vision"):
        work = dict(bench.SIZES["tiny"][task], task=task, seed=0)
        first, second = (bench_data.build_model(work, torch.device("cpu")) for _ in range(2))
        for (name, a), b in zip(
            first.state_dict().items(), second.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (task, name)
    for name, path in results["text"]["paths"].items():  # random BERT starts near-uniform
        assert path["first_loss"] == pytest.approx(math.log(2), abs=0.15), name


def test_time_to_target_is_reached_only_when_the_loss_gets_there():
    work = {"steps": 6, "target_loss": 0.5}
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # windows of 2 steps: the mean of a window counts
    assert bench_timing.time_to_target([0.9, 0.8, 0.5, 0.4, 0.6, 0.6], times, work) == 4.0
    assert bench_timing.time_to_target([0.9, 0.4, 0.7, 0.7, 0.6, 0.6], times, work) is None


def test_a_compilation_window_after_warmup_leaves_the_steady_window():
    # warm-up 2 steps, then windows of 2 steps of 2 s each; the third window compiles for 30 s
    times = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 40.0, 41.0, 42.0, 43.0]
    warmup_s, steady_s, slow = bench_timing.steady_window(times, warmup=2, every=2)
    assert (warmup_s, steady_s, slow) == (6.0 + 31.0, 6.0, 2)  # 3 windows of 2 s stay steady
    # a read-back every 2 steps makes every other step long: not slow, the windows are even
    synced = [5.0, 6.0, 6.1, 8.0, 8.1, 10.0, 10.1, 12.0]
    assert bench_timing.steady_window(synced, warmup=2, every=2) == (6.0, 6.0, 0)


def test_windows_that_compiled_are_warm_up_even_when_most_windows_compiled():
    # windows of 2 steps: the first two compile a new shape each (3 s a step), the last is calm
    times = [1.0, 2.0, 5.0, 8.0, 11.0, 14.0, 15.0, 16.0]
    graphs = [1, 1, 2, 2, 3, 3, 3, 3]
    # by time alone the slow windows are the median, so all would count as steady
    assert bench_timing.steady_window(times, warmup=2, every=2) == (2.0, 14.0, 0)
    assert bench_timing.steady_window(times, 2, 2, graphs=graphs) == (2.0 + 12.0, 2.0, 4)
    # every window compiled: nothing was steady
    every_window = [1, 1, 2, 2, 3, 3, 4, 4]
    assert bench_timing.steady_window(times, 2, 2, graphs=every_window) == (16.0, 0.0, 6)


def test_the_last_shorter_window_is_judged_too():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 30.0]  # windows 2-4, 4-6 steady; 6-7 compiles
    assert bench_timing.steady_window(times, 2, 2, graphs=[0] * 6 + [1]) == (26.0, 4.0, 1)


def test_the_step_timer_counts_the_graphs_each_step_compiled():
    timer = bench_timing.StepTimer(torch.device("cpu"), {"steps": 3, "warmup_steps": 1})
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    for size in (2, 2, 3):  # a new shape in the third step: one more graph
        double(torch.ones(size))
        timer.step_end()
    assert timer.graphs == [1, 1, 2]
    assert timer.compiled == 2 and timer.recorded == 0


def test_the_step_timer_counts_whole_steps_recorded_as_graphs_too():
    class Recording:  # a CudaGraphStep's count of the whole steps it recorded
        recordings = 0

    timer = bench_timing.StepTimer(torch.device("cpu"), {"steps": 4, "warmup_steps": 1})
    graphed = Recording()
    assert timer.count_recordings(graphed) is graphed
    for step in range(4):
        if step == 2:  # the CudaGraphStep meets a new shape: it records that step
            graphed.recordings += 1
        timer.step_end()
    assert timer.graphs == [0, 0, 1, 1] and (timer.compiled, timer.recorded) == (0, 1)


class _SlowImages(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, index):
        time.sleep(0.005)
        return torch.tensor(float(index))


def test_timing_the_loader_measures_it_and_leaves_the_run_as_it_was():
    loader = torch.utils.data.DataLoader(_SlowImages(), batch_size=4, shuffle=True)
    torch.manual_seed(0)
    unseen = [batch.tolist() for batch in loader]  # the order training would see
    torch.manual_seed(0)
    next(iter(loader))  # drawing batches moves the random state: another order after it
    assert [batch.tolist() for batch in loader] != unseen
    torch.manual_seed(0)
    timer = bench_timing.StepTimer(torch.device("cpu"), {"steps": 3, "warmup_steps": 1})
    before = timer.started
    timer.time_loader(loader, batches=3)
    assert [batch.tolist() for batch in loader] == unseen  # timed, and the order is kept
    assert timer.loader_ms >= 4 * 5  # 4 images of 5 ms a batch, at least
    assert timer.started - before >= 3 * 4 * 0.005  # the clock restarted after the loader


class _StepsOnly(bench_timing.StepTimer):
    def time_loader(self, loader, batches=bench_timing.LOADER_BATCHES):
        self.loader_ms = None  # the loader is not drawn first


@pytest.mark.parametrize("task", ["text", "vision"])
def test_timing_the_loaders_changes_nothing_a_path_trains(task):
    cpu = torch.device("cpu")
    work = bench.work_for("tiny", task, cpu)
    data = (bench_data.text_data if task == "text" else bench_data.vision_data)(work)
    for name, run in bench_paths.EAGER.items():
        losses = {}
        for timer_class in (bench_timing.StepTimer, _StepsOnly):
            timer = timer_class(cpu, work)
            losses[timer_class] = run(name, bench_data.build_model(work, cpu), data, work, cpu,
                                      timer, None)  # fmt: skip
            assert (timer.loader_ms is None) == (timer_class is _StepsOnly), name
        assert losses[bench_timing.StepTimer] == losses[_StepsOnly], (task, name)


def test_a_path_without_a_steady_state_has_no_rate_and_says_so():
    path = dict(samples_per_s=None, ratio_to_trainer=None, warmup_s=8.4, time_to_target_s=None,
                peak_memory_mb=900, eval_accuracy=0.6)  # fmt: skip
    results = {"machine": {"device_name": "CPU"}, "size": "tiny", "text": {"paths": {"p": path}}}
    assert "not steady" in bench.summary(results).splitlines()[-1]


def test_text_data_is_sst2_shaped_and_labelled_by_its_marker():
    work = dict(bench.SIZES["cpu"]["text"], task="text", seed=0, bucket_multiple=32)
    data = bench_data.text_data(work)
    lengths = [len(example["input_ids"]) for example in data["plain"]]
    assert len(lengths) == work["steps"] * work["batch_size"]
    assert 11 < sum(lengths) / len(lengths) < 15 and max(lengths) <= work["max_length"]
    for example in data["plain"][:50]:
        assert (4 + example["labels"]) in example["input_ids"]
        assert (5 - example["labels"]) not in example["input_ids"]
    fixed = data["collate"](data["plain"][:4])["input_ids"]
    assert fixed.shape == (4, work["max_length"])  # the plain path pads to max_length
    bucketed = data["fast_collate"](data["fast"][:4])["input_ids"]
    assert bucketed.shape[1] % 32 == 0 and bucketed.shape[1] < work["max_length"]


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="task must be"):
        bench.run_bench("cpu", "audio", tiny=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            bench.run_bench("cuda", tiny=True)
    with pytest.raises(SystemExit):
        bench.main(["--device", "tpu"])


def test_vision_paths_read_the_same_images():
    work = dict(bench.SIZES["tiny"]["vision"], task="vision", seed=0)
    data = bench_data.vision_data(work)
    assert len(data["plain"]) == len(data["fast"]) == work["steps"] * work["batch_size"]
    floats, label = data["plain"][3]
    image, same_label = data["fast"][3]
    assert image.dtype == torch.uint8 and label == same_label
    normalize = vision.ImageNormalize(*bench_data.IMAGENET)
    assert torch.allclose(normalize(image[None])[0], floats)


def test_the_recorded_gpu_results_hold_what_the_readme_quotes():
    results = bench.recorded()
    cold = results["h100_2026-11-23_cold_cache"]
    assert cold["machine"]["device_name"] == "NVIDIA H100 80GB HBM3"
    text, vision = cold["text"]["paths"], cold["vision"]["paths"]
    compiled = "ftlab_fit_fast_compiled_reduce-overhead"
    assert round(text[compiled]["samples_per_s"]) == 3019  # the README's table
    assert round(text[compiled]["ratio_to_trainer"], 2) == 3.54
    assert round(text[compiled]["projected_ratio_to_trainer"], 2) == 1.67
    assert round(vision[compiled]["ratio_to_plain"], 2) == 4.59
    plain_ms = cold["vision"]["config"]["batch_size"] / vision["plain_fp32"]["samples_per_s"] * 1e3
    assert round(plain_ms) == 31  # the plain loop's step; 4,100 img/s: the fp32 figure
    assert round(vision[compiled]["samples_per_s"] / 4100, 1) == 2.3
    warm = results["h100_2026-11-23_text_warm_cache"]["text"]["paths"][compiled]
    assert round(warm["projected_ratio_to_trainer"], 2) == 3.02
    assert "ftlab bench on NVIDIA H100" in bench.summary(cold)


def test_compiled_paths_text_static_and_dynamic_vision_static(monkeypatch):
    compile_model, modes = compiling.compile_model, []

    def eager_compile(model, mode, dynamic=False):  # the paths' wiring, no C++ compilation
        modes.append((mode, dynamic))
        return compile_model(model, mode, dynamic=dynamic, backend="eager")

    monkeypatch.setattr(compiling, "compile_model", eager_compile)
    text = bench.run_bench("cpu", "text", tiny=True, compile_mode="default")["text"]
    compiled = "ftlab_fit_fast_compiled_default"
    assert set(text["paths"]) == TEXT_PATHS | {compiled, compiled + "_dynamic"}
    assert modes == [("default", False), ("default", True)]
    graphs = {name: path["graphs_compiled"] for name, path in text["paths"].items()}
    assert graphs[compiled] > graphs[compiled + "_dynamic"] == 1  # a graph per bucket, or one
    assert set(text["skipped"]) == {"trainer_bf16", "ftlab_fit_fast_cuda_graph"}
    vision = bench.run_bench("cpu", "vision", tiny=True, compile_mode="default")["vision"]
    assert set(vision["paths"]) == TEXT_PATHS | {compiled}  # images: one shape, one graph


def test_cuda_graph_paths_run_fit_with_cuda_graph_last(monkeypatch):
    from ftlab.scaling import cuda_graphs as graphs

    recorded, modes = [], []
    compile_model = compiling.compile_model

    def eager_compile(model, mode, dynamic=False):
        modes.append(mode)
        return compile_model(model, mode, dynamic=dynamic, backend="eager")

    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))  # as if this CPU were a GPU
    monkeypatch.setattr(graphs, "capture_cuda_graph", tape_capture(recorded))
    monkeypatch.setattr(graphs, "WARMUP_STEPS", 1)  # 6 tiny steps over up to 4 bucket shapes
    monkeypatch.setattr(compiling, "compile_model", eager_compile)
    text = bench.run_bench("cpu", "text", tiny=True, compile_mode="reduce-overhead")["text"]
    graphed = ["ftlab_fit_fast_cuda_graph", "ftlab_fit_fast_compiled_default_cuda_graph"]
    assert list(text["paths"])[-2:] == graphed and text["failed"] == {}
    assert modes == ["reduce-overhead", "reduce-overhead", "default"]  # Inductor's own graphs off
    assert len(recorded) >= 2  # each graphed path recorded at least its first bucket
    assert all(text["paths"][name]["eval_accuracy"] >= 0 for name in graphed)
    made = {name: path["graphs_recorded"] for name, path in text["paths"].items()}
    assert all(made[name] >= 1 for name in graphed) and sum(made.values()) == len(recorded)
    assert text["paths"]["ftlab_fit_fast_cuda_graph"]["graphs_compiled"] == 0  # nothing compiled


def test_a_path_that_fails_is_reported_and_the_others_kept(monkeypatch):
    def broken(name, *args):
        raise RuntimeError("operation not permitted when stream is capturing")

    eager = dict(bench_paths.EAGER, ftlab_fit_fast=broken)
    monkeypatch.setattr(bench_paths, "EAGER", eager)
    text = bench.run_bench("cpu", "text", tiny=True)["text"]
    assert set(text["paths"]) == {"plain_fp32", "trainer_default"}
    assert text["failed"] == {
        "ftlab_fit_fast": "RuntimeError: operation not permitted when stream is capturing"
    }


def test_profile_covers_the_last_steps_and_leaves_them_out_of_the_rates():

    text = bench.run_bench("cpu", "text", tiny=True, compile_mode=None, profile=True)["text"]
    work = text["config"]
    profiled = bench_timing.profiled_steps(work["steps"], work["warmup_steps"])
    assert profiled == 2  # tiny: 6 steps, 2 of warm-up, half of the other 4
    for name, path in text["paths"].items():
        profile = path["profile"]
        assert profile["steps"] == profiled, name
        assert profile["wall_ms_per_step"] >= profile["host_op_ms_per_step"] > 0, name
        assert profile["device_busy_ms_per_step"] == 0 and profile["kernel_launches_per_step"] == 0
        assert profile["top_host_ops"] and all(
            op["ms_per_step"] > 0 for op in profile["top_host_ops"]
        )
        timed = work["steps"] - profiled - work["warmup_steps"] - path["slow_steps_after_warmup"]
        assert path["samples_per_s"] == pytest.approx(timed * work["batch_size"] / path["steady_s"])
    lines = bench_timing.profile_summary({"text": text}).splitlines()
    assert len(lines) == 2 * len(text["paths"]) and "ms/step wall" in lines[0]
    assert "device busy" not in lines[0]  # no GPU: nothing said of one


def test_step_profiler_needs_a_step_and_profiles_only_its_window(capfd):

    with pytest.raises(ValueError, match="at least 1 step"):
        bench_timing.StepProfiler(torch.device("cpu"), start_after=4, steps=0)
    profiler = bench_timing.StepProfiler(torch.device("cpu"), start_after=1, steps=2)
    x = torch.randn(64, 64)
    for done in range(1, 5):
        (x @ x).sum()
        profiler.step_end(done)
        if done == 2:  # inside the window: not summarised yet
            assert profiler.result is None and profiler.profiler is not None
    assert profiler.result["steps"] == 2
    assert any(op["op"] == "aten::mm" for op in profiler.result["top_host_ops"])
    assert profiler.result["top_host_ops"][0]["calls_per_step"] >= 1
    assert "profiler_st" not in capfd.readouterr().err  # Kineto's start/stop lines are hidden


def test_the_recorded_cpu_run_holds_what_the_readme_quotes():
    run = bench.recorded()["cpu_2-cores_2026-11-23"]
    assert run["machine"]["device"] == "cpu" and run["compile_mode"] is None
    rates = {
        task: [round(path["samples_per_s"], 1) for path in run[task]["paths"].values()]
        for task in ("text", "vision")
    }
    assert rates == {"text": [68.6, 253.4, 467.0], "vision": [30.0, 36.9, 38.1]}  # the table
    assert round(run["text"]["paths"]["ftlab_fit_fast"]["ratio_to_trainer"], 2) == 1.84


def test_the_recorded_cpu_compile_runs_hold_what_the_readme_quotes():
    runs = bench.recorded()
    cold = runs["cpu_2-cores_2026-11-23_text_compiled"]
    loaded = runs["cpu_2-cores_2026-11-23_text_compiled_loaded_cache"]  # a fresh inductor dir
    assert (cold["compile_cache"]["loaded"], cold["compile_cache"]["saved"]) == (0, 18)
    assert loaded["compile_cache"]["loaded"] == 18 and loaded["compile_cache"]["hits"] > 0
    per_bucket = "ftlab_fit_fast_compiled_default"
    dynamic, eager = per_bucket + "_dynamic", "ftlab_fit_fast"

    def field(run, path, key):
        return round(run["text"]["paths"][path][key])

    for run in (cold, loaded):
        assert field(run, per_bucket, "graphs_compiled") == 5
        assert field(run, dynamic, "graphs_compiled") == 1
    # the README's figures: warm-up seconds of each run, then steady samples/s
    warmups = [
        field(run, path, "warmup_s") for run in (cold, loaded) for path in (per_bucket, dynamic)
    ]
    assert warmups == [152, 53, 100, 35]
    rates = [
        field(run, path, "samples_per_s") for path in (dynamic, eager) for run in (cold, loaded)
    ]
    assert rates == [367, 510, 594, 456]


def test_compile_cache_flag_wraps_the_run_and_reports(tmp_path):
    out, cache_file = tmp_path / "bench.json", tmp_path / "bench.compiled"
    argv = ["--device", "cpu", "--tiny", "--task", "text", "--compile", "none", "--out", str(out)]
    assert bench.main([*argv, "--compile-cache", str(cache_file)]) == 0
    report = json.loads(out.read_text())["compile_cache"]
    assert report["path"] == str(cache_file) and report["loaded"] == report["hits"] == 0
    assert bench.main(argv) == 0 and json.loads(out.read_text())["compile_cache"] is None
