"""The packages import downward only (cluster <- analyses <- service), no two modules import each
other in a circle, every import inside a function says why it is deferred, and the command line's
help and read-only SQL start without torch."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"cluster": 0, "analyses": 1, "service": 2}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (``a.b.c`` -> ``a.b`` when c is not a module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.append((target, node.lineno, id(node) in local))
    return out


def test_layers_import_downward_only():
    upward = [f"{m} imports {t} (line {line})" for m in MODULES for t, line, _ in imports(m)
              if LAYERS[t.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports(m)} for m in MODULES}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"modules that import each other in a circle: {' -> '.join(e.args[1])}")


def test_imports_inside_functions_say_why():
    undocumented = []
    for m, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(f):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    around = " ".join(lines[max(0, n.lineno - 4): n.lineno])
                    if "deferred" not in around:
                        undocumented.append(f"{path.relative_to(ROOT)}:{n.lineno}: {lines[n.lineno - 1].strip()}")
    assert not undocumented, "imports inside functions without a '# deferred: why' comment:\n" + "\n".join(undocumented)


def test_the_layer_test_sees_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: an upward import planted in a cluster module is found."""
    bad = tmp_path / "cluster" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from service.store import Store\n")
    monkeypatch.setitem(MODULES, "cluster.bad", bad)
    assert [t for t, _, _ in imports("cluster.bad")] == ["service.store"]
    with pytest.raises(AssertionError, match="cluster.bad imports service.store"):
        test_layers_import_downward_only()


def test_the_cycle_test_sees_a_cycle(tmp_path, monkeypatch):
    for me, other in (("a", "b"), ("b", "a")):
        path = tmp_path / f"cyc_{me}.py"
        path.write_text(f"from cluster.cyc_{other} import x\n")
        monkeypatch.setitem(MODULES, f"cluster.cyc_{me}", path)
    with pytest.raises(pytest.fail.Exception, match="cluster.cyc_a -> cluster.cyc_b|cluster.cyc_b -> cluster.cyc_a"):
        test_no_import_cycles()


@pytest.mark.parametrize("code", [
    "from service.cli import build_parser; build_parser()",
    "import service.cli.sql",  # what `gatelens sql` runs
])
def test_help_and_sql_start_without_torch_or_ray(code):
    probe = f"import sys; {code}; print(sorted(m for m in ('torch', 'ray', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_cells_match_the_models():
    from cluster.models import CELLS
    from service.cli.parsers import CELLS as CLI_CELLS

    assert set(CLI_CELLS) == set(CELLS)
