"""Checks of exercises/02_bert_text_classification.ipynb: batches, heads, losses, one step."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ftlab.exercises import mirror
from ftlab.exercises.checks import Wrong, question
from ftlab.exercises.checks.tools import answer, call, close, collect, tiny_bert, verify
from ftlab.exercises.serve import probe

EXAMPLES = [
    {"input_ids": [2, 11, 12], "label": 1},
    {"input_ids": [2, 13, 14, 15, 16, 17, 3], "label": 0},
    {"input_ids": [2, 18, 19, 20, 3], "label": 1},
]


def _batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 64, (4, 6), generator=generator)  # (batch, tokens)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2:, 4:] = 0  # two shorter sentences, padded
    labels = torch.tensor([0, 1, 1, 0])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@question("02.q1", points=1)
def pads_to_the_longest(namespace: dict) -> str:
    batch = _padded(namespace, pad_token_id=0)
    if not isinstance(batch.get("input_ids"), torch.Tensor):
        raise Wrong("batch['input_ids'] should be a tensor (batch, longest)")
    width = batch["input_ids"].shape[-1]
    if width != 7:
        raise Wrong(
            f"you padded to {width} tokens but the longest sequence in this batch has 7: "
            "pad to the longest one (dynamic padding), not to a fixed length"
        )
    expected = torch.tensor(
        [[2, 11, 12, 0, 0, 0, 0], [2, 13, 14, 15, 16, 17, 3], [2, 18, 19, 20, 3, 0, 0]]
    )
    input_ids = batch["input_ids"]
    if input_ids.dtype != torch.long:
        raise Wrong(f"input_ids should be token ids of dtype torch.long, not {input_ids.dtype}")
    if not torch.equal(input_ids, expected):
        raise Wrong(
            f"input_ids should be {expected.tolist()} (padding on the right), "
            f"got {input_ids.tolist()}"
        )
    other = _padded(namespace, pad_token_id=9)["input_ids"]
    if not torch.equal(other, torch.where(expected == 0, 9, expected)):
        raise Wrong("with pad_token_id=9 the padding should be 9: use the pad_token_id argument")
    return "pads to the longest sequence"


@question("02.q1", points=1)
def mask_and_labels(namespace: dict) -> str:
    batch = _padded(namespace, pad_token_id=0)
    lengths = torch.tensor([3, 7, 5])
    expected = (torch.arange(7)[None, :] < lengths[:, None]).long()  # (batch, longest)
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.shape != expected.shape:
        raise Wrong("batch['attention_mask'] should be a tensor with the shape of input_ids")
    if not torch.equal(mask.long(), expected):
        on_padding = int((mask.long() * (1 - expected)).sum())
        off_tokens = int(((1 - mask.long()) * expected).sum())
        raise Wrong(
            f"attention_mask is 1 on {on_padding} padding positions and 0 on {off_tokens} real "
            "tokens: it is 1 for every real token and 0 for padding"
        )
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.tolist() != [1, 0, 1]:
        raise Wrong(
            "batch['labels'] should be the tensor of labels [1, 0, 1]: Hugging Face models "
            "compute the loss from a key named `labels`"
        )
    return "mask and labels right"


def _padded(namespace: dict, pad_token_id: int) -> dict:
    function = answer(namespace, "pad_batch", "function")
    examples = copy.deepcopy(EXAMPLES)
    batch = call(function, examples, pad_token_id=pad_token_id, what="pad_batch(examples)")
    if not isinstance(batch, dict):
        raise Wrong(f"pad_batch should return a dict of tensors, not {type(batch).__name__}")
    return batch


@question("02.q2", points=1)
def untrained_prediction_recorded(namespace: dict) -> str:
    predicted = answer(namespace, "predicted_accuracy", "accuracy")
    return f"you predicted {predicted:g}"


@question("02.q2", points=1)
def untrained_reflection(namespace: dict) -> str:
    labels = answer(namespace, "config.num_labels", "number")
    chance = answer(namespace, "chance_accuracy", "number")
    if abs(chance - 1 / labels) > 1e-6:
        raise Wrong(
            f"chance_accuracy is {chance:g}: guessing among {labels:g} balanced classes "
            f"is right 1/{labels:g} of the time"
        )
    measured = answer(namespace, "untrained_accuracy", "number")
    above = answer(namespace, "above_chance", "number")
    if abs(above - (measured - chance)) > 1e-6:
        raise Wrong(
            f"above_chance should be untrained_accuracy − chance_accuracy = {measured - chance:.4f}"
        )
    return f"untrained {measured:.2f} against chance {chance:.2f}"


@question("02.q3", points=2)
def head_is_called(namespace: dict) -> str:
    facts = collect(namespace, head_facts, answer(namespace, "SentimentClassifier", "class"))
    if not facts["classifier"]:
        raise Wrong("keep the head as self.classifier, a Linear(hidden_size, num_labels)")
    logits = facts["logits"]
    if not isinstance(logits, torch.Tensor):
        raise Wrong(f"forward should return the logits tensor, not {type(logits).__name__}")
    if logits.shape != (4, 3):
        raise Wrong(
            f"forward returns shape {tuple(logits.shape)} for 4 sentences and 3 labels, not "
            "(4, 3): the classifier is never called on the pooled output"
        )
    if not facts["head_gradient"]:
        raise Wrong("self.classifier got no gradient: forward never uses it")
    return "logits (batch, num_labels) from the head"


@probe
def head_facts(model_class) -> dict:
    """In the student's kernel: build their classifier, run it, backpropagate from its logits."""
    from transformers import BertConfig

    sizes = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    config = BertConfig(vocab_size=64, num_hidden_layers=1, **sizes)
    model = call(model_class, config, 3, what="SentimentClassifier(config, num_labels=3)")
    facts = {"classifier": isinstance(getattr(model, "classifier", None), torch.nn.Module)}
    if not facts["classifier"]:
        return facts
    batch = _batch()
    what = "model(input_ids, attention_mask)"
    logits = call(model, batch["input_ids"], batch["attention_mask"], what=what)
    facts["logits"] = logits
    if isinstance(logits, torch.Tensor) and logits.shape == (4, 3) and logits.requires_grad:
        logits.sum().backward()
    weight = getattr(model.classifier, "weight", None)
    facts["head_gradient"] = weight is not None and weight.grad is not None
    return facts


@question("02.q4", points=1)
def loss_from_logits(namespace: dict) -> str:
    function = answer(namespace, "compute_loss", "function")
    model, batch = tiny_bert(num_labels=2), _batch()
    try:
        loss = call(function, model, batch, what="compute_loss(model, batch)")
    except Wrong as error:
        if "SequenceClassifierOutput" in str(error):
            hint = "the model returns an output object: pass outputs.logits to the loss"
            raise Wrong(f"{error}. {hint}") from None
        raise
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise Wrong(f"compute_loss should return the scalar loss tensor, not {loss!r:.60}")
    model_inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**model_inputs).logits
    expected = F.cross_entropy(logits, batch["labels"])
    softmaxed = F.cross_entropy(logits.softmax(dim=-1), batch["labels"])
    if torch.allclose(loss.detach().float(), softmaxed, atol=1e-6, rtol=0):
        raise Wrong(
            f"your loss is {loss.item():.6f}, that of the logits {expected.item():.6f}: "
            "softmax was applied before cross_entropy. F.cross_entropy applies log-softmax "
            "itself, so pass the raw logits (a softmax first squashes them and the loss barely "
            "changes as the model learns)"
        )
    close(loss, expected, "your loss", atol=1e-5)
    return "cross-entropy of outputs.logits"


@question("02.q5", points=1)
def learning_rate_for_bert(namespace: dict) -> str:
    function = answer(namespace, "make_optimizer", "function")
    model = tiny_bert()
    optimizer = call(function, model, what="make_optimizer(model)")
    if not isinstance(optimizer, torch.optim.Optimizer):
        kind = type(optimizer).__name__
        raise Wrong(f"make_optimizer should return a torch optimizer, not a {kind}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if id(p) not in held]
    if missing:
        raise Wrong(f"{len(missing)} parameters are not in the optimizer (e.g. {missing[0]})")
    for group in optimizer.param_groups:
        if group["lr"] > 2e-4:
            raise Wrong(
                f"lr {group['lr']:g} is a learning rate for training from scratch: on a pretrained "
                "BERT it wipes out what pretraining learned within a few steps. Use 2e-5 to 5e-5 "
                "(up to 1e-4 for a small model)"
            )
        if group["lr"] < 1e-6:
            raise Wrong(f"lr {group['lr']:g} barely moves the weights: use 2e-5 to 5e-5")
    return f"lr {optimizer.param_groups[0]['lr']:g}"


NO_ZERO_GRAD = (
    "gradients of the first step were still there in the second: call optimizer.zero_grad() "
    "before backward (or after optimizer.step())"
)
NO_CLIP = (
    "the update was not clipped: call torch.nn.utils.clip_grad_norm_(model.parameters(), "
    "max_grad_norm) between backward and optimizer.step()"
)


@question("02.q6", points=3)
def one_training_step(namespace: dict) -> str:
    facts = collect(namespace, training_facts, answer(namespace, "train_step", "function"))
    start, batches = tiny_bert(), [_batch(seed=1), _batch(seed=2)]
    verify(start, facts["print"])
    for loss in facts["losses"]:
        if isinstance(loss, torch.Tensor) or not isinstance(loss, float):
            raise Wrong(
                f"return loss.item(), a Python float, not a {type(loss).__name__}: "
                "a tensor keeps the whole graph in memory"
            )
    if facts["last_epoch"] != 2:
        raise Wrong("the scheduler did not step: call scheduler.step() after optimizer.step()")
    after = facts["after"]
    for zero_grad, clip, advice in ((False, True, NO_ZERO_GRAD), (True, False, NO_CLIP)):
        reference = _reference_steps(start, batches, zero_grad, clip)
        if isinstance(after, torch.Tensor) and after.shape == reference.shape:
            if torch.allclose(after, reference, atol=1e-7):
                raise Wrong(advice)
    expected = _reference_steps(start, batches, zero_grad=True, clip=True)
    close(after, expected, "the parameters after two of your steps", atol=1e-6)
    return "zero_grad, forward, backward, clip, step, schedule: all there"


@probe
def training_facts(function) -> dict:
    """In the student's kernel: two of their training steps on a tiny BERT; the weights after."""
    model, batches = tiny_bert(), [_batch(seed=1), _batch(seed=2)]
    facts = {"print": mirror.fingerprint(model), "losses": []}
    optimizer, scheduler = _optimizer(model)
    what = "train_step(model, batch, optimizer, scheduler, max_grad_norm=0.01)"
    for batch in batches:  # two steps: gradients must not carry over from the first
        loss = call(function, model, batch, optimizer, scheduler, max_grad_norm=0.01, what=what)
        facts["losses"].append(loss)
    facts["last_epoch"], facts["after"] = scheduler.last_epoch, _flat(model)
    return facts


def _optimizer(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    return optimizer, scheduler


def _reference_steps(start, batches: list, zero_grad: bool, clip: bool) -> torch.Tensor:
    model = copy.deepcopy(start)
    optimizer, scheduler = _optimizer(model)
    for batch in batches:
        if zero_grad:
            optimizer.zero_grad()
        model(**batch).loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        scheduler.step()
    return _flat(model)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])
