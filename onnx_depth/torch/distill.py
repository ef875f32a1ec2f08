"""Short distillation of only the operators a plan changed (issue 17 item 3; `--distill`).

The least-squares refit (planning.sequential_refit) fits each changed operator to its own
segment output. What matters is the model output: small local errors grow through the layers
after it. This step fine-tunes the changed operators end to end. The emitted model runs in torch
(`onnx_module.OnnxModule`); only the changed operators' initializers train; the loss is the
output error against the ORIGINAL model on the same input, relative to the output variance:

    L = mean_i ||f_new(x~_i) - f_orig(x~_i)||^2 / var(f_orig(fit))

x~: a batch of fit samples, augmented afresh each step (the targets are the original model's
outputs on x~, computed with onnxruntime, so no label is assumed and the augmentation need not
preserve classes): mixup (x~ = l x_a + (1 - l) x_b, l ~ U(0, 1), x_b a random fit sample), plus for image
inputs [N, C, H, W] (H, W >= 32) a horizontal flip (p = 1/2) and a zoom crop (side 2/3 to 1 of
the image at a random place, resized back, bilinear). With 64 fit images and 100k weights the
fit loss falls far below the held-out error within a few epochs (measured on
EfficientNet-Lite0); the augmentation is what keeps the held-out error falling.

Adam (lr), batches of `batch` samples; after every epoch the output NMSE on the validation
samples (never trained on) is measured and the best epoch's weights are kept; training stops
after `patience` epochs without improvement, after `max_epochs`, or once `time_limit_s` is used.
Seeded (torch and numpy, deterministic algorithms, the given threads): the same inputs give the
same weights. The caller keeps the result only if it beats the least-squares model on the
validation samples measured with onnxruntime.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .. import runtime
from ..analysis.fidelity import evaluate
from .onnx_module import OnnxModule, UnsupportedOp

__all__ = ["DistillResult", "distill_changed", "distill_if_better", "trainable_initializers"]

LINEAR = ("Conv", "Gemm", "MatMul")


@dataclass
class DistillResult:
    model: onnx.ModelProto | None  # None: not distilled (see `skipped`)
    skipped: str | None = None
    epochs: int = 0
    best_epoch: int = -1
    val_nmse_before: float | None = None
    val_nmse_after: float | None = None
    trained: list[str] = field(default_factory=list)
    seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


def trainable_initializers(model: onnx.ModelProto, before: "set[str]") -> set[str]:
    """Float weights and biases of Conv / Gemm / MatMul nodes that are not among the initializer
    names `before` had (the lossless graph the plan was applied to): the operators the plan wrote."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {k for n in model.graph.node if n.op_type in LINEAR for k in n.input[1:]
            if k in floats and k not in before}


def _augment(x: torch.Tensor, pool: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Mixup with partners drawn from the whole fit set `pool` (so batches of one mix too), then
    for images a flip and a zoom crop."""
    lam = torch.tensor(rng.uniform(0, 1, (len(x),) + (1,) * (x.dim() - 1)), dtype=x.dtype)
    x = lam * x + (1 - lam) * torch.from_numpy(pool[rng.integers(0, len(pool), len(x))])
    if x.dim() == 4 and x.shape[2] >= 32 and x.shape[3] >= 32:
        if rng.random() < 0.5:
            x = torch.flip(x, dims=[3])
        H, W = x.shape[2], x.shape[3]
        f = rng.uniform(2 / 3, 1.0)
        h, w = max(1, int(H * f)), max(1, int(W * f))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        x = F.interpolate(x[:, :, y0:y0 + h, x0:x0 + w], size=(H, W), mode="bilinear", align_corners=False)
    return x


def _single(data) -> np.ndarray:
    arrs = data.arrays()
    if len(arrs) != 1:
        raise UnsupportedOp(f"{len(arrs)} model inputs (distillation handles one)")
    a = next(iter(arrs.values()))
    if a.dtype != np.float32:
        raise UnsupportedOp(f"input of dtype {a.dtype} (distillation handles float32)")
    return a


def distill_changed(model: onnx.ModelProto, original: onnx.ModelProto, before: "set[str]", fit, validation, *,
                    lr: float = 5e-5, batch: int = 8, max_epochs: int = 30, patience: int = 6,
                    time_limit_s: float = 120.0, threads: int | None = 1, seed: int = 0) -> DistillResult:
    """Fine-tune the changed operators of `model` (module docstring). `before`: initializer
    names of the graph the plan was applied to; fit / validation: analysis.calibration sets."""
    t0 = time.perf_counter()
    train = trainable_initializers(model, before)
    if not train:
        return DistillResult(None, "the plan wrote no weights to train")
    if validation is None or len(validation) == 0:
        return DistillResult(None, "no validation samples to stop on")
    fixed = fit.fixed_batch
    if fixed is not None:  # a fixed-batch model runs in steps of exactly that batch
        batch = fixed
    try:
        xf, xv = _single(fit), _single(validation)
        if len(model.graph.output) != 1:
            raise UnsupportedOp(f"{len(model.graph.output)} model outputs (distillation handles one)")
        n_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads or 1))
        det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return _run(model, original, train, xf, xv, lr=lr, batch=batch, max_epochs=max_epochs, patience=patience,
                        time_limit_s=time_limit_s, threads=threads, seed=seed, t0=t0, fixed=fixed)
        finally:
            torch.set_num_threads(n_threads)
            torch.use_deterministic_algorithms(det)
    except UnsupportedOp as e:
        return DistillResult(None, str(e), seconds=time.perf_counter() - t0)


def _run(model, original, train, xf, xv, *, lr, batch, max_epochs, patience, time_limit_s, threads, seed, t0, fixed):
    """The training loop of distill_changed. fixed: the model's fixed batch (every run of the
    teacher and the student takes exactly that many samples) or None (dynamic batch)."""
    chunk = fixed or 16  # samples per inference run
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = runtime.make_session(original, threads=threads, optimization=runtime.EVAL_OPTIMIZATION)
    name = teacher.get_inputs()[0].name

    def teach(x: np.ndarray) -> np.ndarray:
        return np.concatenate([runtime.run(teacher, {name: x[i:i + chunk]})[teacher.get_outputs()[0].name]
                               for i in range(0, len(x), chunk)])

    tv = teach(xv)
    tf = teach(xf)
    scale = float(np.mean((tf - tf.mean(0)) ** 2)) or 1.0
    vscale = float(np.sum((tv - tv.mean(0)) ** 2)) or 1.0
    net = OnnxModule(model, train)

    def val_nmse() -> float:
        with torch.no_grad():
            p = torch.cat([net(torch.from_numpy(xv[i:i + chunk]))[0] for i in range(0, len(xv), chunk)]).numpy()
        return float(np.sum((p.astype(np.float64) - tv) ** 2) / vscale)

    opt = torch.optim.Adam(net.params.parameters(), lr=lr)
    first = val_nmse()
    best, best_state, best_ep = first, copy.deepcopy(net.params.state_dict()), -1
    res = DistillResult(None, trained=sorted(train), val_nmse_before=first)
    ep = 0
    for ep in range(max_epochs):
        perm = rng.permutation(len(xf))
        losses = []
        for i in range(0, len(xf), batch):
            if len(perm[i:i + batch]) % batch and fixed:  # a fixed-batch model: whole batches only
                continue
            xb = _augment(torch.from_numpy(xf[perm[i:i + batch]]), xf, rng)
            tb = torch.from_numpy(teach(np.ascontiguousarray(xb.numpy())))
            loss = ((net(xb)[0] - tb) ** 2).mean() / scale
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        v = val_nmse()
        res.curve.append({"epoch": ep, "fit_loss": float(np.mean(losses)), "val_nmse": v})
        if v < best:
            best, best_state, best_ep = v, copy.deepcopy(net.params.state_dict()), ep
        if ep - best_ep >= patience or time.perf_counter() - t0 > time_limit_s:
            break
    res.epochs = ep + 1
    res.best_epoch = best_ep
    res.val_nmse_after = best
    res.seconds = time.perf_counter() - t0
    if best_ep < 0:
        res.skipped = "no epoch improved the validation error"
        return res
    net.params.load_state_dict(best_state)
    res.model = net.write_back(model)
    return res


def distill_if_better(model: onnx.ModelProto, original: onnx.ModelProto, before: "set[str]", fit, validation, *,
                      threads: int | None = 1, keep_top1: bool = False, **kw) -> tuple[onnx.ModelProto, dict]:
    """distill_changed, kept when the validation output NMSE measured with onnxruntime (the
    reported fidelity's oracle) falls. NMSE, not top-1 agreement, decides: it is what the
    training lowers, and on a few dozen validation samples top-1 moves in steps of one sample.
    keep_top1 (a --max-error bound on top-1): also the validation top-1 agreement must not fall.
    Returns (the model to emit, a report dict)."""
    res = distill_changed(model, original, before, fit, validation, threads=threads, **kw)
    info = res.to_dict()
    info["kept"] = False
    if res.model is None:
        return model, info
    old = evaluate(original, model, validation, threads=threads)
    new = evaluate(original, res.model, validation, threads=threads)
    kept = bool(new.nmse < old.nmse)
    if keep_top1 and old.top1_agreement is not None and new.top1_agreement is not None:
        kept = kept and new.top1_agreement >= old.top1_agreement
    info.update(kept=kept, val_nmse_onnxruntime=[old.nmse, new.nmse],
                val_top1_onnxruntime=[old.top1_agreement, new.top1_agreement])
    return (res.model if kept else model), info
