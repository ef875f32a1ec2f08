"""Plain supervised training and accuracy, for the benchmarks and examples (small data in memory)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime

__all__ = ["seed_everything", "train_classifier", "accuracy", "onnx_accuracy"]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 8, lr: float = 3e-3,
                     batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> nn.Module:
    """Adam + one-cycle cosine schedule, cross-entropy, shuffled mini-batches (deterministic for a
    seed on CPU). Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    n = len(xt)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"  epoch {epoch + 1}/{epochs}: train loss {total / n:.4f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of a torch model (eval mode) on (x, y)."""
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(x), batch_size):
        hits += int((model(torch.as_tensor(x[i:i + batch_size])).argmax(1).numpy() == y[i:i + batch_size]).sum())
    model.train(was)
    return hits / len(x)


def onnx_accuracy(model, x: np.ndarray, y: np.ndarray, *, optimization: str = "disabled") -> float:
    """Top-1 accuracy of an ONNX classifier (one input, first output = logits) run by onnxruntime
    through onnx_depth.runtime; a static batch size B is fed B samples at a time."""
    sess = runtime.make_session(model, optimization=optimization)
    spec = runtime.input_specs(sess)[0]
    b = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 256
    out_name = runtime.output_names(sess)[0]
    hits = 0
    n = len(x) - len(x) % b if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else len(x)
    for i in range(0, n, b):
        logits = runtime.run(sess, {spec.name: np.ascontiguousarray(x[i:i + b], dtype=np.float32)}, [out_name])[out_name]
        hits += int((logits.reshape(len(logits), -1).argmax(1) == y[i:i + b]).sum())
    return hits / n
