"""The offline profile's data sets, made here and deterministic given a seed.

- `toy_reviews`: sentiment sentences from templates. The test split uses adjectives that never
  occur in training, so only knowledge from pretraining can solve it; "not" flips the label.
- `textures`: patches of scikit-image's brick, grass and gravel photos; train patches come from
  the left half of each photo and test patches from the right half, so none overlap.
- `lfw_faces`: scikit-image's `lfw_subset`, faces against non-faces.
- `digits`: scikit-learn's 8 x 8 handwritten digits, far from ImageNet's photos (a domain shift).

Taught in lesson 00 (reviews) and lesson 03 (images).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from ftlab.data.image_tensors import ImageTensors

LABELS = ["negative", "positive"]
TRAIN_ADJECTIVES = {
    "positive": ["good", "great", "excellent", "wonderful", "lovely", "enjoyable", "fantastic"],
    "negative": ["bad", "terrible", "awful", "boring", "horrible", "poor", "dreadful"],
}
TEST_ADJECTIVES = {
    "positive": ["brilliant", "superb", "delightful", "splendid", "marvelous", "charming"],
    "negative": ["dull", "tedious", "mediocre", "atrocious", "lousy", "disappointing"],
}
NOUNS = ["movie", "film", "plot", "acting", "story", "script", "ending", "cast", "soundtrack"]
TEMPLATES = [
    "the {noun} was {adj}.",
    "i thought the {noun} was {adj}.",
    "honestly, the {noun} is {adj}.",
    "what a {adj} {noun}!",
    "overall a {adj} {noun}.",
    "the {noun} was not {adj}.",
    "i would not call the {noun} {adj}.",
    "this {noun} is not {adj} at all.",
]


def toy_reviews(num_train: int | None = None, num_test: int | None = None, seed: int = 0):
    """Return a `datasets.DatasetDict` with "train" and "test" splits of ("sentence", "label").

    Train and test adjectives are disjoint; a template with "not" flips the adjective's label.
    By default each split holds every distinct sentence once (1008 train, 864 test); a size
    smaller than that takes a random subset, a larger one repeats sentences. Taught in lesson 00.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=LABELS)})
    rng = random.Random(seed)
    splits = {}
    for split, adjectives, size in (
        ("train", TRAIN_ADJECTIVES, num_train),
        ("test", TEST_ADJECTIVES, num_test),
    ):
        rows = _review_rows(adjectives)
        rng.shuffle(rows)
        rows = [rows[i % len(rows)] for i in range(size or len(rows))]
        columns = {"sentence": [r[0] for r in rows], "label": [r[1] for r in rows]}
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)


def _review_rows(adjectives: dict[str, list[str]]) -> list[tuple[str, int]]:
    rows = []
    for polarity, words in adjectives.items():
        label = LABELS.index(polarity)
        for template, noun, adj in itertools.product(TEMPLATES, NOUNS, words):
            negated = " not " in template
            rows.append((template.format(noun=noun, adj=adj), 1 - label if negated else label))
    return rows


TEXTURES = ("brick", "grass", "gravel")


def textures(patch_size: int = 64, per_class: int = 160, seed: int = 0):
    """Return {"train": ImageTensors, "test": ImageTensors} of texture patches, 3 classes.

    Train patches are cut from the left half of each photo and test patches from the right
    half, so no pixel is in both. Images are uint8 (N, 3, patch_size, patch_size).
    Taught in lesson 03.
    """
    from skimage import data as skdata

    generator = np.random.default_rng(seed)
    splits = {}
    for split, half in (("train", 0), ("test", 1)):
        images, labels = [], []
        for label, name in enumerate(TEXTURES):
            photo = getattr(skdata, name)()  # (512, 512) uint8, grayscale
            width = photo.shape[1] // 2
            part = photo[:, half * width : (half + 1) * width]
            for _ in range(per_class):
                top = generator.integers(0, part.shape[0] - patch_size + 1)
                left = generator.integers(0, part.shape[1] - patch_size + 1)
                images.append(part[top : top + patch_size, left : left + patch_size])
                labels.append(label)
        splits[split] = _to_image_tensors(images, labels, list(TEXTURES))
    return splits


def lfw_faces(test_fraction: float = 0.3, seed: int = 0):
    """Return {"train": ImageTensors, "test": ImageTensors}: faces (1) against non-faces (0).

    scikit-image's `lfw_subset` holds 100 faces then 100 non-faces, 25x25 grayscale; the
    split is stratified and fixed by the seed. Taught in lesson 03.
    """
    from skimage import data as skdata

    pictures = (skdata.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25)
    labels = np.array([1] * 100 + [0] * 100)
    generator = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        chosen = generator.choice(members, int(len(members) * test_fraction), replace=False)
        test[chosen] = True
    classes = ["not a face", "face"]
    return {
        "train": _to_image_tensors(list(pictures[~test]), list(labels[~test]), classes),
        "test": _to_image_tensors(list(pictures[test]), list(labels[test]), classes),
    }


def digits(num_val: int = 300, num_test: int = 400, seed: int = 0):
    """Return {"train", "val", "test"} ImageTensors of handwritten digits, 10 classes.

    1,797 grey 8 x 8 scans of digits written by 43 people (UCI "Optical Recognition of
    Handwritten Digits"), 17 grey levels scaled to uint8. Each split keeps the classes'
    proportions, is fixed by the seed and is sorted by class (as many data sets come).
    Taught in lesson 03.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    pictures = np.round(data.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    labels = data.target
    generator = np.random.default_rng(seed)
    split_of = np.zeros(len(labels), dtype=np.int64)  # 0 train, 1 val, 2 test
    for label in range(10):
        members = generator.permutation(np.flatnonzero(labels == label))
        share = len(members) / len(labels)
        val_end = round(num_val * share)
        split_of[members[:val_end]] = 1
        split_of[members[val_end : val_end + round(num_test * share)]] = 2
    classes = [str(digit) for digit in range(10)]
    splits = {}
    for i, name in enumerate(("train", "val", "test")):
        members = np.flatnonzero(split_of == i)
        members = members[np.argsort(labels[members], kind="stable")]  # sorted by class
        splits[name] = _to_image_tensors(list(pictures[members]), list(labels[members]), classes)
    return splits


def _to_image_tensors(images: list[np.ndarray], labels: list[int], classes: list[str]):
    gray = torch.from_numpy(np.stack(images))  # (N, H, W) uint8
    rgb = gray.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)
    return ImageTensors(rgb, torch.tensor(labels, dtype=torch.long), classes)
