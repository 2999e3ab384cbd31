"""Image data: images held as uint8 tensors, transforms that match the weights, augmentation.

Images are decoded once into a uint8 tensor (N, 3, H, W) at a fixed size. From there:

- `eval_transform` / `train_transform`: per-image torchvision v2 transforms whose resize, crop,
  interpolation and normalisation come from the pretrained weights' own metadata;
- `BatchAugment`: the same random resized crop, flip and normalisation applied to a whole batch
  on its device (a GPU, or the CPU), so the data loader only moves uint8 tensors;
- `compute_features`: a frozen backbone's pooled features, computed once and cached;
- `image_loaders` and `load_image_dataset`: the loaders and data sets the lesson uses.

Taught in lesson 03.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.data.batches import inputs_and_labels
from ftlab.data.image_tensors import ImageTensors
from ftlab.setup.settings import EFFICIENTNET_LITE0


@dataclass(frozen=True)
class Preprocessing:
    """How pretrained weights expect their input: resize, centre crop, interpolation, mean, std."""

    resize_size: int
    crop_size: int
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def weights_preprocessing(name: str, image_size: int | None = None) -> Preprocessing:
    """Return the preprocessing the weights of `name` were trained with, from their metadata.

    "resnet18" reads `ResNet18_Weights.IMAGENET1K_V1.transforms()` (resize 256, crop 224);
    EfficientNet-Lite0 reads timm's pretrained config (crop_pct 0.875, mean = std = 0.5).
    `image_size` scales the crop (and the resize in proportion), e.g. 64 px offline.
    """
    if name == "resnet18":
        from torchvision.models import ResNet18_Weights

        meta = ResNet18_Weights.IMAGENET1K_V1.transforms()
        crop, resize = meta.crop_size[0], meta.resize_size[0]
        interpolation, mean, std = meta.interpolation.value, meta.mean, meta.std
    elif name in (EFFICIENTNET_LITE0, "tf_efficientnet_lite0"):
        import timm

        config = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
        crop = config["input_size"][-1]
        resize = math.floor(crop / config["crop_pct"])
        interpolation, mean, std = config["interpolation"], config["mean"], config["std"]
    else:
        raise ValueError(f"unknown vision model {name!r}; use 'resnet18' or {EFFICIENTNET_LITE0!r}")
    if image_size is not None:
        resize, crop = round(image_size * resize / crop), image_size
    return Preprocessing(resize, crop, interpolation, tuple(mean), tuple(std))


def eval_transform(name: str, image_size: int | None = None):
    """Return the evaluation transform of uint8 images: resize, centre crop, scale, normalise."""
    from torchvision.transforms import v2

    pre = weights_preprocessing(name, image_size)
    return v2.Compose(
        [
            v2.Resize(pre.resize_size, interpolation=_mode(pre), antialias=True),
            v2.CenterCrop(pre.crop_size),
            v2.ToDtype(torch.float32, scale=True),  # uint8 [0, 255] -> float [0, 1]
            v2.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(name: str, image_size: int | None = None, scale=(0.08, 1.0), flip=True):
    """Return the training transform: random resized crop, horizontal flip, scale, normalise.

    `flip=False` leaves out the flip, for images that a mirror changes (digits, text).
    """
    from torchvision.transforms import v2

    pre = weights_preprocessing(name, image_size)
    return v2.Compose(
        [
            v2.RandomResizedCrop(pre.crop_size, scale, interpolation=_mode(pre), antialias=True),
            v2.RandomHorizontalFlip(p=0.5 if flip else 0.0),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


class BatchAugment(nn.Module):
    """Turn a batch of uint8 images into normalised float inputs on the batch's own device.

    In train mode each image gets its own random resized crop and horizontal flip (one
    `grid_sample` for the whole batch); in eval mode every image is resized and centre-cropped
    like `eval_transform`. `augment=False` does the eval-mode preprocessing in both modes.
    Put it in front of a model: `nn.Sequential(BatchAugment(...), model)`.
    """

    def __init__(self, name: str, image_size=None, scale=(0.08, 1.0), flip=True, augment=True):
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.pre = weights_preprocessing(name, image_size)
        self.scale, self.flip, self.augment = scale, flip, augment
        self.register_buffer("mean", torch.tensor(self.pre.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.pre.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"BatchAugment expects uint8 images (batch, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}; pass the ImageTensors without a transform"
            )
        # In float32 even under autocast: in bf16, affine_grid's coordinates would be rounded
        # to 3 significant digits, about a pixel at 224 px.
        with torch.autocast(images.device.type, enabled=False):
            x = images.float() / 255  # (batch, 3, H, W) in [0, 1]
            if self.training and self.augment:
                x = self._random_resized_crop(x)
            else:
                x = self._resize_center_crop(x)
            return (x - self.mean) / self.std  # (batch, 3, crop, crop)

    def _random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Sample one crop box (and flip) per image and resample all of them at once."""
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]

        def uniform(low: float, high: float) -> torch.Tensor:  # (batch,) on the batch's device
            return torch.empty(batch, device=x.device).uniform_(low, high)

        area = uniform(*self.scale)  # fraction of the image's area kept
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))  # crop width / height
        crop_w = torch.sqrt(area * ratio * height / width).clamp(max=1)  # fraction of width
        crop_h = torch.sqrt(area / ratio * width / height).clamp(max=1)
        center_x, center_y = uniform(-1, 1) * (1 - crop_w), uniform(-1, 1) * (1 - crop_h)
        sign = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(area)
        theta = torch.zeros(batch, 2, 3, device=x.device)  # maps output coords to input coords
        theta[:, 0, 0], theta[:, 0, 2] = crop_w * sign, center_x
        theta[:, 1, 1], theta[:, 1, 2] = crop_h, center_y
        size = (batch, 3, self.pre.crop_size, self.pre.crop_size)
        grid = F.affine_grid(theta, size, align_corners=False)  # (batch, crop, crop, 2)
        return F.grid_sample(x, grid, _mode(self.pre).value, "reflection", align_corners=False)

    def _resize_center_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to resize_size (as v2.Resize does), then centre-crop."""
        height, width = x.shape[2], x.shape[3]
        resize, crop = self.pre.resize_size, self.pre.crop_size
        if height <= width:
            size = (resize, int(resize * width / height))
        else:
            size = (int(resize * height / width), resize)
        if size != (height, width):
            x = F.interpolate(x, size, mode=_mode(self.pre).value, antialias=True).clamp(0, 1)
        top, left = round((size[0] - crop) / 2), round((size[1] - crop) / 2)  # as v2.CenterCrop
        return x[:, :, top : top + crop, left : left + crop]


def compute_features(
    backbone: nn.Module, dl: torch.utils.data.DataLoader, device=None
) -> torch.utils.data.TensorDataset:
    """Run a frozen backbone over `dl` once and return its pooled features with the labels.

    The backbone runs in eval mode (BatchNorm uses its stored statistics) under
    `torch.inference_mode()`; it must return (batch, features), e.g. `models.backbone_of(model)`.
    The result is a `TensorDataset(features, labels)` on the CPU to train a head on.
    """
    from ftlab.setup.env import pick_device

    device = torch.device(device) if device is not None else pick_device()
    was_training = backbone.training
    backbone.eval().to(device)
    features, labels = [], []
    with torch.inference_mode():
        for batch in dl:
            images, batch_labels = inputs_and_labels(batch)
            if not torch.is_tensor(images) or batch_labels is None:
                raise ValueError(f"expected (images, labels) batches, got {type(batch).__name__}")
            out = backbone(images.to(device))  # (batch, feature_dim)
            if out.ndim != 2:
                raise ValueError(
                    f"the backbone returned shape {tuple(out.shape)}; it must return pooled "
                    "features (batch, feature_dim): use ftlab.models.classifiers.backbone_of(model)"
                )
            features.append(out.float().cpu())
            labels.append(batch_labels.cpu())
    backbone.train(was_training)
    # Clone outside inference mode: inference tensors cannot be saved for backward later.
    return torch.utils.data.TensorDataset(torch.cat(features).clone(), torch.cat(labels).clone())


def image_loaders(train_set, val_set=None, batch_size: int = 32, seed: int = 0, num_workers=0):
    """Return (train_dl, val_dl): the training set shuffled reproducibly, validation in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(
        train_set, batch_size, shuffle=True, generator=generator, num_workers=num_workers
    )
    if val_set is None:
        return train_dl, None
    val_dl = torch.utils.data.DataLoader(val_set, batch_size, num_workers=num_workers)
    return train_dl, val_dl


def load_image_dataset(name: str, size: int, max_train_samples=None, root=None, seed=0):
    """Return {"train", "test"} (and "val" where the set has one) ImageTensors at `size` pixels.

    Store them at the weights' resize size (`weights_preprocessing(...).resize_size`), so the
    evaluation transform is a centre crop and training crops have room to move.

    "digits", "textures" and "lfw_faces" come from scikit-learn and scikit-image (offline;
    "digits" has a "val" split); "oxford_iiit_pet" downloads the
    Oxford-IIIT Pets (torchvision checks its MD5 checksums) and decodes it once.
    """
    from ftlab.data import offline, pets

    if name == "textures":
        splits = offline.textures(patch_size=size, seed=seed)
    elif name in ("lfw_faces", "digits"):
        made = getattr(offline, name)(seed=seed)
        splits = {key: resize_images(s, size) for key, s in made.items()}
    elif name == "oxford_iiit_pet":
        splits = {
            "train": pets.oxford_pets(root, "trainval", size),
            "test": pets.oxford_pets(root, "test", size),
        }
    else:
        raise ValueError(
            f"unknown image data set {name!r}; use digits, textures, lfw_faces, oxford_iiit_pet"
        )
    splits["train"] = splits["train"].subset(max_train_samples, seed)
    return splits


def resize_images(dataset: ImageTensors, size: int) -> ImageTensors:
    """Return the images resized to `size` x `size` (antialiased), still uint8."""
    from torchvision.transforms import v2

    images = v2.Resize((size, size), antialias=True)(dataset.images)  # (N, 3, size, size)
    return ImageTensors(images, dataset.labels, dataset.classes, dataset.transform)


def _mode(pre: Preprocessing):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(pre.interpolation)
