"""The full profile's image data set: Oxford-IIIT Pets (37 cat and dog breeds), decoded once.

torchvision's `OxfordIIITPet` downloads the images (about 800 MB) and annotations from the
Oxford VGG server and checks their MD5 checksums. Here every photo is decoded once, resized
(shorter side) and centre-cropped to a fixed square, and the uint8 tensor (N, 3, size, size)
is saved next to the download, so a second run loads it in seconds. Taught in lesson 03.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ftlab.data.image_tensors import ImageTensors

SPLITS = ("trainval", "test")


def oxford_pets(root=None, split: str = "trainval", size: int = 256, num_workers=None):
    """Return one split of Oxford-IIIT Pets as ImageTensors of uint8 (N, 3, size, size).

    `split` is the official "trainval" (3680 photos) or "test" (3669 photos). `root` defaults
    to where `ftlab prefetch` puts it (`assets.data_dir() / "oxford_iiit_pet"`); the decoded
    tensor is cached there as `oxford_pets_SPLIT_SIZE.pt`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root) if root is not None else _default_root()
    cached = root / f"oxford_pets_{split}_{size}.pt"
    if cached.exists():
        saved = torch.load(cached, weights_only=True)
        return ImageTensors(saved["images"], saved["labels"], list(saved["classes"]))
    dataset = _torchvision_pets(root, split, size)
    images, labels = _decode_all(dataset, num_workers)
    partial = cached.with_name(cached.name + ".part")
    torch.save({"images": images, "labels": labels, "classes": dataset.classes}, partial)
    os.replace(partial, cached)  # atomic: an interrupted run never leaves a half-written cache
    return ImageTensors(images, labels, list(dataset.classes))


def _torchvision_pets(root: Path, split: str, size: int):
    from torchvision.datasets import OxfordIIITPet
    from torchvision.transforms import v2

    from ftlab.setup.assets import needs_network

    decode = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    with needs_network(f"Oxford-IIIT Pets into {root}"):
        return OxfordIIITPet(root, split=split, transform=decode, download=True)  # MD5-checked


def _decode_all(dataset, num_workers) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every photo once, in parallel worker processes, into one uint8 tensor."""
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=workers)
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(batch_images)  # (batch, 3, size, size) uint8
        labels.append(batch_labels)
    return torch.cat(images), torch.cat(labels).long()


def _default_root() -> Path:
    from ftlab.setup.assets import data_dir

    return data_dir() / "oxford_iiit_pet"
