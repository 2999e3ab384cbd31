"""A CUDA graph's rules, kept on the CPU: a step recorded as a tape of operators, replayed as is.

A CUDA recording notes every kernel the step launches, with the memory each reads and writes,
and runs none of them; a replay launches the same kernels on the same memory, and no Python
runs. `Tape` does that on the CPU. While recording it runs each operator, below autograd and
autocast, and notes it with its very tensors; at the end it puts back every tensor the step
was given (weights, gradients, AdamW's state, BatchNorm's statistics, GradScaler's scale) and
the random state as they were before, so the recording leaves no trace, as on a GPU.
A replay runs the noted operators again, in order, on the same tensors: each result is copied
into the tensor the recording made, so what a later operator reads has changed; views and
in-place operators write where they wrote before. So a replay sees only what a real one sees:
a value the host worked out while recording (a Python counter, a float learning rate) stays
as it was then. An operator that would make the host wait for a GPU value fails, as it does
while a GPU records.

One way it differs from eager: under a dispatch mode some composite operators arrive whole
instead of taken apart, and autocast may then leave them in float32 where eager ran their parts
in bf16. That is how it found `F.affine_grid` rounding BatchAugment's crops under autocast.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operators that make the host wait for a GPU value: .item(), float(t) and `if t:` end in
# _local_scalar_dense; the others size their output from the data. Each breaks a recording.
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim"}
CAPTURE_ERROR = "operation not permitted when stream is capturing ({name}, the tape's stand-in)"


class Tape(TorchDispatchMode):
    """While active: runs and notes each operator; afterwards `replay()` runs them again."""

    def __init__(self):
        super().__init__()
        self.entries = []  # (operator, args, kwargs, [(recorded result, index in results)])
        self.saved = {}  # address: (storage given, its bytes when first given)
        self.replays = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in HOST_READS:
            raise RuntimeError(CAPTURE_ERROR.format(name=name))
        self._save_inputs(args, kwargs)
        result = func(*args, **kwargs)
        inputs = {_storage(t) for t in tree_flatten((args, kwargs))[0] if _is_tensor(t)}
        results = tree_flatten(result)[0]
        fresh = [(t, i) for i, t in enumerate(results) if _is_tensor(t)]
        fresh = [(t, i) for t, i in fresh if _storage(t) not in inputs]  # not a view, not in place
        self.entries.append((func, args, kwargs, fresh))
        return result

    def _save_inputs(self, args, kwargs) -> None:
        """Keep the memory of each tensor the first time an operator is given it.

        Every one, not only those an operator's schema says it writes: `native_batch_norm`
        updates BatchNorm's running statistics without saying so. Whole storages are kept, so
        views, expanded ones too, are put back through what they view.
        """
        for tensor in tree_flatten((args, kwargs))[0]:
            if not _is_tensor(tensor) or tensor.untyped_storage().nbytes() == 0:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.saved:
                self.saved[storage.data_ptr()] = (storage, storage.clone())

    def undo(self) -> None:
        """Put back every storage as it was first given: a recording runs nothing."""
        for storage, value in self.saved.values():
            storage.copy_(value)

    def replay(self) -> None:
        self.replays += 1
        with torch.no_grad():
            for func, args, kwargs, fresh in self.entries:
                results = tree_flatten(func(*args, **kwargs))[0]
                for recorded, index in fresh:
                    recorded.copy_(results[index])


def record(step):
    """Record `step()` on a tape, as `graphs.capture_cuda_graph` does on a GPU; return both."""
    tape, rng = Tape(), torch.get_rng_state()
    try:
        output = as_if_recording(tape, step)
    finally:
        tape.undo()
        torch.set_rng_state(rng)  # a replay draws the random numbers the recording drew
    return tape, output


def as_if_recording(mode, step):
    """Run `step()` under dispatch `mode` as a CUDA recording would run it; return its output.

    Libraries ask `torch.cuda.is_current_stream_capturing()` and skip their host checks while
    a graph records (transformers' padding-mask shortcut does), so that answers True here.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        with mode:
            return step()


class HostReads(TorchDispatchMode):
    """Notes every operator run inside it that would make the host wait for the GPU."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in HOST_READS:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def tape_capture(tapes=None):
    """A `capture` for `graphs.GraphedStep` that records on a `Tape` (kept in `tapes`)."""

    def capture(step, pool, stream):
        tape, output = record(step)
        if tapes is not None:
            tapes.append(tape)
        return tape.replay, output, pool

    return capture


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
