"""Images decoded once into a uint8 tensor, with labels and class names. Taught in lesson 03.

Every image data set of the course (the offline sets, Oxford-IIIT Pets) comes back as one of
these, so that transforms, loaders and cached features need not care where it came from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ImageTensors(torch.utils.data.Dataset):
    """Images decoded once into a uint8 tensor (N, 3, H, W), with labels and class names."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        transform: Callable | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            shape = tuple(images.shape)
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def with_transform(self, transform: Callable | None) -> ImageTensors:
        """Return the same images and labels seen through another transform."""
        return ImageTensors(self.images, self.labels, self.classes, transform)

    def subset(self, count: int | None, seed: int = 0) -> ImageTensors:
        """Return `count` images drawn at random with every class kept (all of them if None)."""
        if count is None or count >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        keep = order[:count].sort().values
        return ImageTensors(self.images[keep], self.labels[keep], self.classes, self.transform)
