"""Exercises against their solutions: in sync, every check passes on the solution and fails on
the blank exercise, and typical wrong answers fail with a message that helps.

Notebook cells are run here in-process (fast; the grader's kernel path is tested in
test_grading.py), skipping the setup cell, the cells tagged `expensive` and the check cells.
"""

from __future__ import annotations

import functools
import linecache
from pathlib import Path

import nbformat
import pytest

from ftlab.exercises import checks
from ftlab.exercises.build import CHECK_CALL, EXPENSIVE_TAG, make_exercise

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
LESSONS = [path.name[:2] for path in SOLUTIONS]


@functools.cache
def namespace_after(folder: str, lesson: str) -> dict:
    """Run a notebook's gradable cells in order, as the grader would, and return its globals."""
    path = next((ROOT / folder).glob(f"{lesson}_*.ipynb"))
    namespace = {"__name__": "__main__"}
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells, start=1):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or {"setup", EXPENSIVE_TAG} & set(tags):
            continue
        if CHECK_CALL.search(cell.source):
            continue
        name = f"<{folder} {lesson} cell {number}>"
        linecache.cache[name] = (len(cell.source), None, cell.source.splitlines(True), name)
        try:
            exec(compile(cell.source, name, "exec"), namespace)
        except NotImplementedError:
            assert folder == "exercises", f"{name} raised NotImplementedError"
        except NameError:
            assert folder == "exercises", f"{name} raised NameError"
    return namespace


def run_with(lesson: str, question_id: str, code: str):
    """Run the solution's namespace with `code` executed on top of it, then one check."""
    namespace = dict(namespace_after("solutions", lesson))
    name = f"<wrong answer to {question_id}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    exec(compile(code, name, "exec"), namespace)
    return checks.run(question_id, namespace)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda path: path.name[:2])
def test_exercise_is_generated_from_its_solution(solution):
    exercise = ROOT / "exercises" / solution.name
    expected = make_exercise(nbformat.read(solution, as_version=4), f"exercises/{solution.name}")
    assert exercise.exists(), f"missing {exercise}: run `ftlab exercises build`"
    assert exercise.read_text() == nbformat.writes(expected) + "\n", (
        f"{exercise} is out of sync with {solution}: run `ftlab exercises build`"
    )


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_check_passes_on_the_solution(lesson):
    namespace = namespace_after("solutions", lesson)
    failed = [r for q in checks.questions(lesson) if not (r := checks.run(q, namespace)).passed]
    assert not failed, "\n".join(str(r) for r in failed)


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_check_fails_on_the_blank_exercise(lesson):
    namespace = namespace_after("exercises", lesson)
    results = [checks.run(q, namespace) for q in checks.questions(lesson)]
    passed = [str(r) for r in results if r.points > 0]
    assert not passed, f"checks that give points to the blank exercise: {passed}"
    assert len(results) >= 5, f"lesson {lesson} has {len(results)} questions, fewer than 5"


def test_blank_answers_say_how_to_answer():
    namespace = namespace_after("exercises", "01")
    message = checks.run("01.q1", namespace).message
    assert "still raises NotImplementedError: replace `# YOUR CODE HERE`" in message
    assert "`predicted_max_lr` is not defined" in checks.run("01.q4", namespace).message
    assert "`frozen_count` is not defined" in checks.run("01.q6", namespace).message


WRONG_ANSWERS = {
    "01": [
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)\n"
            "    return -probs[torch.arange(len(labels)), labels].log().mean()\n",
            "each row's max before exp",
        ),
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    shifted = logits - logits.max(dim=1, keepdim=True).values\n"
            "    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()\n"
            "    return -log_probs[torch.arange(len(labels)), labels].sum()\n",
            "average over the batch, not sum",
        ),
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    return F.cross_entropy(logits, labels)\n",
            "implement the formula yourself",
        ),
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    shifted = logits - logits.max(dim=1, keepdim=True).values\n"
            "    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()\n"
            "    return log_probs[torch.arange(len(labels)), labels].mean()\n",
            "minus torch's: cross-entropy is −log p_y",
        ),
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    logits = logits.double()\n"
            "    shifted = logits - logits.max(dim=1, keepdim=True).values\n"
            "    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()\n"
            "    return log_probs[torch.arange(len(labels)), labels].mean()\n",
            "minus torch's: cross-entropy is −log p_y",  # float64 is compared, not a crash
        ),
        (
            "01.q1",
            "def stable_cross_entropy(logits, labels):\n"
            "    top = logits.max(dim=1, keepdim=True).values\n"
            "    log_sum = (logits - top).exp().sum(dim=1).log()\n"
            "    return (log_sum - logits[torch.arange(len(labels)), labels]).mean()\n",
            "add it back after the log",
        ),
        (
            "01.q2",
            "def softmax_ce_grad(logits, labels):\n"
            "    return torch.softmax(logits, 1) - F.one_hot(labels, logits.shape[1]).float()\n",
            "divide by the batch size",
        ),
        (
            "01.q2",
            "def softmax_ce_grad(logits, labels):\n"
            "    return torch.softmax(logits, 1) / len(labels)\n",
            "subtract the one-hot labels",
        ),
        (
            "01.q2",
            "def softmax_ce_grad(logits, labels):\n"
            "    return (logits - F.one_hot(labels, logits.shape[1]).float()) / len(labels)\n",
            "apply softmax first",
        ),
        (
            "01.q3",
            "def adam_step(param, grad, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):\n"
            "    m = betas[0] * m + (1 - betas[0]) * grad\n"
            "    v = betas[1] * v + (1 - betas[1]) * grad**2\n"
            "    return param - lr * m / (v.sqrt() + eps), m, v\n",
            "without bias correction",
        ),
        (
            "01.q3",
            "def adam_step(param, grad, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):\n"
            "    m = betas[0] * m + (1 - betas[0]) * grad\n"
            "    v = betas[1] * v + (1 - betas[1]) * grad\n"
            "    return param - lr * m / (v.sqrt() + eps), m, v\n",
            "v should average the squared gradient",
        ),
        ("01.q4", "predicted_max_lr = ...", "`predicted_max_lr` is still `...`"),
        ("01.q4", "critical_lr = 1 / a", "the largest stable lr is 2/a"),
        ("01.q4", "prediction_error = 0.3", "prediction_error is 0.3 but"),
        (
            "01.q5",
            "def evaluate_accuracy(model, x, labels):\n"
            "    with torch.no_grad():\n"
            "        return (model(x).argmax(1) == labels).float().mean().item()\n",
            "dropout is still active. Call model.eval()",
        ),
        (
            "01.q5",
            "def evaluate_accuracy(model, x, labels):\n"
            "    model.eval()\n"
            "    return (model(x).argmax(1) == labels).float().mean().item()\n",
            "wrap the forward pass in torch.no_grad()",
        ),
        (
            "01.q6",
            "mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),"
            " nn.Linear(64, 2))\nmlp.requires_grad_(False)\n",
            "2 parameters of the head (mlp[4]) are frozen",
        ),
        (
            "01.q6",
            "mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),"
            " nn.Linear(64, 2))\nmlp[0].requires_grad_(False)\n",
            "mlp.2.weight, mlp.2.bias still require gradients",
        ),
        ("01.q6", "frozen_count = 2", "frozen_count is 2 but 5504 parameters are frozen"),
    ],
    "02": [
        (
            "02.q1",
            "def pad_batch(examples, pad_token_id=0):\n"
            "    input_ids = torch.full((len(examples), 32), pad_token_id)\n"
            "    mask = torch.zeros(len(examples), 32, dtype=torch.long)\n"
            "    for row, example in enumerate(examples):\n"
            "        ids = torch.tensor(example['input_ids'])\n"
            "        input_ids[row, : len(ids)], mask[row, : len(ids)] = ids, 1\n"
            "    labels = torch.tensor([e['label'] for e in examples])\n"
            "    return {'input_ids': input_ids, 'attention_mask': mask, 'labels': labels}\n",
            "you padded to 32 tokens but the longest sequence in this batch has 7",
        ),
        (
            "02.q1",
            "_right = pad_batch\n"
            "def pad_batch(examples, pad_token_id=0):\n"
            "    batch = _right(examples, pad_token_id)\n"
            "    batch['attention_mask'] = torch.ones_like(batch['input_ids'])\n"
            "    return batch\n",
            "attention_mask is 1 on 6 padding positions",
        ),
        (
            "02.q1",
            "_right = pad_batch\n"
            "def pad_batch(examples, pad_token_id=0):\n"
            "    batch = _right(examples, pad_token_id)\n"
            "    batch['label'] = batch.pop('labels')\n"
            "    return batch\n",
            "compute the loss from a key named `labels`",
        ),
        ("02.q2", "predicted_accuracy = 50", "an accuracy is between 0 and 1"),
        ("02.q2", "chance_accuracy = 0.0", "is right 1/2 of the time"),
        (
            "02.q3",
            "SentimentClassifier = SentimentClassifierBuggy",
            "the classifier is never called on the pooled output",
        ),
        (
            "02.q4",
            "compute_loss = compute_loss_buggy",
            "pass outputs.logits to the loss",
        ),
        (
            "02.q4",
            "def compute_loss(model, batch):\n"
            "    inputs = {k: v for k, v in batch.items() if k != 'labels'}\n"
            "    probabilities = model(**inputs).logits.softmax(dim=-1)\n"
            "    return F.cross_entropy(probabilities, batch['labels'])\n",
            "softmax was applied before cross_entropy",
        ),
        (
            "02.q5",
            "make_optimizer = make_optimizer_buggy",
            "lr 0.01 is a learning rate for training",
        ),
        (
            "02.q5",
            "def make_optimizer(model):\n"
            "    return torch.optim.AdamW(model.classifier.parameters(), lr=5e-5)\n",
            "parameters are not in the optimizer",
        ),
        (
            "02.q6",
            "def train_step(model, batch, optimizer, scheduler=None, max_grad_norm=1.0):\n"
            "    loss = model(**batch).loss\n"
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n"
            "    optimizer.step()\n"
            "    scheduler.step()\n"
            "    return loss.item()\n",
            "gradients of the first step were still there in the second",
        ),
        (
            "02.q6",
            "def train_step(model, batch, optimizer, scheduler=None, max_grad_norm=1.0):\n"
            "    optimizer.zero_grad()\n"
            "    loss = model(**batch).loss\n"
            "    loss.backward()\n"
            "    optimizer.step()\n"
            "    scheduler.step()\n"
            "    return loss.item()\n",
            "the update was not clipped",
        ),
        (
            "02.q6",
            "def train_step(model, batch, optimizer, scheduler=None, max_grad_norm=1.0):\n"
            "    optimizer.zero_grad()\n"
            "    loss = model(**batch).loss\n"
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n"
            "    optimizer.step()\n"
            "    return loss.item()\n",
            "the scheduler did not step",
        ),
        (
            "02.q6",
            "def train_step(model, batch, optimizer, scheduler=None, max_grad_norm=1.0):\n"
            "    loss = model(**batch).loss\n"
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n"
            "    optimizer.step()\n"
            "    scheduler.step()\n"
            "    optimizer.zero_grad()\n"
            "    return loss\n",
            "return loss.item(), a Python float, not a Tensor",
        ),
    ],
    "03": [
        ("03.q1", "preprocess = preprocess_buggy", "convert the uint8 images to float"),
        (
            "03.q1",
            "def preprocess(images, mean, std):\n"
            "    return (images.float() / 255 - torch.tensor(mean)) / torch.tensor(std)\n",
            "reshape mean and std to (3, 1, 1)",
        ),
        (
            "03.q1",
            "def preprocess(images, mean, std):\n"
            "    shape = (1, 3, 1, 1)\n"
            "    mean, std = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)\n"
            "    return (images.float() / 255 - std) / mean\n",
            "mean and std are swapped",
        ),
        (
            "03.q1",
            "def preprocess(images, mean, std):\n"
            "    shape = (1, 3, 1, 1)\n"
            "    mean, std = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)\n"
            "    return images.float() / 255 - mean / std\n",
            "write (x - mean) / std with the parentheses",
        ),
        (
            "03.q1",
            "def preprocess(images, mean, std):\n    return images.float() / 255\n",
            "scaled to [0, 1] but not normalized",
        ),
        (
            "03.q2",
            "def replace_head(model, num_classes):\n"
            "    model.fc = nn.Linear(512, num_classes)\n"
            "    return model\n",
            "read model.fc.in_features instead of hard-coding",
        ),
        (
            "03.q2",
            "def replace_head(model, num_classes):\n"
            "    model.fc = nn.Sequential(model.fc, nn.Linear(1000, num_classes))\n"
            "    return model\n",
            "model.fc should be one new nn.Linear",
        ),
        (
            "03.q2",
            "def replace_head(model, num_classes):\n"
            "    model.fc = nn.Linear(model.fc.in_features, num_classes)\n",
            "return the same model",
        ),
        ("03.q3", "predicted_trainable_share = 5", "a share is a fraction between 0 and 1"),
        (
            "03.q3",
            "trainable_share = 5130 / 11181642",
            "divide the numel() of the parameters that require grad",
        ),
        (
            "03.q4",
            "def compute_features(backbone, dl):\n"
            "    with torch.no_grad():\n"
            "        pairs = [(backbone(x), y) for x, y in dl]\n"
            "    return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])\n",
            "call backbone.eval() first",
        ),
        (
            "03.q4",
            "def compute_features(backbone, dl):\n"
            "    backbone.eval()\n"
            "    pairs = [(backbone(x), y) for x, y in dl]\n"
            "    return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])\n",
            "your features carry an autograd graph",
        ),
        ("03.q5", "set_train_mode = set_train_mode_buggy", "2 BatchNorm layers (backbone.1,"),
        (
            "03.q5",
            "def set_train_mode(model):\n"
            "    model.train()\n"
            "    for module in model.modules():\n"
            "        if isinstance(module, nn.BatchNorm2d):\n"
            "            module.eval()\n",
            "BatchNorm layers that train should stay in train mode",
        ),
        (
            "03.q6",
            "def make_optimizer(model, backbone_lr, head_lr):\n"
            "    return torch.optim.AdamW([\n"
            "        {'params': model.parameters(), 'lr': backbone_lr},\n"
            "        {'params': model.fc.parameters(), 'lr': head_lr},\n"
            "    ])\n",
            "appear in more than one parameter group",
        ),
        (
            "03.q6",
            "def make_optimizer(model, backbone_lr, head_lr):\n"
            "    return torch.optim.AdamW(model.parameters(), lr=backbone_lr)\n",
            "fc.weight gets lr 0.0001, but the head should get 0.001",
        ),
    ],
    "04": [
        (
            "04.q1",
            "def freeze_all_but_head(model):\n"
            "    for name, p in model.named_parameters():\n"
            "        p.requires_grad_(name.startswith('classifier'))\n",
            "2 parameters (fc.bias, fc.weight) of the head are frozen (small CNN with an fc head)",
        ),
        (
            "04.q1",
            "def freeze_all_but_head(model):\n"
            "    head = model.classifier if hasattr(model, 'classifier') else model.fc\n"
            "    head.requires_grad_(True)\n",
            "are still trainable (tiny BERT)",
        ),
        (
            "04.q1",
            "def freeze_all_but_head(model):\n"
            "    model.requires_grad_(True)\n"
            "    model.bert.encoder.requires_grad_(False)\n",
            "7 parameters (bert.embeddings.LayerNorm.bias,",
        ),
        ("04.q2", "predicted_frozen_accuracy = ...", "`predicted_frozen_accuracy` is still `...`"),
        ("04.q2", "predicted_frozen_accuracy = 80", "an accuracy is between 0 and 1"),
        ("04.q2", "gap = frozen_accuracy - full_accuracy", "gap should be full_accuracy"),
        (
            "04.q3",
            "def unfreeze_last_k(model, k):\n"
            "    model.requires_grad_(False)\n"
            "    model.classifier.requires_grad_(True)\n"
            "    for layer in model.bert.encoder.layer[:k]:\n"
            "        layer.requires_grad_(True)\n",
            "should train (k=1 of 3 layers)",
        ),
        (
            "04.q3",
            "def unfreeze_last_k(model, k):\n"
            "    model.requires_grad_(False)\n"
            "    model.classifier.requires_grad_(True)\n"
            "    model.bert.pooler.requires_grad_(k > 0)\n"
            "    layers = model.bert.encoder.layer\n"
            "    for layer in layers[len(layers) - k :] if k else []:\n"
            "        layer.requires_grad_(True)\n",
            "on a 3-layer model should raise a ValueError",
        ),
        (
            "04.q4",
            "def bias_only(model):\n"
            "    for name, p in model.named_parameters():\n"
            "        p.requires_grad_(name.endswith('.bias'))\n",
            "1 parameter (classifier.weight) of the head is frozen",
        ),
        (
            "04.q5",
            "def make_optimizer(model, lr):\n"
            "    return torch.optim.AdamW(model.parameters(), lr=lr)\n",
            "hand it only [p for p in model.parameters() if p.requires_grad]",
        ),
        (
            "04.q5",
            "def make_optimizer(model, lr):\n"
            "    return torch.optim.AdamW(model.classifier.parameters(), lr=lr)\n",
            "trainable parameters (bert.encoder.layer.1.attention",
        ),
        (
            "04.q6",
            "def layerwise_lr_groups(model, lr, decay):\n"
            "    trainable = [p for p in model.parameters() if p.requires_grad]\n"
            "    return [{'params': trainable, 'lr': lr}]\n",
            "should get lr·decay^2 = 0.00025 (2 blocks below the head)",
        ),
        (
            "04.q6",
            "def layerwise_lr_groups(model, lr, decay):\n"
            "    layers = model.bert.encoder.layer\n"
            "    blocks = [model.classifier, model.bert.pooler, *reversed(layers)]\n"
            "    blocks.append(model.bert.embeddings)\n"
            "    return [{'params': list(m.parameters()), 'lr': lr * decay**d}\n"
            "            for d, m in enumerate(blocks)]\n",
            "frozen parameters (bert.embeddings",
        ),
    ],
    "05": [
        (
            "05.q1",
            "def lora_forward(x, weight, bias, A, B, alpha, r):\n"
            "    return x @ weight.T + bias + (x @ A.T) @ B.T\n",
            "the update is not scaled: multiply B A x by alpha / r",
        ),
        (
            "05.q1",
            "def lora_forward(x, weight, bias, A, B, alpha, r):\n"
            "    return x @ weight.T + (alpha / r) * (x @ A.T) @ B.T\n",
            "the bias b is missing",
        ),
        (
            "05.q1",
            "def lora_forward(x, weight, bias, A, B, alpha, r):\n"
            "    return x @ weight.T + bias + (alpha / r) * (x @ B @ A)\n",
            "raised RuntimeError",
        ),
        (
            "05.q2",
            "def init_lora(in_features, out_features, r):\n"
            "    return (nn.Parameter(torch.randn(r, in_features)),\n"
            "            nn.Parameter(torch.randn(out_features, r)))\n",
            "B is not zero, so B A ≠ 0 and the model changes before the first step",
        ),
        (
            "05.q2",
            "def init_lora(in_features, out_features, r):\n"
            "    return (nn.Parameter(torch.zeros(r, in_features)),\n"
            "            nn.Parameter(torch.zeros(out_features, r)))\n",
            "with A = B = 0 both get zero gradients",
        ),
        (
            "05.q2",
            "def init_lora(in_features, out_features, r):\n"
            "    return (nn.Parameter(torch.randn(in_features, r)),\n"
            "            nn.Parameter(torch.zeros(r, out_features)))\n",
            "A has shape (6, 3) but should have (3, 6)",
        ),
        (
            "05.q3",
            "def count_lora_parameters(hidden_size, num_layers, r, num_labels):\n"
            "    return num_layers * 2 * r * 2 * hidden_size\n",
            "the new head's 1538 parameters train too",
        ),
        (
            "05.q3",
            "def count_lora_parameters(hidden_size, num_layers, r, num_labels):\n"
            "    return num_layers * 2 * r * hidden_size + hidden_size * num_labels + num_labels\n",
            "count both A (r × in) and B (out × r)",
        ),
        (
            "05.q4",
            "def merge_weight(weight, A, B, alpha, r):\n    return weight + B @ A\n",
            "scale the update",
        ),
        (
            "05.q4",
            "def merge_weight(weight, A, B, alpha, r):\n    return (alpha / r) * B @ A\n",
            "you left out W",
        ),
        (
            "05.q5",
            "fixed_config = LoraConfig(r=4, lora_alpha=8, target_modules=['query', 'value'])",
            "the classifier still does not train: add task_type='SEQ_CLS'",
        ),
        (
            "05.q5",
            "fixed_config = LoraConfig(r=4, lora_alpha=8, target_modules=['query'],\n"
            "                          modules_to_save=['classifier'])",
            "keep LoRA on query and value",
        ),
        ("05.q6", "predicted_smallest_rank = 3", "should be one of the ranks tried"),
        ("05.q6", "smallest_rank = 8", "smallest_rank is 8, but the smallest rank"),
    ],
}


@pytest.mark.parametrize(
    "lesson, question_id, code, phrase",
    [
        pytest.param(lesson, *case, id=f"{case[0]}-{number}")
        for lesson, cases in WRONG_ANSWERS.items()
        for number, case in enumerate(cases)
    ],
)
def test_a_typical_wrong_answer_fails_with_a_helpful_message(lesson, question_id, code, phrase):
    result = run_with(lesson, question_id, code)
    assert not result.passed, f"a wrong answer passes {question_id}:\n{code}"
    assert phrase in result.message, result.message


def test_lesson_04_checks_agree_with_ftlab_freeze():
    from ftlab import freeze
    from ftlab.exercises.checks.lesson04 import block_depth, expected_trainable
    from ftlab.exercises.checks.tools import TinyCNN, tiny_bert

    def trains(model):
        return {name for name, p in model.named_parameters() if p.requires_grad}

    bert = tiny_bert(num_layers=3)
    for k in (0, 1, 3):
        assert trains(freeze.last_k(bert, k)) == expected_trainable(bert, k=k)
    assert trains(freeze.bias_only(bert)) == expected_trainable(bert, biases=True)
    cnn = TinyCNN()
    assert trains(freeze.head_only(cnn)) == expected_trainable(cnn)
    bert.requires_grad_(True)
    named = {id(p): name for name, p in bert.named_parameters()}
    for group in freeze.layerwise_lr_groups(bert, lr=1.0, decay=0.5):
        for p in group["params"]:
            assert group["lr"] == 0.5 ** block_depth(named[id(p)], num_layers=3)
