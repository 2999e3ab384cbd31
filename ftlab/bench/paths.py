"""The three loops `ftlab bench` times on the same work. Taught in lesson 06.

Each takes (name, model, data, work, device, timer, compile_mode), times its loader alone
first (`timer.time_loader`), calls `timer.step_end()` after every optimizer step and returns
the per-step training losses.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.bench import data as bench_data
from ftlab.data import bucketing
from ftlab.data.batches import to_device
from ftlab.scaling import cuda_graphs as graphs
from ftlab.scaling.compile import CompiledStep
from ftlab.scaling.cuda_graphs import CudaGraphStep
from ftlab.scaling.vision import ImageNormalize, channels_last
from ftlab.training.optim import fused_adamw


def plain_loop(name, model, data, work, device, timer, compile_mode) -> list[float]:
    """The loop of lesson 02: fp32, batches padded to max_length, loss.item() every step."""
    timer.time_loader(_plain_loader(data, work))  # a loader of its own: same order after
    train_dl = _plain_loader(data, work)
    fused = fused_adamw(device)  # as lesson 02's AdamW
    optimizer = torch.optim.AdamW(model.parameters(), lr=work["lr"], weight_decay=0.0, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_decay(work["steps"]))
    losses = []
    model.train()
    for batch in train_dl:
        loss = _compute_loss(model, to_device(batch, device))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        timer.step_end()
        if len(losses) == work["steps"]:
            break
    return losses


def trainer(name, model, data, work, device, timer, compile_mode) -> list[float]:
    """Hugging Face Trainer with default arguments (bf16/fp16 for the mixed-precision path)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer.step_end()

    mixed = name.removeprefix("trainer_")
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=work["batch_size"],
            max_steps=work["steps"], learning_rate=work["lr"], eval_strategy="no",
            report_to="none", logging_steps=loss_every(work), disable_tqdm=True,
            save_strategy="no", seed=work["seed"], use_cpu=device.type == "cpu",
            bf16=mixed == "bf16", fp16=mixed == "fp16",
        )  # fmt: skip
        trainer_model = model if work["task"] == "text" else bench_data.LossForTrainer(model)
        trainer = Trainer(
            model=trainer_model, args=args, train_dataset=data["trainer"],
            processing_class=data.get("tokenizer"), callbacks=[Timing()],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # no log dict printed every logging step
        loader = trainer.get_train_dataloader()  # Accelerate's wrapper of it moves batches too
        timer.time_loader(getattr(loader, "base_dataloader", loader))
        trainer.train()
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return [loss for loss in logged for _ in range(loss_every(work))]


def fit_fast(name, model, data, work, device, timer, compile_mode) -> list[float]:
    """ftlab.fit with the fast path: grouped, bucketed batches; the step the name asks for.

    "..._compiled_<mode>" trains with `CompiledStep(mode)`; "..._dynamic" compiles one graph
    for every bucket (symbolic sequence length), not one each; "..._cuda_graph" records each
    shape's whole step as a CUDA graph (`CudaGraphStep`), with Inductor's kernels when the name
    says "compiled_default" (the CUDA graphs are then ftlab's, not Inductor's).
    """
    from ftlab.training.loop import fit

    class Timing:
        def on_step_end(self, state):
            timer.step_end()

    timer.time_loader(_fast_loader(data, device))  # each has a freshly seeded sampler
    train_dl = _fast_loader(data, device)
    cuda, vision = device.type == "cuda", work["task"] == "vision"
    if vision:  # uint8 batches in (a quarter of the bytes), normalized on the device
        model = nn.Sequential(ImageNormalize(*bench_data.IMAGENET, channels_last=cuda), model)
        model = channels_last(model) if cuda else model
    step = timer.count_recordings(_step_for(name, compile_mode))
    history = fit(
        model, train_dl, lr=work["lr"], max_steps=work["steps"], weight_decay=0.0,
        scheduler="linear", precision="auto", device=device, progress=False, check=False,
        callbacks=[Timing()], seed=work["seed"], step=step,
    )  # fmt: skip
    return history.step_losses


def _step_for(name: str, compile_mode: str | None):
    """The training step a fit path's name asks for; None: fit's eager step."""
    if name.endswith("_cuda_graph"):
        return CudaGraphStep(compile="default" if "compiled" in name else None)
    if "compiled" in name:
        return CompiledStep(compile_mode, dynamic=name.endswith("_dynamic"))
    return None


def _plain_loader(data, work) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        data["plain"], batch_size=work["batch_size"], shuffle=True, collate_fn=data["collate"],
        generator=torch.Generator().manual_seed(work["seed"]), drop_last=True,
    )  # fmt: skip


def _fast_loader(data, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        data["fast"], batch_sampler=data["fast_sampler"](), collate_fn=data["fast_collate"],
        **bucketing.loader_kwargs(device),
    )  # fmt: skip


def _compute_loss(model: nn.Module, batch) -> torch.Tensor:
    if isinstance(batch, dict):  # Hugging Face model: the loss comes with the output
        return model(**batch).loss
    images, labels = batch
    return F.cross_entropy(model(images), labels)  # logits: (batch, num_classes)


def loss_every(work: dict) -> int:
    """Steps per loss read-back: Trainer's logging_steps and ftlab.fit's LOG_EVERY."""
    return min(10, max(1, work["steps"] // 3))


def _linear_decay(steps: int):
    return lambda step: max(0.0, 1 - step / steps)


# The paths every run times, by name; `chosen` adds the GPU's and the compiled ones.
EAGER = {"plain_fp32": plain_loop, "trainer_default": trainer, "ftlab_fit_fast": fit_fast}


def chosen(task: str, device: torch.device, compile_mode: str | None) -> dict:
    """The paths to time, by name, in order; the whole-step CUDA graph paths last."""
    paths = dict(EAGER)  # plain loop, Trainer, fit's fast path
    if device.type == "cuda":
        paths["trainer_" + mixed_precision(device)] = trainer
    if compile_mode:  # text: one graph per bucket, and one for all (a symbolic length)
        paths[f"ftlab_fit_fast_compiled_{compile_mode}"] = fit_fast
        if task == "text":
            paths[f"ftlab_fit_fast_compiled_{compile_mode}_dynamic"] = fit_fast
    if device.type in graphs.GRAPH_DEVICES:  # eager kernels; with compile, Inductor's
        paths["ftlab_fit_fast_cuda_graph"] = fit_fast
        if compile_mode:
            paths["ftlab_fit_fast_compiled_default_cuda_graph"] = fit_fast
    return paths


def mixed_precision(device: torch.device) -> str:
    """Trainer's mixed-precision path: "bf16" where the GPU has it, else "fp16" (a T4)."""
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
