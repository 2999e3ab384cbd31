import torch

from ftlab.data import offline


def _adjectives_in(sentences, words):
    return {w for s in sentences for w in words if f" {w}" in f" {s.rstrip('.!')} "}


def test_reviews_have_train_and_test_with_disjoint_adjectives():
    reviews = offline.toy_reviews()
    assert set(reviews) == {"train", "test"}
    all_words = [
        w
        for group in (offline.TRAIN_ADJECTIVES, offline.TEST_ADJECTIVES)
        for ws in group.values()
        for w in ws
    ]
    train_words = _adjectives_in(reviews["train"][:]["sentence"], all_words)
    test_words = _adjectives_in(reviews["test"][:]["sentence"], all_words)
    assert train_words and test_words and not train_words & test_words
    assert reviews["train"].features["label"].names == ["negative", "positive"]


def test_negation_flips_the_label():
    train = offline.toy_reviews()["train"][:]
    rows = dict(zip(train["sentence"], train["label"], strict=True))
    assert rows["the movie was great."] == 1
    assert rows["the movie was not great."] == 0
    assert rows["the movie was awful."] == 0
    assert rows["the movie was not awful."] == 1


def test_reviews_are_balanced_deterministic_and_sized():
    first, again = offline.toy_reviews(seed=1), offline.toy_reviews(seed=1)
    assert first["train"][:]["sentence"] == again["train"][:]["sentence"]
    assert first["train"][:]["sentence"] != offline.toy_reviews(seed=2)["train"][:]["sentence"]
    labels = torch.tensor(first["test"][:]["label"])
    assert abs(labels.float().mean().item() - 0.5) < 0.05
    assert len(offline.toy_reviews(num_train=100)["train"]) == 100


def test_texture_patches_shapes_and_labels():
    splits = offline.textures(patch_size=32, per_class=10)
    image, label = splits["train"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert splits["train"].labels.bincount().tolist() == [10, 10, 10]
    assert splits["test"].classes == ["brick", "grass", "gravel"]


def _found_in(patch, region):
    """Return True if `patch` (h, w) occurs pixel for pixel somewhere inside `region`."""
    size = patch.shape[0]
    rows = region.unfold(1, size, 1)  # (H, W', size): every horizontal run of `size` pixels
    for top, left in (rows == patch[0]).all(-1).nonzero().tolist():
        if torch.equal(region[top : top + size, left : left + size], patch):
            return True
    return False


def test_texture_train_and_test_patches_come_from_their_own_half_only():
    from skimage import data as skdata

    splits = offline.textures(patch_size=48, per_class=3, seed=3)
    for label, name in enumerate(offline.TEXTURES):
        photo = torch.from_numpy(getattr(skdata, name)())
        left, right = photo[:, : photo.shape[1] // 2], photo[:, photo.shape[1] // 2 :]
        for split, own, other in (("train", left, right), ("test", right, left)):
            for patch in splits[split].images[splits[split].labels == label][:, 0]:
                assert _found_in(patch, own) and not _found_in(patch, other)


def test_textures_are_deterministic_given_a_seed():
    first = offline.textures(per_class=4, seed=3)["train"].images
    assert first.equal(offline.textures(per_class=4, seed=3)["train"].images)
    assert not first.equal(offline.textures(per_class=4, seed=4)["train"].images)


def test_lfw_faces_split_is_stratified_and_fixed():
    faces = offline.lfw_faces(seed=0)
    assert len(faces["train"]) + len(faces["test"]) == 200
    assert faces["test"].labels.bincount().tolist() == [30, 30]
    assert faces["train"].images.shape[1:] == (3, 25, 25)
    assert torch.equal(faces["test"].images, offline.lfw_faces(seed=0)["test"].images)


def test_digits_splits_are_disjoint_stratified_and_fixed():
    splits = offline.digits(num_val=300, num_test=400, seed=0)
    sizes = {name: len(split) for name, split in splits.items()}
    assert sum(sizes.values()) == 1797 and abs(sizes["val"] - 300) <= 5
    assert abs(sizes["test"] - 400) <= 5
    for split in splits.values():
        assert split.images.shape[1:] == (3, 8, 8) and split.images.dtype == torch.uint8
        assert split.labels.bincount().min() >= 0.8 * len(split) / 10  # every class, evenly
        assert torch.equal(split.labels, split.labels.sort().values)  # sorted by class
    assert splits["train"].images.max() == 255  # 16 grey levels scaled to the full uint8 range
    again = offline.digits(seed=0)["test"]
    assert torch.equal(again.images, splits["test"].images)
    assert not torch.equal(offline.digits(seed=1)["test"].images, splits["test"].images)
