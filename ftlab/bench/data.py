"""The work `ftlab bench` times: SST-2-shaped token batches, template images, random-weight models.

Taught in lesson 06. Nothing is downloaded: BERT is built from a config and ResNet-18 with
`weights=None`; the data is made here, seeded, and learnable (so a target loss can be reached).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.data import bucketing
from ftlab.data.batches import to_device
from ftlab.scaling import vision

NUM_CLASSES = 10  # vision
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std


def sst2_shaped(num_examples: int, max_length: int = 128, vocab_size: int = 30522, seed: int = 0):
    """Return tokenized sentences whose lengths are drawn like SST-2's: mean ≈ 13, long tail.

    Taught in lesson 06. Each example is {"input_ids": [CLS, ..., SEP], "labels": 0 or 1}; the
    label is which of two marker tokens the sentence holds, so a model can learn it.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(math.log(11), 0.6, num_examples)), 4, max_length)
    examples = []
    for length in lengths.astype(int).tolist():
        label = int(rng.integers(2))
        body = rng.integers(6, vocab_size, length - 2)  # ids 0-3: [PAD] [UNK] [CLS] [SEP]
        body[rng.integers(length - 2)] = 4 + label  # the marker decides the label
        examples.append({"input_ids": [2, *body.tolist(), 3], "labels": label})
    return examples


def text_data(work: dict) -> dict:
    """SST-2-shaped sentences, and the loaders' pieces each path uses."""
    vocab_size = bert_config(work).vocab_size
    max_length, batch_size = work["max_length"], work["batch_size"]
    num_train, num_eval = work["steps"] * batch_size, 4 * batch_size
    examples = sst2_shaped(num_train + num_eval, max_length, vocab_size, work["seed"])
    lengths = [len(example["input_ids"]) for example in examples]
    train, held_out = examples[:num_train], examples[num_train:]
    return {
        "plain": train,
        "collate": bucketing.BucketCollator(0, multiple=max_length, max_length=max_length),
        "trainer": _as_hf_dataset(train),
        "tokenizer": _word_level_tokenizer(vocab_size),
        "fast": train,
        "fast_sampler": lambda: bucketing.LengthGroupedBatchSampler(
            lengths[:num_train], batch_size, seed=work["seed"], drop_last=True
        ),
        "fast_collate": bucketing.BucketCollator(0, work["bucket_multiple"], max_length),
        "eval": [bucketing.BucketCollator(0, 1)(held_out[i : i + batch_size])
                 for i in range(0, num_eval, batch_size)],
    }  # fmt: skip


def vision_data(work: dict) -> dict:
    """Noisy copies of one random template per class, as uint8 images (N, 3, size, size).

    The plain and Trainer paths read float32 images normalized once ahead, so that their
    loader is not the bottleneck; the fast path reads the uint8 images and normalizes on the
    device.
    """
    from ftlab.data.image_tensors import ImageTensors

    generator = torch.Generator().manual_seed(work["seed"])
    size, batch_size = work["image_size"], work["batch_size"]
    num_train, num_eval = work["steps"] * batch_size, 4 * batch_size
    shape = (3, size, size)
    templates = torch.randint(0, 128, (NUM_CLASSES, *shape), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (num_train + num_eval,), generator=generator)
    noise = torch.randint(0, 128, (len(labels), *shape), generator=generator, dtype=torch.uint8)
    images = templates[labels] + noise  # (N, 3, size, size) uint8, half template, half noise
    normalize = vision.ImageNormalize(*IMAGENET)  # once, ahead: the plain paths get float32
    floats = torch.cat([normalize(chunk) for chunk in images[:num_train].split(256)])
    plain = torch.utils.data.TensorDataset(floats, labels[:num_train])
    classes = [str(c) for c in range(NUM_CLASSES)]
    train = ImageTensors(images[:num_train], labels[:num_train], classes)
    eval_images, eval_labels = images[num_train:], labels[num_train:]
    return {
        "plain": plain,
        "collate": None,
        "trainer": _DictImages(plain),
        "fast": train,  # uint8: a quarter of the bytes to copy; normalized on the device
        "fast_sampler": lambda: torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(
                train, generator=torch.Generator().manual_seed(work["seed"])
            ), batch_size, drop_last=True,
        ),
        "fast_collate": None,
        "eval": [(normalize(eval_images[i : i + batch_size]), eval_labels[i : i + batch_size])
                 for i in range(0, num_eval, batch_size)],
    }  # fmt: skip


class _DictImages(torch.utils.data.Dataset):
    """Images as the dicts Trainer feeds to a model: {"pixel_values", "labels"}."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, label = self.images[index]
        return {"pixel_values": image, "labels": label}


class LossForTrainer(nn.Module):
    """Give a torchvision model the (pixel_values, labels) -> {"loss", "logits"} Trainer expects."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)  # (batch, num_classes)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def build_model(work: dict, device: torch.device) -> nn.Module:
    """Return the random-weight model of the work: BERT from `work["bert"]` or ResNet-18."""
    torch.manual_seed(work["seed"])  # every path starts from the same weights
    if work["task"] == "text":
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification(bert_config(work)).to(device)
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=NUM_CLASSES).to(device)


def bert_config(work: dict):
    """Return a BertConfig: the BERT-base defaults, changed by `work["bert"]`."""
    from transformers import BertConfig

    return BertConfig(num_labels=2, **work["bert"])


def _word_level_tokenizer(vocab_size: int):
    """A tokenizer over ids only (no download): Trainer uses it to pad, as with a real one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


def _as_hf_dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(examples)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, device: torch.device) -> tuple[float, float]:
    """Return (mean loss, accuracy) on held-out batches, in fp32, the same for every path."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        batch = to_device(batch, device)
        if isinstance(batch, dict):
            logits, labels = model(**batch).logits, batch["labels"]
        else:
            logits, labels = model(batch[0]), batch[1]
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += len(labels)
    model.train()
    return total_loss / count, correct / count
