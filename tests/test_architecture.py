"""The shape of the code base: seams instead of patching, one load-testing package.

- No module-level patching anywhere: nothing assigns to an attribute of an imported module, and no
  test uses ``monkeypatch.setattr``/``setitem`` or ``unittest.mock.patch`` (environment variables
  through ``monkeypatch.setenv`` are fine). Backends, baselines and faults plug in through the
  model-runner seam (``create_app(runner=...)``), training tests through ``Trainer(stages=...)``.
- Load generation, server processes, Prometheus parsing, statistics and result files are defined in
  ``loadtest/`` only: bench/ and reliability/ use them and define none of their own.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "model", "bench", "reliability", "loadtest", "tests")
# What loadtest/ owns: names that must not be defined again under bench/ or reliability/.
LOADTEST_OWNS = {"percentile", "latency_ms", "latency_summary", "parse_metrics", "metric", "scrape",
                 "closed_loop", "open_loop", "saturation", "free_port", "write_json", "machine_info",
                 "proc_memory", "proc_cpu_seconds", "process_tree", "tree_memory", "tree_cpu_seconds",
                 "ServerProcess", "Server", "Conn", "build_request", "random_checkpoint", "build_checkpoint",
                 "make_random_checkpoint"}
FORBIDDEN_CALLS = {("monkeypatch", "setattr"), ("monkeypatch", "setitem"), ("monkeypatch", "delattr"),
                   ("mock", "patch"), ("unittest.mock", "patch")}


def python_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts)


def _is_module(name: str) -> bool:
    """A first-party module (``app.service``) or a standard-library one (``os.path``), found without
    importing anything."""
    first, _, rest = name.partition(".")
    if first in PACKAGES:
        path = ROOT.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    if first not in sys.stdlib_module_names or first == "__future__":
        return False
    try:
        return not rest or importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError, ValueError):  # "from os import path" asks "os.path"; "json.dumps" is no module
        return False


def imported_modules(tree: ast.AST) -> set[str]:
    """Local names this file binds to modules: ``import a.b`` (a), ``import a.b as c`` (c), and
    ``from a import b`` where ``a.b`` is a module (b)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if _is_module(f"{node.module}.{alias.name}"):
                    names.add(alias.asname or alias.name)
    return names


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    return ast.unparse(node)


def patching(path: Path) -> list[str]:
    """Every place in ``path`` that patches a module: an assignment to an attribute of an imported
    module, ``setattr(module, ...)``, or a forbidden patching call."""
    tree = ast.parse(path.read_text())
    modules = imported_modules(tree)
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and _root_name(t) in modules:
                found.append(f"{where}:{node.lineno}: {_dotted(t)} = ...")
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "setattr" and node.args and _root_name(node.args[0]) in modules:
                found.append(f"{where}:{node.lineno}: setattr({_dotted(node.args[0])}, ...)")
            if isinstance(f, ast.Attribute) and (_dotted(f.value), f.attr) in FORBIDDEN_CALLS:
                found.append(f"{where}:{node.lineno}: {_dotted(f)}(...)")
    return found


def test_nothing_patches_a_module():
    found = [hit for path in python_files(*PACKAGES) for hit in patching(path)]
    assert not found, "module-level patching (use a seam: create_app(runner=...), Trainer(stages=...)):\n" + \
        "\n".join(found)


def test_the_patching_check_sees_patching(tmp_path):
    """The check above could fail: it finds each kind of patching in a sample file."""
    sample = tmp_path / "sample.py"
    sample.write_text("import app.service as service_module\nimport json\nfrom app import main\n\n\n"
                      "def f(monkeypatch):\n    service_module.SentenceEncoder = None\n    main.create_app = None\n"
                      "    setattr(json, 'dumps', None)\n    monkeypatch.setattr(json, 'loads', None)\n"
                      "    local = object()\n    local.x = 1\n")
    hits = patching(sample)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "service_module.SentenceEncoder = ...", "main.create_app = ...", "setattr(json, ...)",
        "monkeypatch.setattr(...)"]


@pytest.mark.parametrize("package", ["bench", "reliability"])
def test_bench_and_reliability_use_the_load_testing_package(package):
    defined = {}
    for path in python_files(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in LOADTEST_OWNS:
                defined[node.name] = f"{path.relative_to(ROOT)}:{node.lineno}"
    assert not defined, f"{package}/ defines what loadtest/ owns: {defined}"
