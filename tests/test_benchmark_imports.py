"""The benchmark scripts import names from one another (bench_tool_time reuses bench_fidelity_real's
export and photo sets). A refactor that removes or renames such a name breaks a benchmark only
when it is run, minutes in: this test reads every `from bench_x import a, b` in benchmarks/
(module level and inside functions) and checks that bench_x defines a and b at module level,
without running the heavy scripts."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_names_imported_between_benchmarks_exist():
    modules = {p.stem: ast.parse(p.read_text(), str(p)) for p in BENCH.glob("*.py")}
    assert "bench_tool_time" in modules and "bench_fidelity_real" in modules
    checked, missing = 0, []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                have = _defined(modules[node.module])
                for a in node.names:
                    checked += 1
                    if a.name != "*" and a.name not in have:
                        missing.append(f"{name}.py line {node.lineno}: {node.module}.{a.name}")
    assert checked >= 3  # bench_tool_time and others do import from siblings
    assert not missing, "benchmarks import names their siblings no longer define: " + "; ".join(missing)


def test_the_check_sees_a_missing_name():
    tree = ast.parse("def export():\n    pass\nX = 1\n")
    assert {"export", "X"} <= _defined(tree)
    assert "static_batch_copy" not in _defined(tree)
