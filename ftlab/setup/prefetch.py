"""`ftlab prefetch`: download every full-profile checkpoint and data set ahead of time.

A classroom runs it once on a machine with network; afterwards the lessons run with no
network, from the Hugging Face and torch caches or from a shared folder (`--dest`).
Taught in lesson 00.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ftlab.setup.settings import LESSONS, PROFILES

FULL = PROFILES.index("full")


def full_profile_assets() -> dict[str, set[str]]:
    """Return the full profile's text models, text data sets, vision models and image data sets."""
    wanted: dict[str, set[str]] = {}
    for table in LESSONS.values():
        for key in ("text_model", "text_dataset", "vision_model", "image_dataset"):
            if key in table:
                wanted.setdefault(key, set()).add(table[key][FULL])
    return wanted


def prefetch(dest: str | None = None) -> dict[str, str]:
    """Download the full profile's assets; return the FTLAB_* overrides that point at them."""
    wanted = full_profile_assets()
    overrides = {}
    for name in sorted(wanted.get("text_model", ())):
        overrides["FTLAB_TEXT_MODEL"] = _text_model(name, dest)
    for name in sorted(wanted.get("text_dataset", ())):
        overrides["FTLAB_TEXT_DATASET"] = _text_dataset(name, dest)
    if dest is not None:
        os.environ["TORCH_HOME"] = str(Path(dest) / "torch")
        os.environ["FTLAB_DATA_DIR"] = str(Path(dest) / "data")
        overrides["TORCH_HOME"] = os.environ["TORCH_HOME"]
        overrides["FTLAB_DATA_DIR"] = os.environ["FTLAB_DATA_DIR"]
    for name in sorted(wanted.get("vision_model", ())):
        _vision_weights(name)
    for name in sorted(wanted.get("image_dataset", ())):
        _image_dataset(name)
    return overrides


def _text_model(name: str, dest: str | None) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    print(f"text model {name}")
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)
    if dest is None:
        return name
    folder = Path(dest) / name.replace("/", "__")
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


def _text_dataset(name: str, dest: str | None) -> str:
    from datasets import load_dataset

    from ftlab.data.text import hub_dataset_args

    print(f"text data set {name}")
    dataset = load_dataset(*hub_dataset_args(name))  # "nyu-mll/glue:sst2" -> (path, config)
    if dest is None:
        return name
    folder = Path(dest) / name.replace("/", "__").replace(":", "__")
    dataset.save_to_disk(str(folder))  # a str: older datasets hand the path to fsspec as it is
    return str(folder)


def _vision_weights(name: str) -> None:
    from torchvision.models import get_model_weights

    print(f"vision weights {name} (torch cache: {os.environ.get('TORCH_HOME', '~/.cache/torch')})")
    get_model_weights(name).IMAGENET1K_V1.get_state_dict(progress=True)


def _image_dataset(name: str) -> None:
    from torchvision import datasets

    from ftlab.setup.assets import data_dir

    if name != "oxford_iiit_pet":
        raise ValueError(f"no prefetch recipe for image data set {name!r}")
    root = data_dir() / name
    print(f"image data set {name} -> {root}")
    for split in ("trainval", "test"):
        datasets.OxfordIIITPet(root=root, split=split, download=True)  # md5-checked


def main(argv: list[str] | None = None) -> int:
    """`ftlab prefetch [--dest DIR]`: download everything the full profile needs."""
    parser = argparse.ArgumentParser(prog="ftlab prefetch", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", help="a folder to save into (default: the usual caches)")
    args = parser.parse_args(argv)
    try:
        overrides = prefetch(args.dest)
    except OSError as error:
        print(f"prefetch failed: {error}\nWithout network, use FTLAB_PROFILE=offline.")
        return 1
    print("Done. To use these copies in the lessons, set:")
    for name, value in overrides.items():
        print(f"  export {name}={value}")
    return 0
