#!/usr/bin/env python
"""Export the real trained PyTorch models that pip packages ship to ONNX fixtures.

    pip install torch==2.13.0            # CPU wheel
    pip install --no-deps digit-recognizer-py==0.1.0 facenet-pytorch==2.6.0
    python scripts/export_real_fixtures.py [--out tests/fixtures/real]

Sources (the packages are located, never imported: their torchvision/Flask dependencies are absent):
  * digit-recognizer-py 0.1.0: models/handwriting_model.pth, class CNN from model.py (loaded from
    its file with importlib; it imports only torch.nn).
  * facenet-pytorch 2.6.0: data/{pnet,rnet,onet}.pt state dicts; the PNet/RNet/ONet classes are taken
    from models/mtcnn.py's source with ast (that module imports torchvision, which is not installed).

Each net is exported in eval mode with torch.onnx.export(dynamo=False, opset_version=13) at a static
batch-1 shape. A second variant with training=TrainingMode.PRESERVE (which keeps BatchNormalization
nodes) is written only for nets that have BatchNorm layers; none of these do, so none is written.
Every file is checked with onnx.checker (full_check), loaded by onnxruntime, and compared with torch
on the real data (MNIST digits, LFW faces) and random inputs at atol 1e-4. A MANIFEST.json records
shapes, sizes, sha256 and the max abs difference.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from onnx_depth.zoo import real  # noqa: E402  (numpy/onnx/PIL only)

OPSET = 13
ATOL = 1e-4
MAX_IR = 10  # onnxruntime 1.31 accepts up to IR 11; torch's exporter writes 7 or 8 for opset 13


def _load_module_from_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mnist_cnn() -> tuple[nn.Module, str]:
    pkg = real.package_dir("digit_recognizer")
    model_py = _load_module_from_file("_digit_recognizer_model", pkg / "model.py")
    net = model_py.CNN()
    weights = pkg / "models" / "handwriting_model.pth"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    version = importlib.metadata.version("digit-recognizer-py")
    return net.eval(), f"digit-recognizer-py=={version} digit_recognizer/models/handwriting_model.pth"


def mtcnn_classes() -> dict[str, type]:
    """PNet, RNet, ONet class definitions executed from facenet_pytorch/models/mtcnn.py's source."""
    path = real.package_dir("facenet_pytorch") / "models" / "mtcnn.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("PNet", "RNet", "ONet")]
    if len(wanted) != 3:
        raise SystemExit(f"PNet/RNet/ONet not all found in {path}")
    namespace = {"torch": torch, "nn": nn, "np": np, "os": __import__("os"), "__file__": str(path)}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {name.lower(): namespace[name] for name in ("PNet", "RNet", "ONet")}


def mtcnn_net(name: str, classes: dict[str, type]) -> tuple[nn.Module, str]:
    pkg = real.package_dir("facenet_pytorch")
    net = classes[name](pretrained=False)
    weights = pkg / "data" / f"{name}.pt"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    version = importlib.metadata.version("facenet-pytorch")
    return net.eval(), f"facenet-pytorch=={version} facenet_pytorch/data/{name}.pt"


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def export(net: nn.Module, shape, path: Path, out_names, source: str, preserve: bool = False) -> onnx.ModelProto:
    example = torch.zeros(shape)
    kwargs = {}
    if preserve:
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=list(out_names),
            **kwargs,
        )
    model = onnx.load(str(path))
    model.producer_name = "onnx-depth scripts/export_real_fixtures.py"
    model.producer_version = f"torch {torch.__version__}"
    model.doc_string = f"Real trained weights from {source}"
    del model.metadata_props[:]
    for k, v in (("source", source), ("exporter", f"torch.onnx.export dynamo=False opset {OPSET}")):
        p = model.metadata_props.add()
        p.key, p.value = k, v
    if model.ir_version > MAX_IR:
        raise SystemExit(f"{path}: ir_version {model.ir_version} > {MAX_IR}")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def compare(net: nn.Module, path: Path, batches: list[np.ndarray]) -> float:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in batches:
            ref = net(torch.from_numpy(x))
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {"input": x})
            for r, g in zip(ref, got):
                diff = float(np.max(np.abs(r.numpy() - g)))
                worst = max(worst, diff)
    if worst > ATOL:
        raise SystemExit(f"{path.name}: torch vs onnxruntime max abs diff {worst:.3g} > {ATOL}")
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "real")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()

    digits, _ = real.mnist_digits(50)
    faces, _ = real.lfw_faces()
    face_pick = np.concatenate([faces[:10], faces[100:110]])

    def real_batches(shape):
        c, h, w = shape[1:]
        if (c, h, w) == (1, 28, 28):
            data = list(digits[:, None])
        else:
            data = list(real.mtcnn_inputs(face_pick, size=h)[:, None])
        return data + [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]

    jobs = []
    net, src = mnist_cnn()
    jobs.append(("mnist_cnn", net, src, (1, 1, 28, 28), ["logits"]))
    classes = mtcnn_classes()
    outs = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}
    for name, (_, sizes) in real.MTCNN_NETS.items():
        net, src = mtcnn_net(name, classes)
        for size in sizes:
            jobs.append((f"mtcnn_{name}_{size}", net, src, (1, 3, size, size), outs[name]))

    manifest = {
        "generator": "scripts/export_real_fixtures.py",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": OPSET,
        "models": {},
    }
    for stem, net, src, shape, names in jobs:
        variants = [(stem, False)] + ([(stem + "_bn", True)] if has_batchnorm(net) else [])
        for file_stem, preserve in variants:
            path = args.out / f"{file_stem}.onnx"
            model = export(net, shape, path, names, src, preserve=preserve)
            worst = compare(net, path, real_batches(shape))
            ops = sorted({n.op_type for n in model.graph.node})
            size = path.stat().st_size
            manifest["models"][path.name] = {
                "source": src,
                "input": {"name": "input", "shape": list(shape)},
                "outputs": names,
                "ir_version": model.ir_version,
                "ops": ops,
                "nodes": len(model.graph.node),
                "bytes": size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "max_abs_diff_vs_torch": worst,
                "batchnorm_preserved": preserve,
            }
            print(f"{path.name:24s} {size:>9d} B  ir {model.ir_version}  {len(model.graph.node):3d} nodes  "
                  f"max|torch-ort| {worst:.2e}  ops {ops}")
        if not has_batchnorm(net):
            print(f"{'':24s} (no BatchNorm in {stem}: TrainingMode.PRESERVE variant would be identical; skipped)")
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    total = sum(m["bytes"] for m in manifest["models"].values())
    print(f"wrote {len(manifest['models'])} models, {total} bytes, to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
