"""Checks of exercises/03_resnet_vision_transfer.ipynb: heads, cached features, BatchNorm."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ftlab.exercises import mirror
from ftlab.exercises.checks import Wrong, question
from ftlab.exercises.checks.tools import (
    answer,
    are,
    call,
    close,
    collect,
    count,
    module_facts,
    resnet18,
    tiny_cnn,
    verify,
)
from ftlab.exercises.serve import probe


@question("03.q1", points=2)
def preprocess_like_the_weights(namespace: dict) -> str:
    function = answer(namespace, "preprocess", "function")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)  # as decoded from files
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    try:
        result = call(function, images.clone(), mean, std, what="preprocess(images, mean, std)")
    except Wrong as error:
        if "must match the size" not in str(error):
            raise
        hint = "reshape mean and std to (3, 1, 1) so they broadcast over the channels"
        raise Wrong(f"{error}: {hint}") from None
    shape = (1, 3, 1, 1)
    expected = (images / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    if isinstance(result, torch.Tensor) and result.shape == expected.shape:
        if not result.is_floating_point():
            raise Wrong(f"the result should be a float tensor, not {result.dtype}")
        top = result.abs().max().item()
        if top > 100:
            raise Wrong(
                f"your values reach {top:.0f}: the weights expect pixels in [0, 1] before "
                "normalizing, so convert the uint8 images to float and divide by 255 first"
            )
        _name_the_typical_mistake(result.float(), images / 255, mean, std)
    close(result, expected, "your preprocessed images", atol=1e-4)
    return "float in [0, 1], normalized per channel"


def _name_the_typical_mistake(result, pixels, mean, std) -> None:
    """Raise Wrong naming the cause when `result` is a known wrong preprocessing of `pixels`."""
    shape = (1, 3, 1, 1)
    mean_t, std_t = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    typical = {
        "mean and std are swapped: subtract the mean, then divide by the std": (
            (pixels - std_t) / mean_t
        ),
        "the pixels are divided by the std before the mean is subtracted: write "
        "(x - mean) / std with the parentheses": pixels - mean_t / std_t,
        "the images are scaled to [0, 1] but not normalized: subtract the mean and divide "
        "by the std, per channel": pixels,
    }
    for cause, wrong in typical.items():
        if torch.allclose(result, wrong, atol=1e-4):
            raise Wrong(cause)


@question("03.q2", points=2)
def new_head_replaces_fc(namespace: dict) -> str:
    function = answer(namespace, "replace_head", "function")
    for model, in_features in ((resnet18(), 512), (tiny_cnn(num_classes=1000), 16)):
        old_fc = model.fc
        name = type(model).__name__
        returned = call(function, model, 7, what=f"replace_head({name}, num_classes=7)")
        if returned is not model:
            raise Wrong("replace_head should change model.fc and return the same model")
        head = model.fc
        if not isinstance(head, nn.Linear):
            raise Wrong(f"model.fc should be one new nn.Linear, not {type(head).__name__}")
        if head.in_features != in_features:
            raise Wrong(
                f"on a {name} your head takes {head.in_features} inputs but the pooled features "
                f"have {in_features}: read model.fc.in_features instead of hard-coding a size"
            )
        if head.out_features != 7:
            raise Wrong(f"the head has {head.out_features} outputs; num_classes was 7")
        if head is old_fc or not all(p.requires_grad for p in head.parameters()):
            raise Wrong("the head should be a new, trainable nn.Linear")
    logits = model(torch.randn(2, 3, 16, 16))  # (batch, num_classes)
    return f"a new Linear(in_features, 7) on ResNet-18 and a small CNN: {tuple(logits.shape)}"


@question("03.q3", points=1)
def share_prediction_recorded(namespace: dict) -> str:
    predicted = answer(namespace, "predicted_trainable_share", "number")
    if not 0 < predicted <= 1:
        raise Wrong(
            f"a share is a fraction between 0 and 1; predicted_trainable_share is {predicted:g}"
        )
    return f"you predicted {predicted:g}"


@question("03.q3", points=1)
def share_computed(namespace: dict) -> str:
    facts = collect(namespace, module_facts, answer(namespace, "resnet"))
    trainable = sum(size for _, grad, size in facts["parameters"] if grad)
    total = sum(size for _, _, size in facts["parameters"])
    share = answer(namespace, "trainable_share", "number")
    if abs(share - trainable / total) > 1e-9:
        raise Wrong(
            f"trainable_share is {share:g} but resnet trains {trainable:,} of its {total:,} "
            "parameters: divide the numel() of the parameters that require grad by all of them"
        )
    return f"{share:.3%} of the parameters train"


def _feature_inputs():
    torch.manual_seed(3)
    backbone = tiny_cnn().backbone  # conv, BatchNorm, ... -> (batch, 16)
    backbone.append(nn.Dropout(0.5))
    images = torch.randn(20, 3, 16, 16) * 3 + 1  # a distribution unlike the running stats
    return backbone, images, torch.arange(20) % 3


@probe
def feature_facts(function) -> dict:
    """In the student's kernel: extract features with their function from a model in train mode."""
    backbone, images, labels = _feature_inputs()
    facts = {"print": mirror.fingerprint(backbone)}
    backbone.train()  # as a model is after training: the function must switch to eval
    running_mean = backbone[1].running_mean.clone()
    dl = DataLoader(TensorDataset(images, labels), batch_size=8)
    facts["returned"] = call(function, backbone, dl, what="compute_features(backbone, dl)")
    facts["moved"] = not torch.equal(backbone[1].running_mean, running_mean)
    return facts


def _feature_probe(namespace: dict):
    facts = collect(namespace, feature_facts, answer(namespace, "compute_features", "function"))
    backbone, images, labels = _feature_inputs()
    verify(backbone, facts["print"])
    with torch.no_grad():
        expected = backbone.eval()(images)  # (20, 16)
    returned = facts["returned"]
    if not isinstance(returned, tuple) or len(returned) != 2:
        raise Wrong("compute_features should return a tuple (features, labels)")
    return returned, expected, labels, facts["moved"] is True


@question("03.q4", points=2)
def features_in_eval_mode(namespace: dict) -> str:
    (features, found_labels), expected, labels, moved = _feature_probe(namespace)
    if moved:
        raise Wrong(
            "BatchNorm's running statistics changed while extracting features: call "
            "backbone.eval() first — in train mode every batch updates them, and dropout is on"
        )
    close(features, expected, "your features (all batches, concatenated in order)", atol=1e-5)
    if not isinstance(found_labels, torch.Tensor) or not torch.equal(found_labels, labels):
        raise Wrong("the labels should be one tensor (N,), concatenated in the loader's order")
    return f"features {tuple(features.shape)} in eval mode"


@question("03.q4", points=1)
def features_without_graph(namespace: dict) -> str:
    (features, _), _, _, _ = _feature_probe(namespace)
    if isinstance(features, torch.Tensor) and features.requires_grad:
        raise Wrong(
            "your features carry an autograd graph (requires_grad=True): compute them under "
            "torch.no_grad(), or the cache keeps every activation of the backbone in memory"
        )
    return "no graph kept"


@question("03.q5", points=2)
def frozen_batchnorm_stays_in_eval(namespace: dict) -> str:
    function = answer(namespace, "set_train_mode", "function")
    model = tiny_cnn()
    model.backbone.requires_grad_(False)
    model.eval()
    call(function, model, what="set_train_mode(model)")
    drifting = [n for n, m in model.named_modules() if _is_batchnorm(m) and m.training]
    if drifting:
        before = model.backbone[1].running_mean.clone()
        model(torch.randn(8, 3, 16, 16) * 3 + 1)  # one training batch
        moved = (model.backbone[1].running_mean - before).abs().max().item()
        raise Wrong(
            f"{count(drifting, 'BatchNorm layer')} of the frozen backbone {are(drifting)} in "
            "train mode: their running statistics drift toward each batch (running_mean moved by "
            f"{moved:.2f} in one batch). Put them in eval mode after model.train()"
        )
    if not model.training or not model.fc.training:
        raise Wrong("the model itself should be in train mode (call model.train() first)")
    trainable = tiny_cnn()
    trainable.eval()
    call(function, trainable, what="set_train_mode(model) on a model with nothing frozen")
    if not all(m.training for m in trainable.modules()):
        raise Wrong("BatchNorm layers that train should stay in train mode: only the frozen ones")
    return "frozen BatchNorm in eval, the rest in train mode"


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@question("03.q6", points=2)
def backbone_and_head_learning_rates(namespace: dict) -> str:
    function = answer(namespace, "make_optimizer", "function")
    model = tiny_cnn()
    what = "make_optimizer(model, backbone_lr=1e-4, head_lr=1e-3)"
    optimizer = call(function, model, backbone_lr=1e-4, head_lr=1e-3, what=what)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Wrong(f"make_optimizer should return a torch optimizer, not {optimizer!r:.60}")
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())  # torch itself refuses a parameter in two groups
    missing = [n for n, p in names.items() if id(p) not in lrs]
    if missing:
        raise Wrong(
            f"{count(missing, 'parameter')} {are(missing)} in no parameter group, so never train"
        )
    for name, p in names.items():
        wanted = 1e-3 if name.startswith("fc.") else 1e-4
        if abs(lrs[id(p)] - wanted) > 1e-12:
            part = "the head" if name.startswith("fc.") else "the backbone"
            raise Wrong(f"{name} gets lr {lrs[id(p)]:g}, but {part} should get {wanted:g}")
    return "head at head_lr, backbone at backbone_lr"
