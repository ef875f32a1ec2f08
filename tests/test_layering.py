"""The package's layering (README.md, ARCHITECTURE): a module imports only from its own layer or
below, and imports inside function bodies are kept for optional heavy dependencies.

The layers contract is import-linter's (`[tool.importlinter]` in pyproject.toml); it sees
function-level imports too. These tests run it on the package, show on a small package with the
same contract that an upward import does break it, and check function-level imports with `ast`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "onnx_depth"

# Third-party modules a function may import: optional extras (or heavy imports on a rare path),
# so that `import onnx_depth...` works, and stays fast, without them.
OPTIONAL_THIRD_PARTY = {
    "torch": "extra [torch] / [transformer]; several hundred ms to import",
    "transformers": "extra [transformer]",
    "dask": "extra [cluster]; only with --cluster (tests/cluster checks it is not imported otherwise)",
    "distributed": "extra [cluster]; only with --cluster",
    "olive": "extra [olive]",
    "matplotlib": "extra [plot]; only for --plot",
    "tqdm": "progress bars, only when a progress bar is shown",
    "PIL": "Pillow is no dependency: only the real-data helpers that render text need it",
    "onnxruntime.tools": "imports torch when it is installed: only on the symbolic shape inference fallback",
}
# onnx_depth modules a function may import, with the reason: (importing file, imported module).
INTERNAL_EXCEPTIONS = {
    ("onnx_depth/__init__.py", "onnx_depth.api"):
        "PEP 562 lazy export of optimize/analyze: every `import onnx_depth.X` runs the package root "
        "first, and the API pulls onnxruntime, planning and analysis (seconds) into users of e.g. "
        "onnx_depth.kernels, onnx_depth.torch or a Dask worker",
    ("onnx_depth/olive/__init__.py", "onnx_depth.olive.onnx_depth_pass"):
        "the pass module imports olive (extra [olive]) at its top",
    ("onnx_depth/api.py", "onnx_depth.torch.distill"):
        "--distill only: onnx_depth.torch imports torch (extra [torch]) at its top",
}


def _contract() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, '.'); from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--config", str(config)], cwd=str(cwd),
                          capture_output=True, text=True, timeout=300, env=env)


def test_layers_contract_is_kept() -> None:
    pytest.importorskip("importlinter")
    p = _lint_imports(ROOT, ROOT / "pyproject.toml")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    assert "1 kept, 0 broken" in p.stdout


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_the_contract_breaks_on_an_upward_import(tmp_path: Path) -> None:
    """The same contract on a package of empty layer modules, one of which (ir, layer 9) imports
    planning (layer 4) inside a function: import-linter must report exactly that import."""
    pytest.importorskip("importlinter")
    conf = _contract()
    (contract,) = conf["contracts"]
    pkg = tmp_path / "onnx_depth"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for layer in contract["layers"]:
        for name in layer.split(":"):
            (pkg / f"{name.strip().strip('()')}.py").write_text("")
    (pkg / "ir.py").write_text("def late():\n    from . import planning\n    return planning\n")
    lines = ["[tool.importlinter]"] + [f"{k} = {_toml_value(v)}" for k, v in conf.items() if k != "contracts"]
    lines += ["", "[[tool.importlinter.contracts]]"] + [f"{k} = {_toml_value(v)}" for k, v in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    p = _lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert p.returncode == 1, p.stdout[-4000:] + p.stderr[-2000:]
    assert "onnx_depth.ir is not allowed to import onnx_depth.planning" in p.stdout
    assert "0 kept, 1 broken" in p.stdout


def _function_level_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import inside a function or method body of
    `source`, the text of module `module` (dotted; a package's __init__ when `is_package`)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.append((node.lineno, node.module or ""))
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1])
                if node.module:
                    found.append((node.lineno, f"{base}.{node.module}"))
                else:  # `from . import x`: x is a module (or a name of the package: then stricter)
                    found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return sorted(set(found))


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT).with_suffix("")
    if rel.name == "__init__":
        return ".".join(rel.parts[:-1]), True
    return ".".join(rel.parts), False


def _allowed(file: str, module: str) -> bool:
    if module == "onnx_depth" or module.startswith("onnx_depth."):
        return any(file == f and (module == m or module.startswith(m + ".")) for f, m in INTERNAL_EXCEPTIONS)
    return any(module == m or module.startswith(m + ".") for m in OPTIONAL_THIRD_PARTY)


def test_function_level_imports_only_for_optional_dependencies() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    bad = [f"{f.relative_to(ROOT)}:{line}: {module}" for f in files
           for line, module in _function_level_imports(f.read_text(), *_module_name(f))
           if not _allowed(f.relative_to(ROOT).as_posix(), module)]
    assert not bad, ("imports inside function bodies that are not optional heavy dependencies "
                     "(move them to the module top):\n" + "\n".join(bad))


def test_the_import_checker_sees_function_level_imports() -> None:
    """The checker above resolves relative imports, finds them in methods too, and allows only
    what the lists say."""
    src = ("import os\n\n\nclass A:\n    def m(self):\n        from ..planning import budget\n"
           "        import torch\n        from . import parsing\n")
    found = [m for _, m in _function_level_imports(src, "onnx_depth.cli.optimize")]
    assert found == ["onnx_depth.planning", "torch", "onnx_depth.cli.parsing"]
    assert [m for _, m in _function_level_imports("def f():\n    from . import api\n", "onnx_depth", True)] == \
        ["onnx_depth.api"]
    assert not _allowed("onnx_depth/cli/optimize.py", "onnx_depth.planning")
    assert not _allowed("onnx_depth/cli/optimize.py", "os")
    assert _allowed("onnx_depth/cli/optimize.py", "torch")
    assert _allowed("onnx_depth/__init__.py", "onnx_depth.api")
    assert not _allowed("onnx_depth/report.py", "onnx_depth.api")


def test_the_api_and_cli_import_no_optional_dependency() -> None:
    """`import onnx_depth` and its API and CLI pull none of the optional heavy dependencies."""
    code = ("import sys, onnx_depth, onnx_depth.api, onnx_depth.cli\n"
            "onnx_depth.optimize\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'dask', 'distributed', 'olive', 'matplotlib', 'PIL'}))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"


def _private_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, "module.name") of every `from onnx_depth... import _name` in `source` that reaches
    into another module (a package's own private submodules, e.g. zoo._builder, are its own)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = ".".join(package[: len(package) - node.level + 1])
            src = f"{base}.{node.module}" if node.module else base
        else:
            src = node.module or ""
        if src != "onnx_depth" and not src.startswith("onnx_depth."):
            continue
        found += [(node.lineno, f"{src}.{a.name}") for a in node.names
                  if a.name.startswith("_") and not a.name.startswith("__")
                  and not (node.module is None and src == ".".join(package))]
    return found


def test_no_private_names_imported_across_modules() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)}:{line}: {name}" for f in files
           for line, name in _private_imports(f.read_text(), *_module_name(f))]
    assert not bad, "private names imported from another module (make them public or move them):\n" + "\n".join(bad)
    src = "from .refit import _naive, segment_macs\nfrom . import _builder\nfrom ..ir import Graph\n"
    assert [n for _, n in _private_imports(src, "onnx_depth.passes.linearize")] == ["onnx_depth.passes.refit._naive"]
