"""Build classifiers from pretrained checkpoints: BERT-like text models, ResNet, timm backbones.

Taught in lesson 02 (text) and lesson 03 (vision).
"""

from __future__ import annotations

import contextlib

from torch import nn

from ftlab.setup.assets import needs_network
from ftlab.setup.settings import EFFICIENTNET_LITE0


def text_classifier(name_or_path: str, num_labels: int = 2, pretrained: bool = True):
    """Return (model, tokenizer): a pretrained encoder with a new classification head.

    `pretrained=False` builds the same architecture with random weights, for the
    pretrained-against-scratch comparison. Taught in lesson 02.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    with needs_network(name_or_path), _no_loading_bar():
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if pretrained:
            model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=num_labels
            )
        else:
            config = AutoConfig.from_pretrained(name_or_path, num_labels=num_labels)
            model = AutoModelForSequenceClassification.from_config(config)
    return model, tokenizer


@contextlib.contextmanager
def _no_loading_bar():
    """Hide transformers' "Loading weights" bar (a second at most; its load report stays)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def vision_classifier(name: str, num_classes: int | None, pretrained: bool = True) -> nn.Module:
    """Return an ImageNet backbone with a new head of `num_classes` outputs.

    `name` is "resnet18" (torchvision, IMAGENET1K_V1 weights) or the offline EfficientNet-Lite0.
    `num_classes=None` keeps the 1000-class ImageNet head; `pretrained=False` gives random
    weights. Taught in lesson 03.
    """
    if name == "resnet18":
        from torchvision.models import ResNet18_Weights, resnet18

        with needs_network("ResNet-18 ImageNet weights"):
            model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None)
        if num_classes is not None:
            model.fc = nn.Linear(model.fc.in_features, num_classes)  # 512 -> num_classes
        return model
    if name in (EFFICIENTNET_LITE0, "tf_efficientnet_lite0"):
        from ftlab.setup.assets import efficientnet_lite0

        model = efficientnet_lite0(pretrained=pretrained)
        if num_classes is not None:
            model.reset_classifier(num_classes)  # classifier: Linear(1280, num_classes)
        return model
    raise ValueError(f"unknown vision model {name!r}; use 'resnet18' or {EFFICIENTNET_LITE0!r}")


def image_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the (mean, std) the backbone's pretrained weights expect. Taught in lesson 03."""
    from ftlab.data.images import weights_preprocessing

    pre = weights_preprocessing(name)
    return pre.mean, pre.std


def backbone_of(model: nn.Module) -> nn.Module:
    """Return the model without its head: images -> pooled features (batch, feature_dim).

    The result shares the model's weights but not its head, so freezing it freezes the body
    only, and a head trained on its features is the model's own head. Works for the
    torchvision ResNets and timm EfficientNets of `vision_classifier`. Taught in lesson 03.
    """
    from timm.models.efficientnet import EfficientNet
    from torchvision.models import ResNet

    if not isinstance(model, (ResNet, EfficientNet)):
        raise ValueError(
            f"cannot split {type(model).__name__} into backbone and head; "
            "use a ResNet or EfficientNet from ftlab.models.classifiers.vision_classifier"
        )
    head = head_of(model)
    # Both run their children in order: stem, stages, global pool, then the head.
    body = [module for module in model.children() if module is not head]
    return nn.Sequential(*body, nn.Flatten(1))  # (batch, C, 1, 1) or (batch, C) -> (batch, C)


def imagenet_classes() -> list[str]:
    """Return the 1000 ImageNet class names in the standard order (from torchvision's metadata).

    Taught in lesson 03.
    """
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of (trainable) parameters. Taught in lesson 01 (written by hand there)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def head_of(model: nn.Module) -> nn.Module:
    """Return the new classification head of a model built here. Taught in lesson 02."""
    for name in ("classifier", "fc", "head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has no head named classifier, fc or head")
