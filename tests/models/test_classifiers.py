"""Tests for ftlab.models: text and vision classifiers, backbones and heads, ImageNet names."""

import pytest
import torch
from torch import nn

from ftlab.data.images import eval_transform
from ftlab.models.classifiers import (
    backbone_of,
    count_parameters,
    head_of,
    image_normalization,
    imagenet_classes,
    text_classifier,
    vision_classifier,
)
from ftlab.setup.assets import minilm_dir
from ftlab.setup.settings import EFFICIENTNET_LITE0


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return vision_classifier("resnet18", num_classes=5, pretrained=False).eval()


@pytest.fixture(scope="module")
def efficientnet():
    return vision_classifier(EFFICIENTNET_LITE0, num_classes=3, pretrained=True).eval()


def test_resnet18_gets_a_new_fc_head(resnet):
    assert head_of(resnet) is resnet.fc
    assert (resnet.fc.in_features, resnet.fc.out_features) == (512, 5)
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_efficientnet_gets_a_new_classifier_head(efficientnet):
    assert head_of(efficientnet) is efficientnet.classifier
    assert (efficientnet.classifier.in_features, efficientnet.classifier.out_features) == (1280, 3)


def test_unknown_vision_model_is_rejected():
    with pytest.raises(ValueError, match="resnet18"):
        vision_classifier("vgg16", num_classes=2)


@pytest.mark.parametrize("which", ["resnet", "efficientnet"])
def test_backbone_then_head_equals_the_whole_model(which, request):
    model = request.getfixturevalue(which)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone_of(model)(images)  # (2, feature_dim)
        assert features.shape == (2, head_of(model).in_features)
        torch.testing.assert_close(head_of(model)(features), model(images))


def test_backbone_shares_the_models_weights(resnet):
    backbone = backbone_of(resnet)
    assert backbone[0].weight is resnet.conv1.weight
    head_ids = {id(p) for p in head_of(resnet).parameters()}
    assert not head_ids & {id(p) for p in backbone.parameters()}


def test_freezing_the_efficientnet_backbone_leaves_its_head_trainable():
    model = vision_classifier(EFFICIENTNET_LITE0, num_classes=3, pretrained=False)
    backbone_of(model).requires_grad_(False)
    assert all(p.requires_grad for p in head_of(model).parameters())
    assert count_parameters(model, trainable_only=True) == 1280 * 3 + 3


def test_backbone_of_an_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="vision_classifier"):
        backbone_of(nn.Linear(3, 3))


def test_imagenet_classes_are_the_1000_names_in_standard_order():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"


def test_pretrained_efficientnet_recognises_a_cat():
    from skimage import data as skdata

    model = vision_classifier(EFFICIENTNET_LITE0, num_classes=None).eval()  # ImageNet head kept
    assert model.classifier.out_features == 1000
    image = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)  # (3, 300, 451) uint8, a cat
    with torch.no_grad():
        logits = model(eval_transform(EFFICIENTNET_LITE0)(image)[None])  # (1, 1000)
    top5 = [imagenet_classes()[i] for i in logits[0].topk(5).indices]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5), top5


def test_image_normalization_matches_the_weights():
    assert image_normalization(EFFICIENTNET_LITE0) == ((0.5,) * 3, (0.5,) * 3)
    assert image_normalization("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_count_parameters_counts_only_trainable_ones_when_asked():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8 parameters
    model[0].requires_grad_(False)
    assert count_parameters(model) == 23
    assert count_parameters(model, trainable_only=True) == 8


def test_head_of_a_model_without_a_head_is_an_error():
    with pytest.raises(ValueError, match="no head"):
        head_of(nn.Sequential(nn.Linear(2, 2)))


def test_text_classifier_loads_without_a_progress_bar_and_leaves_the_setting_alone(capfd):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    assert "Loading weights" in capfd.readouterr().err  # what transformers shows by itself
    model, tokenizer = text_classifier(minilm_dir(), num_labels=2)
    output = capfd.readouterr()
    assert "Loading weights" not in output.err + output.out
    assert head_of(model).out_features == 2 and tokenizer.vocab_size == 30522
    assert logging.is_progress_bar_enabled()  # shown again for everything else
    logging.disable_progress_bar()
    try:
        text_classifier(minilm_dir(), num_labels=2)
        assert not logging.is_progress_bar_enabled()  # a learner's own choice is kept
    finally:
        logging.enable_progress_bar()
