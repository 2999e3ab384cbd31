"""Tiny models and data sets for the engine tests: fast on a CPU, real enough to train."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

NUM_FEATURES, NUM_LABELS = 8, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Run tiny models on one CPU thread: on a busy machine two threads are 10x slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(num_labels: int = NUM_LABELS, seed: int = 0) -> nn.Module:
    """Return a two-layer MLP classifier with fixed initial weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, num_labels))


class ForgottenHead(nn.Module):
    """A new head that forward never calls: the backbone's own outputs are returned."""

    def __init__(self):
        super().__init__()
        self.backbone = mlp()
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.backbone(x)  # should be self.head(self.backbone(x))


def blobs(n: int = 96, num_labels: int = NUM_LABELS, seed: int = 0) -> TensorDataset:
    """Return Gaussian blobs, one per class: easy to separate, so accuracy should be high."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_labels  # (n,)
    centers = torch.randn(num_labels, NUM_FEATURES, generator=generator) * 3
    x = centers[labels] + torch.randn(n, NUM_FEATURES, generator=generator)  # (n, features)
    return TensorDataset(x, labels)


def loaders(batch_size: int = 16, n: int = 96, shuffle: bool = True):
    """Return (train_dl, val_dl) over blobs."""
    train_dl = DataLoader(blobs(n, seed=0), batch_size=batch_size, shuffle=shuffle)
    val_dl = DataLoader(blobs(48, seed=0), batch_size=32)
    return train_dl, val_dl


def tiny_bert(num_labels: int = 2, seed: int = 0):
    """Return a randomly initialised 2-layer BERT classifier (hidden size 32)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


class TokenData(Dataset):
    """Sequences whose label is whether token 7 occurs: dict examples like a tokenized data set."""

    def __init__(self, n: int = 64, length: int = 12, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(10, 100, (n, length), generator=generator)
        self.labels = torch.arange(n) % 2
        self.input_ids[self.labels == 1, 3] = 7  # (n, length)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        input_ids = self.input_ids[index]
        mask = torch.ones_like(input_ids)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": self.labels[index]}


def token_loaders(batch_size: int = 16):
    """Return (train_dl, val_dl) of dict batches for tiny_bert."""
    train_dl = DataLoader(TokenData(64, seed=0), batch_size=batch_size, shuffle=True)
    return train_dl, DataLoader(TokenData(32, seed=1), batch_size=16)


class TinyCNN(nn.Module):
    """A backbone with BatchNorm and a linear head, for images (batch, 3, 8, 8)."""

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(4, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x).flatten(1)  # (batch, 4)
        return self.head(features)  # (batch, num_labels)


def image_batch(n: int = 8, num_labels: int = NUM_LABELS):
    """Return one (images, labels) batch for TinyCNN."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n) % num_labels
