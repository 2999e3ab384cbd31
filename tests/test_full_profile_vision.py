"""Stand-in for lesson 03's full profile: the Oxford-IIIT Pets loader and the ResNet-18 path.

The real run downloads Pets and ResNet-18's ImageNet weights; here a tiny folder laid out like
torchvision's `oxford-iiit-pet` and a ResNet-18 with random weights go through the same
loader, transforms, head replacement, feature cache and `fit`, with no network.
"""

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ftlab
from ftlab.data import pets
from ftlab.data.images import BatchAugment, compute_features, image_loaders, load_image_dataset
from ftlab.models.classifiers import backbone_of, head_of, vision_classifier
from ftlab.setup.assets import NetworkNeeded

BREEDS = ["Abyssinian", "great_pyrenees"]  # a cat (capitalised) and a dog, as in Pets


def fake_pets(root, per_split=4):
    """Write a Pets-shaped folder: JPEGs of several sizes and modes, and the split lists."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    generator = np.random.default_rng(0)
    for split in ("trainval", "test"):
        lines = []
        for index in range(per_split):
            breed = BREEDS[index % 2]
            number = index + (100 if split == "test" else 0)  # photo ids differ across splits
            image_id = f"{breed}_{number}"
            pixels = generator.integers(0, 256, (60 + 10 * index, 90, 3), dtype=np.uint8)
            picture = Image.fromarray(pixels)
            picture = picture.convert("L") if index == 3 else picture  # Pets has a few grey ones
            picture.save(base / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {index % 2 + 1} {index % 2 + 1} 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_pets_are_decoded_once_to_uint8_squares_and_cached(tmp_path):
    root = fake_pets(tmp_path)
    train = pets.oxford_pets(root, "trainval", size=40, num_workers=0)
    assert train.images.shape == (4, 3, 40, 40) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 1, 0, 1]
    assert train.classes == ["Abyssinian", "Great Pyrenees"]
    assert (root / "oxford_pets_trainval_40.pt").exists()
    for jpeg in (root / "oxford-iiit-pet" / "images").iterdir():
        jpeg.unlink()  # a second call must not need the photos any more
    again = pets.oxford_pets(root, "trainval", size=40)
    assert torch.equal(again.images, train.images) and again.classes == train.classes


def test_pets_rejects_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="trainval"):
        pets.oxford_pets(tmp_path, "validation")


def test_failed_pets_download_names_the_offline_profile(tmp_path, monkeypatch):
    from torchvision.datasets import OxfordIIITPet

    def no_network(self):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(OxfordIIITPet, "_download", no_network)
    with pytest.raises(NetworkNeeded, match="FTLAB_PROFILE=offline"):
        pets.oxford_pets(tmp_path, "test", size=40)


def test_resnet18_path_trains_on_pets_shaped_data(tmp_path):
    root = fake_pets(tmp_path, per_split=6)
    for split in ("trainval", "test"):  # decode without worker processes (fast in a test)
        pets.oxford_pets(root, split, size=36, num_workers=0)
    data = load_image_dataset("oxford_iiit_pet", 36, root=root)  # the lesson's call, cached
    torch.manual_seed(0)
    model = vision_classifier("resnet18", len(data["train"].classes), pretrained=False)
    assert head_of(model).out_features == 2

    train_dl, test_dl = image_loaders(data["train"], data["test"], batch_size=3)
    features = nn.Sequential(BatchAugment("resnet18", 32), backbone_of(model))
    cached = compute_features(features, test_dl, "cpu")
    assert cached.tensors[0].shape == (6, 512)

    net = nn.Sequential(BatchAugment("resnet18", 32, scale=(0.25, 1.0)), model)
    before = model.conv1.weight.detach().clone()
    history = ftlab.fit(net, train_dl, test_dl, lr=1e-3, max_steps=2, progress=False, seed=0)
    assert len(history.steps) == 2 and "val_accuracy" in history.epochs[-1]
    assert not torch.equal(model.conv1.weight, before)  # the backbone trained too
