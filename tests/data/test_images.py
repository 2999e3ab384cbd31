"""Tests for ftlab.data.images: weights' preprocessing, transforms, batch augmentation, features."""

import pytest
import torch
from torch import nn

from ftlab.data.image_tensors import ImageTensors
from ftlab.data.images import (
    BatchAugment,
    compute_features,
    eval_transform,
    image_loaders,
    load_image_dataset,
    resize_images,
    train_transform,
    weights_preprocessing,
)
from ftlab.setup.settings import EFFICIENTNET_LITE0


def random_images(count=6, height=40, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)


def test_resnet18_preprocessing_comes_from_the_weights_metadata():
    from torchvision.models import ResNet18_Weights

    meta = ResNet18_Weights.IMAGENET1K_V1.transforms()
    pre = weights_preprocessing("resnet18")
    assert (pre.resize_size, pre.crop_size) == (meta.resize_size[0], meta.crop_size[0])
    assert (pre.resize_size, pre.crop_size) == (256, 224)
    assert pre.mean == tuple(meta.mean) and pre.std == tuple(meta.std)
    assert pre.interpolation == "bilinear"


def test_efficientnet_lite0_preprocessing_uses_half_mean_and_std():
    pre = weights_preprocessing(EFFICIENTNET_LITE0)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    assert (pre.resize_size, pre.crop_size, pre.interpolation) == (256, 224, "bicubic")


def test_image_size_scales_crop_and_resize_together():
    pre = weights_preprocessing("resnet18", image_size=64)
    assert pre.crop_size == 64 and pre.resize_size == round(64 * 256 / 224) == 73


def test_unknown_model_name_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="resnet18"):
        weights_preprocessing("resnet19")


def test_eval_transform_gives_normalised_float_crop():
    image = torch.full((3, 50, 80), 200, dtype=torch.uint8)  # a constant, non-square image
    out = eval_transform("resnet18", image_size=32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    pre = weights_preprocessing("resnet18")
    expected = (200 / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)  # per channel
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    assert out.std(dim=(1, 2)).max() < 1e-5


def test_train_transform_gives_random_crops_of_the_right_shape():
    image = random_images(1, 48, 48)[0]
    transform = train_transform(EFFICIENTNET_LITE0, image_size=32)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)  # random crop and flip differ between calls


def test_train_transform_without_flip_never_mirrors():
    image = random_images(1, 32, 32)[0]
    for flip, expect_mirror in ((True, True), (False, False)):
        # The whole image as the crop: only the flip can change it.
        transform = train_transform(EFFICIENTNET_LITE0, 32, scale=(1.0, 1.0), flip=flip)
        plain = train_transform(EFFICIENTNET_LITE0, 32, scale=(1.0, 1.0), flip=False)
        mirrored = plain(image.flip(-1))
        torch.manual_seed(0)
        views = [transform(image) for _ in range(20)]
        found = any(torch.allclose(view, mirrored, atol=1e-5) for view in views)
        assert found == expect_mirror, flip


def test_batch_augment_eval_mode_matches_the_per_image_eval_transform():
    images = random_images(5, 73, 73)
    expected = torch.stack([eval_transform(EFFICIENTNET_LITE0, 64)(image) for image in images])
    out = BatchAugment(EFFICIENTNET_LITE0, 64).eval()(images)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # a pure centre crop


def test_batch_augment_eval_mode_resizes_like_v2_resize():
    images = random_images(3, 50, 90)
    expected = torch.stack([eval_transform("resnet18", 32)(image) for image in images])
    out = BatchAugment("resnet18", 32).eval()(images)
    assert out.shape == expected.shape == (3, 3, 32, 32)
    # v2.Resize rounds to uint8 in between; the batch path stays in float: within 1/255 / std.
    assert (out - expected).abs().max() < 1.5 / 255 / min(weights_preprocessing("resnet18").std)


def test_batch_augment_train_mode_crops_each_image_differently():
    image = random_images(1, 48, 48)
    images = image.expand(8, -1, -1, -1).contiguous()  # the same image 8 times
    torch.manual_seed(0)
    out = BatchAugment("resnet18", 32).train()(images)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert not torch.allclose(out[0], out[1])  # one crop per image, not one per batch


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_augment_samples_in_float32_under_bf16_autocast(mode):
    images, augment = random_images(4, 96, 96), BatchAugment("resnet18", 64)
    augment.train(mode == "train")
    torch.manual_seed(0)
    exact = augment(images)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fit's fast path trains under autocast
        out = augment(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, exact, rtol=0, atol=0)


def test_an_affine_grid_made_under_bf16_autocast_is_rounded_by_a_pixel():
    # Why BatchAugment leaves autocast: its crops' sampling grid would move by about a pixel.
    theta = torch.tensor([[[0.9, 0.0, 0.05], [0.0, 0.9, -0.05]]])
    exact = nn.functional.affine_grid(theta, (1, 3, 224, 224), align_corners=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = nn.functional.affine_grid(theta, (1, 3, 224, 224), align_corners=False)
    pixels = (rounded.float() - exact).abs().max() * 224 / 2  # grid units: 2 = the image's width
    assert rounded.dtype == torch.bfloat16 and pixels > 0.4


def test_batch_augment_without_augmentation_is_deterministic_in_train_mode():
    images = random_images(4, 48, 48)
    plain = BatchAugment("resnet18", 32, augment=False).train()
    torch.testing.assert_close(plain(images), BatchAugment("resnet18", 32).eval()(images))


def test_batch_augment_of_a_constant_image_is_the_normalised_constant():
    images = torch.full((4, 3, 40, 40), 51, dtype=torch.uint8)
    out = BatchAugment(EFFICIENTNET_LITE0, 24).train()(images)
    torch.testing.assert_close(out, torch.full_like(out, (51 / 255 - 0.5) / 0.5))


def test_batch_augment_rejects_float_images_and_bad_scales():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment("resnet18", 32)(torch.rand(2, 3, 40, 40))
    with pytest.raises(ValueError, match="scale"):
        BatchAugment("resnet18", 32, scale=(0.5, 2.0))


class TinyBackbone(nn.Module):
    """A conv, a BatchNorm and a global pool: (batch, 3, H, W) -> (batch, 4)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, images):
        return self.bn(self.conv(images)).mean(dim=(2, 3))


def feature_data(count=10):
    images = torch.randn(count, 3, 8, 8)
    return torch.utils.data.TensorDataset(images, torch.arange(count) % 3)


def test_cached_features_equal_a_direct_forward_in_eval_mode():
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), feature_data()
    backbone.bn.running_mean.fill_(0.3)  # eval mode must use these stored statistics
    cached = compute_features(backbone.train(), torch.utils.data.DataLoader(data, 4), "cpu")
    assert backbone.training  # the caller's mode is restored
    with torch.no_grad():
        direct = backbone.eval()(data.tensors[0])
    torch.testing.assert_close(cached.tensors[0], direct)
    assert torch.equal(cached.tensors[1], data.tensors[1])


def test_cached_features_can_train_a_head():
    cached = compute_features(TinyBackbone(), torch.utils.data.DataLoader(feature_data(), 4), "cpu")
    head = nn.Linear(4, 3)
    features, labels = cached.tensors
    nn.functional.cross_entropy(head(features), labels).backward()  # no inference-tensor error
    assert head.weight.grad is not None


def test_compute_features_rejects_unpooled_outputs_and_dict_batches():
    data = feature_data()
    with pytest.raises(ValueError, match="backbone_of"):
        compute_features(nn.Conv2d(3, 4, 3), torch.utils.data.DataLoader(data, 4), "cpu")
    dict_batches = [{"pixel_values": torch.randn(2, 3, 8, 8), "labels": torch.zeros(2)}]
    with pytest.raises(ValueError, match="images, labels"):
        compute_features(TinyBackbone(), dict_batches, "cpu")


def test_image_loaders_shuffle_reproducibly_and_keep_validation_in_order():
    dataset = ImageTensors(random_images(10), torch.arange(10), ["a"] * 10)
    first, val_dl = image_loaders(dataset, dataset, batch_size=4, seed=1)
    second, _ = image_loaders(dataset, dataset, batch_size=4, seed=1)
    order = torch.cat([labels for _, labels in first])
    assert torch.equal(order, torch.cat([labels for _, labels in second]))
    assert not torch.equal(order, torch.arange(10))
    assert torch.equal(torch.cat([labels for _, labels in val_dl]), torch.arange(10))
    with pytest.raises(ValueError, match="batch_size"):
        image_loaders(dataset, batch_size=0)


def test_subset_keeps_the_requested_number_of_images():
    dataset = ImageTensors(random_images(10), torch.arange(10), ["a"] * 10)
    part = dataset.subset(4, seed=0)
    assert len(part) == 4 and set(part.labels.tolist()) <= set(range(10))
    assert dataset.subset(None) is dataset and dataset.subset(99) is dataset


def test_load_textures_at_the_resize_size():
    splits = load_image_dataset("textures", 40, max_train_samples=30)
    assert splits["train"].images.shape == (30, 3, 40, 40)
    assert splits["test"].images.shape == (480, 3, 40, 40)
    assert splits["train"].classes == ["brick", "grass", "gravel"]


def test_load_digits_with_a_validation_split():
    splits = load_image_dataset("digits", 37, max_train_samples=50)
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].images.shape == (50, 3, 37, 37)
    assert splits["val"].images.shape[1:] == (3, 37, 37)
    assert splits["test"].classes == [str(digit) for digit in range(10)]


def test_resize_images_keeps_uint8():
    dataset = ImageTensors(random_images(2, 25, 25), torch.tensor([0, 1]), ["a", "b"])
    resized = resize_images(dataset, 40)
    assert resized.images.shape == (2, 3, 40, 40) and resized.images.dtype == torch.uint8


def test_unknown_data_set_is_rejected():
    with pytest.raises(ValueError, match="textures"):
        load_image_dataset("imagenet", 64)
