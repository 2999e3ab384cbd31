"""Image speed-ups: channels-last weights and normalisation on the GPU. Taught in lesson 06."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def channels_last(model: nn.Module) -> nn.Module:
    """Store a CNN's weights as NHWC, the layout tensor cores read fastest. Taught in lesson 06.

    Feed it images in the same layout: `images.to(memory_format=torch.channels_last)`,
    or let `ImageNormalize(..., channels_last=True)` do it on the GPU.
    """
    return model.to(memory_format=torch.channels_last)


class ImageNormalize(nn.Module):
    """Turn uint8 images (batch, 3, H, W) into normalized floats on the model's device.

    Taught in lesson 06. Put it first in the model (`nn.Sequential(ImageNormalize(mean, std),
    model)`): the loader then copies uint8 bytes, a quarter of float32's, and the GPU does the
    arithmetic.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)  # (1, 3, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"ImageNormalize expects uint8 images, got {images.dtype}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() - self.mean) / self.std  # (batch, 3, H, W) float32
