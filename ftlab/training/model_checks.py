"""`diagnose`'s checks of the model and optimizer as built: a head, its rate, the body's rate.

Each check returns (check, message, fix) triples, which `diagnose` turns into findings:
- `no_head`: a bare pretrained encoder (the `BertModel` that `AutoModel` gives) is what gets
  trained; it returns hidden states, not logits. Typical causes: a wrapper class with a head was
  defined but the encoder itself was passed on, or a `.classifier` was assigned onto it;
- `foreign_parameters`: the optimizer holds parameters that are not the model's (it was built
  from a wrapper, or from another copy of the model);
- `lr_too_high`: a learning rate above LR_LIMIT on the body of a pretrained transformer;
- `head_lr_too_low`: the new head trains below HEAD_LR_MIN while nothing else learns faster:
  a freshly initialised layer barely moves in a short run.
Taught in lesson 02.
"""

from __future__ import annotations

LR_LIMIT = 1e-3  # above this, fine-tuning a pretrained transformer usually diverges
HEAD_LR_MIN = 1e-4  # with Adam a weight moves about lr per step: 300 steps at 1e-5 move it 0.003
HEAD_NAMES = ("classifier", "score", "head", "fc", "lm_head")  # modules that start untrained


def model_findings(model, optimizer=None, lr=None) -> list[tuple[str, str, str]]:
    """Return (check, message, fix) for each mistake in how the model is built and trained."""
    findings = [*_no_head(model), *_lr_too_high(model, optimizer, lr)]
    findings += _head_lr_too_low(model, optimizer, lr)
    if optimizer is not None:
        findings += _foreign_parameters(model, optimizer)
    return findings


def is_bare_encoder(model) -> bool:
    """True for a Hugging Face base model (a `BertModel`), which has no task head."""
    pretrained = any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)
    return pretrained and getattr(model, "base_model", None) is model


def _no_head(model) -> list[tuple[str, str, str]]:
    if not is_bare_encoder(model):
        return []
    name = type(model).__name__
    attached = [n for n in HEAD_NAMES if hasattr(model, n)]
    assigned = f" (the .{attached[0]} assigned onto it is never called)" if attached else ""
    message = (
        f"{name} is a bare encoder with no classification head: it returns hidden states, "
        f"not logits{assigned}. Was a wrapper class with a head defined, but {name} passed on?"
    )
    fix = (
        "use AutoModelForSequenceClassification.from_pretrained(name, num_labels=...), or pass "
        "the wrapper (model = MyClassifier(...)) to the optimizer and to fit"
    )
    return [("no_head", message, fix)]


def _foreign_parameters(model, optimizer) -> list[tuple[str, str, str]]:
    own = {id(p) for p in model.parameters()}
    foreign = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
    if not foreign:
        return []
    shapes = ", ".join(str(tuple(p.shape)) for p in foreign[:3])
    message = (
        f"the optimizer holds {len(foreign)} parameters that are not part of "
        f"{type(model).__name__} (shapes {shapes}): it was built from another model (a wrapper "
        "that is not the model being trained) or before a layer was replaced"
    )
    fix = "build the optimizer from the model you train, after its last change"
    return [("foreign_parameters", message, fix)]


def _lr_too_high(model, optimizer, lr) -> list[tuple[str, str, str]]:
    if not any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__):
        return []
    head = {id(p) for p in _head_parameters(model)}
    body_lrs = _lrs(model, optimizer, lr, head)[1]
    too_high = [value for value in body_lrs if value > LR_LIMIT]
    if not too_high:
        return []
    message = (
        f"learning rate {max(too_high):.2g} on the body of a pretrained transformer "
        f"({type(model).__name__}): above {LR_LIMIT:g} fine-tuning destroys what it learned"
    )
    fix = "use lr between 1e-5 and 1e-4 (2e-5 to 5e-5 for BERT); a higher lr only for the head"
    return [("lr_too_high", message, fix)]


def _head_lr_too_low(model, optimizer, lr) -> list[tuple[str, str, str]]:
    head = {id(p) for p in _head_parameters(model) if p.requires_grad}
    head_lrs, body_lrs = _lrs(model, optimizer, lr, head)
    if not head or not head_lrs or min(head_lrs) >= HEAD_LR_MIN:
        return []
    low = min(head_lrs)
    if body_lrs and low >= max(body_lrs):  # the whole model learns at one small rate: fine
        return []
    body = "while the body is frozen" if not body_lrs else f"below the body's {max(body_lrs):.2g}"
    message = (
        f"the new head trains at lr {low:.2g} {body}: a freshly initialised layer needs more "
        f"(with Adam a weight moves about lr per step: 300 steps move it at most {300 * low:.2g}, "
        "while its random initial weights are about 0.02)"
    )
    fix = "give the head its own parameter group at about 1e-3 (10x to 100x the body's rate)"
    return [("head_lr_too_low", message, fix)]


def _head_parameters(model) -> list:
    return [p for name, p in model.named_parameters() if name.split(".")[0] in HEAD_NAMES]


def _lrs(model, optimizer, lr, head: set[int]) -> tuple[list[float], list[float]]:
    """The peak rates of the groups training head parameters, and of those training the body.

    The body is the pretrained weights: neither the new head nor LoRA's new A and B (lesson 05).
    """
    new = head | {id(p) for name, p in model.named_parameters() if ".lora_" in name}
    if optimizer is None:
        if lr is None:
            return [], []
        body = any(p.requires_grad and id(p) not in new for p in model.parameters())
        return [lr] if head else [], [lr] if body else []
    head_lrs, body_lrs = [], []
    for group in optimizer.param_groups:
        peak = max(group["lr"], group.get("initial_lr", 0.0), group.get("max_lr", 0.0))
        if any(id(p) in head for p in group["params"]):
            head_lrs.append(peak)
        if any(p.requires_grad and id(p) not in new for p in group["params"]):
            body_lrs.append(peak)
    return head_lrs, body_lrs
