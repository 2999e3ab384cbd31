import random
import sys
import warnings

import numpy as np
import pytest
import torch

from ftlab.setup import env, settings


def test_pick_device_on_cpu_machine_and_explicit_choice():
    expected = "cuda" if torch.cuda.is_available() else None
    device = env.pick_device()
    if expected:
        assert device.type == expected
    else:
        assert device.type in ("cpu", "mps")
    assert env.pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_explicit_precision_is_kept(precision):
    assert env.pick_precision("cuda", precision) == precision


def test_auto_precision_is_fp32_off_cuda():
    assert env.pick_precision("cpu") == "fp32"
    assert env.pick_precision(torch.device("mps")) == "fp32"


def test_auto_precision_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert env.pick_precision("cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert env.pick_precision("cuda") == "fp16"  # a T4


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bf16"):
        env.pick_precision("cpu", "fp8")


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not env.in_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert env.in_colab()


def test_gpu_warning_says_how_to_switch_in_colab(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    with pytest.warns(UserWarning, match="Change runtime type"):
        assert env.warn_if_no_gpu("lesson 02")


def test_no_gpu_warning_when_a_gpu_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not env.warn_if_no_gpu()


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    env.seed_everything(3)
    first = draw()
    env.seed_everything(3)
    assert draw() == first
    env.seed_everything(4)
    assert draw() != first


def test_doctor_reports_versions_device_profile_and_assets(capsys):
    report = env.doctor()
    printed = capsys.readouterr().out
    for key in ("python", "torch", "transformers", "datasets", "device", "gpu", "profile"):
        assert key in report and key in printed
    assert report["profile"] == "offline" == settings.active_profile()  # agrees with the banner
    assert report["offline MiniLM"].endswith("model")
    assert not report["offline MiniLM"].startswith("missing")
