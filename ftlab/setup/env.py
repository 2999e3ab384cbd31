"""Where the course runs: device and precision choice, Colab, seeding, and `doctor()`.

Taught in lesson 00 (`notebooks/00_start_here.ipynb`).
"""

from __future__ import annotations

import os
import platform
import random
import sys
import warnings

import numpy as np
import torch

PRECISIONS = ("bf16", "fp16", "fp32")


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU. Taught in lesson 00."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(device: torch.device | str, precision: str = "auto") -> str:
    """Resolve "auto" to bf16 (Ampere+ GPUs), fp16 (older GPUs such as the T4) or fp32 (CPU, MPS).

    Taught in lesson 00.
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
        return precision
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def in_colab() -> bool:
    """Return True inside Google Colab. Taught in lesson 00."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def warn_if_no_gpu(lesson: str = "this lesson") -> bool:
    """Warn, visibly, when a lesson that wants a GPU runs on the CPU; return True if it warned."""
    if torch.cuda.is_available():
        return False
    how = (
        "In Colab: Runtime > Change runtime type > T4 GPU, then run the notebook again."
        if in_colab()
        else "It will still run, with the small offline settings."
    )
    warnings.warn(f"No GPU found: {lesson} runs on the CPU. {how}", stacklevel=2)
    return True


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with deterministic=True also ask for deterministic kernels.

    Taught in lesson 00.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def versions() -> dict[str, str]:
    """Return the versions of Python and the libraries the course runs on."""
    found = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "transformers", "datasets", "timm", "accelerate"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def doctor(print_report: bool = True) -> dict[str, str]:
    """Report versions, device, GPU, profile and offline assets; print it unless told not to.

    Taught in lesson 00; also `ftlab doctor` on the command line.
    """
    from ftlab.setup import assets
    from ftlab.setup import settings as profile

    device = pick_device()
    report = dict(versions())
    report["device"] = str(device)
    report["precision"] = pick_precision(device)
    report["gpu"] = _gpu_summary()
    report["cpu cores"] = str(os.cpu_count())
    report["colab"] = str(in_colab())
    report["profile"] = profile.active_profile()
    report.update(assets.status())
    if print_report:
        width = max(len(key) for key in report)
        print("\n".join(f"{key:<{width}}  {value}" for key, value in report.items()))
    return report


def _gpu_summary() -> str:
    if not torch.cuda.is_available():
        return "none"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
